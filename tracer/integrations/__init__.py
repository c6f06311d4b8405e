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
from types import ModuleType
from typing import Any, Iterator

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
    import torch

    import tracer

    if "model" in options or "optimizer" in options:
        raise TypeError("the callback traces the trainer's model and optimizers: pass neither")
    tracer.trace(torch.nn.Module(), None, path=path, **options)  # raises on a bad option; opens nothing
    return dict(options, path=path)


def check_validation(validation: Any) -> str:
    if validation not in VALIDATION_MODES:
        raise ValueError(f"validation must be one of {list(VALIDATION_MODES)} (got {validation!r})")
    return validation


# -- pausing and separate call counters ----------------------------------------------------
# tracer.Run has no public pause yet: these reach into the run's private recorder. They are
# kept here, in one place, so that a public API can replace them in one edit.


@contextlib.contextmanager
def paused(run: Any) -> Iterator[None]:
    """No rows while the block runs: tracer's hooks are taken off and put back; the step is kept."""
    run._uninstall()
    try:
        yield
    finally:
        from tracer._session import _traced_modules

        _traced_modules.add(run._model)
        run._install()


@contextlib.contextmanager
def separate_calls(run: Any) -> Iterator[None]:
    """Rows recorded in the block count their ``call`` from 0, and the step's own counts resume after.

    Validation batches run between two optimizer steps; without this the first training
    forward of the next step would be ``call`` k (after k validation batches) while its loss
    is ``call`` 0.
    """
    recorder = run._recorder
    saved_calls, saved_backward = dict(recorder._calls), recorder._backward_calls
    recorder._calls.clear()
    recorder._backward_calls = 0
    try:
        yield
    finally:
        recorder._calls.clear()
        recorder._calls.update(saved_calls)
        recorder._backward_calls = saved_backward


def validation_context(run: Any, validation: str) -> contextlib.AbstractContextManager[None]:
    return paused(run) if validation == "skip" else separate_calls(run)
