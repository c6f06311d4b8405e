"""Trace training loops run by a framework: one callback per trainer.

- Lightning: ``tracer.integrations.lightning.TraceCallback`` (``pip install 'torch-tracer[lightning]'``)
- Hugging Face: ``tracer.integrations.transformers.TraceCallback``
  (``pip install 'torch-tracer[transformers]'``)

Importing ``tracer`` or this package imports neither framework; each module imports its
own when it is imported, and says which ``pip install`` fixes a missing one.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from tracer._errors import TracerError

__all__ = ["MissingExtraError", "VALIDATION_MODES"]

VALIDATION_MODES = ("record", "skip")
"""What a callback does with validation/evaluation batches run during training."""


class MissingExtraError(TracerError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that fixes it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise `MissingExtraError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the {module.partition('.')[0]!r} package, which is not installed: "
            f"pip install 'torch-tracer[{extra}]'"
        ) from exc


def check_options(path: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``tracer.trace``'s keyword arguments, checked now rather than when training starts."""
    from tracer._options import check_options as check_trace_options

    if "model" in options or "optimizer" in options:
        raise TypeError("the callback traces the trainer's model and optimizers: pass neither")
    check_trace_options(path=path, **options)  # raises on a bad option
    return dict(options, path=path)


def check_validation(validation: Any) -> str:
    if validation not in VALIDATION_MODES:
        raise ValueError(f"validation must be one of {list(VALIDATION_MODES)} (got {validation!r})")
    return validation


def validation_context(run: Any, validation: str) -> contextlib.AbstractContextManager[None]:
    """What a callback wraps validation batches in: nothing to do to record them (evaluation
    forwards number their calls apart from training ones), ``run.paused()`` to skip them."""
    return run.paused() if validation == "skip" else contextlib.nullcontext()


def log_metrics(run: Any, metrics: Mapping[Any, Any]) -> int:
    """Record a trainer's logged metrics as ``metric`` rows of ``run`` (as ``run.log`` does);
    the number of metrics recorded.

    What is not a scalar number (a string, a list) is left out, nothing raises into the
    trainer, and the callback's own pause (``validation="skip"``) does not apply: a metric
    is logged between steps, where the callback pauses.
    """
    from tracer._metrics import scalar

    recorder = getattr(run, "_recorder", None)
    if recorder is None or not metrics:
        return 0
    items = []
    for name, value in metrics.items():
        try:
            items.append((str(name), scalar(str(name), value)))
        except (TypeError, ValueError):
            continue
    try:
        return recorder.log_metrics(items, honour_pause=False) if items else 0
    except Exception:  # a write error at a step boundary is reported by the block's end
        return 0
