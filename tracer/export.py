"""Export a trace to the dashboards people already watch: TensorBoard and Weights & Biases.

An export reads the trace (a path, a ``run``, a DataFrame or a ``tracer.Trace``, opened once);
it never hooks training again, so a trace can be exported any time after (or while) it is
written. The scalars are the shared series of ``tracer._series``: a dashboard shows the
numbers ``tracer summary`` prints.

>>> tracer.export.to_tensorboard("traces/run1", "runs/run1")     # doctest: +SKIP
>>> tracer.export.to_wandb("traces/run1", project="my-project")  # doctest: +SKIP

What is written, per step (``step`` is the trace's step; rank 0's rows of a distributed
trace):

- ``loss``: the step's loss, the sum of its micro-batch losses (as ``tracer summary``
  prints it); a trace with several loss series (a GAN) has ``loss/NAME`` per series;
- ``grad_norm/NAME``, ``update_norm/NAME``, ``param_norm/NAME``: L2 norms per parameter,
  and ``update_ratio/NAME`` = ‖Δθ‖ / ‖θ‖;
- ``total/grad_norm``, ``total/update_norm``, ``total/param_norm``: over all parameters;
- ``lr/OPTIMIZER/groupG``: each param group's learning rate, as traced;
- ``metric/NAME``: each number logged with ``run.log({"NAME": value})``;
- histograms ``hist/KIND/NAME`` of the ``param``, ``grad`` and ``update`` rows whose values
  are stored (tensors of at most ``max_values`` elements); other kinds on request
  (``hist/activation/NAME[/PART]``, the root module is ``(root)``).

Live: with ``follow=True`` an export keeps reading a trace that is still being written and
writes each step once, as it finishes, until the trace is complete (``_tracer.json`` says so);
TensorBoard (or W&B) then shows the run as it trains. Ctrl-C stops it; what was written stays.

>>> tracer.export.to_tensorboard("traces/run1", "runs/run1", follow=True)  # doctest: +SKIP

Needs ``pip install 'torch-tracer[tensorboard]'`` / ``pip install 'torch-tracer[wandb]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tracer._export_cli import (
    add_export_parser,
    cmd_export_tensorboard,
    cmd_export_wandb,
)
from tracer._export_series import HISTOGRAM_KINDS, Series, StepRecord, records, series
from tracer._follow import DEFAULT_POLL, follow_path
from tracer._follow import follow as follow_batches
from tracer._trace import Trace, TraceLike

__all__ = [
    "HISTOGRAM_KINDS",
    "Series",
    "add_export_parser",
    "cmd_export_tensorboard",
    "cmd_export_wandb",
    "series",
    "to_tensorboard",
    "to_wandb",
]


# --------------------------------------------------------------------------- TensorBoard


def _batches(
    trace: TraceLike, histograms: bool | Iterable[str], follow: bool, poll: float
) -> Iterator[Iterable[StepRecord]]:
    """What an exporter writes, in batches: one (read lazily) for a finished trace; with
    ``follow``, one per look at a trace being written, each step in exactly one."""
    if follow:
        follow_path(trace)  # a DataFrame is refused before anything is written
        return follow_batches(trace, histograms, poll=poll)
    return iter([records(Trace.open(trace), histograms)])


def to_tensorboard(
    trace: TraceLike,
    logdir: str | os.PathLike[str],
    *,
    histograms: bool | Iterable[str] = True,
    follow: bool = False,
    poll: float = DEFAULT_POLL,
) -> Path:
    """Write a trace's loss, norms, update ratios, learning rates and histograms as TensorBoard events.

    Example::

        tracer.export.to_tensorboard("traces/run1", "runs/run1")
        # then: tensorboard --logdir runs

    Args:
        trace: a trace directory, a ``run``, a DataFrame from ``tracer.load`` or a Trace.
        logdir: the TensorBoard log directory (created; an event file is added to it).
        histograms: see ``series``.
        follow: keep exporting while the trace is written (each step once, as it
            finishes) and return when it is complete; Ctrl-C (KeyboardInterrupt) stops it,
            with the events written so far flushed.
        poll: with ``follow``, seconds between two looks at the trace directory.

    Returns:
        ``logdir``.

    Raises:
        TraceFormatError: ``trace`` is not a readable trace.
        MissingExtraError: the ``tensorboard`` package is not installed.
        ValueError: ``follow`` with a DataFrame, or a ``poll`` that is not positive.
    """
    from tracer.integrations import require

    batches = _batches(trace, histograms, follow, poll)
    require("tensorboard", "tensorboard", "tracer export tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    out = Path(logdir)
    writer = SummaryWriter(log_dir=str(out), flush_secs=max(1, int(poll)) if follow else 120)
    try:
        for batch in batches:
            for step, scalars, hists in batch:
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, global_step=step)
                for tag, values in hists.items():
                    finite = values[np.isfinite(values)]
                    if finite.size:
                        writer.add_histogram(tag, finite, global_step=step)
            writer.flush()  # TensorBoard shows each batch as soon as it is written
    finally:
        writer.close()
    return out


# --------------------------------------------------------------------------- Weights & Biases


def to_wandb(
    trace: TraceLike,
    *,
    project: str | None = None,
    mode: str = "offline",
    name: str | None = None,
    dir: str | os.PathLike[str] | None = None,
    histograms: bool | Iterable[str] = True,
    settings: Any = None,
    follow: bool = False,
    poll: float = DEFAULT_POLL,
    **init: Any,
) -> Path:
    """Log a trace to a Weights & Biases run: one ``run.log`` per step, ``step`` = the trace's step.

    Offline (the default) needs no network and no account: the run is written under
    ``dir`` (``wandb/offline-run-…``) and can be uploaded later with ``wandb sync``.

    Example::

        run_dir = tracer.export.to_wandb("traces/run1", project="my-project")
        # later, online: wandb sync <run_dir>

    Args:
        trace: a trace directory, a ``run``, a DataFrame from ``tracer.load`` or a Trace.
        project: the W&B project (default ``"tracer"``).
        mode: ``"offline"`` (default), ``"online"`` or ``"disabled"``.
        name: the run's name (default: the trace directory's name).
        dir: where wandb writes its files (default: wandb's, ``./wandb``).
        histograms: see ``series``.
        settings: a ``wandb.Settings`` (default: no git, code, console or system metrics
            collection, no update check).
        follow: keep logging while the trace is written (each step once, as it finishes)
            and finish the run when the trace is complete; Ctrl-C finishes it early.
        poll: with ``follow``, seconds between two looks at the trace directory.
        **init: further keyword arguments of ``wandb.init`` (``entity``, ``tags``, …).

    Returns:
        The run's local directory (what ``wandb sync`` takes).

    Raises:
        TraceFormatError: ``trace`` is not a readable trace.
        MissingExtraError: the ``wandb`` package is not installed.
        ValueError: ``follow`` with a DataFrame, or a ``poll`` that is not positive.
    """
    from tracer.integrations import require

    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"mode must be 'offline', 'online' or 'disabled' (got {mode!r})")
    batches = _batches(trace, histograms, follow, poll)
    if follow:  # the run's config is the trace's metadata: wait for the first finished steps
        first = next(batches, [])
        batches = itertools.chain([first], batches)
    opened = Trace.open(follow_path(trace) if follow else trace)
    wandb = require("wandb", "wandb", "tracer export wandb")
    if settings is None:
        settings = _quiet_settings(wandb)
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    with _no_telemetry(mode):
        run = wandb.init(
            project=project or "tracer",
            name=name or (None if opened.path is None else opened.path.resolve().name),
            mode=mode,
            dir=None if dir is None else str(dir),
            config=_run_config(opened),
            settings=settings,
            **init,
        )
        try:
            run_dir = Path(run.dir).parent
            for batch in batches:
                for step, scalars, hists in batch:
                    record: dict[str, Any] = dict(scalars)
                    for tag, values in hists.items():
                        finite = values[np.isfinite(values)]
                        if finite.size:
                            record[tag] = wandb.Histogram(finite.tolist())
                    run.log(record, step=step)
        except KeyboardInterrupt:
            run.finish()  # stopped on purpose: what was logged is kept
            raise
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()
    return run_dir


def _run_config(trace: Trace) -> dict[str, Any]:
    """The W&B run's config: where the trace is, its model, optimizers and tracing options."""
    meta = trace.meta
    return {
        "trace": trace.source,
        "model": meta.model,
        "optimizers": [o.cls for o in meta.optimizers],
        "options": dataclasses.asdict(meta.options),
    }


def _quiet_settings(wandb: Any) -> Any:
    """No git, code, console or system-metrics collection (those that this wandb version has)."""
    wanted = {
        "silent": True,
        "console": "off",
        "disable_git": True,
        "disable_code": True,
        "save_code": False,
        "x_disable_stats": True,
        "x_disable_meta": True,
        "x_disable_machine_info": True,
    }
    fields = getattr(wandb.Settings, "model_fields", None)
    if fields is not None:
        wanted = {k: v for k, v in wanted.items() if k in fields}
    return wandb.Settings(**wanted)


@contextlib.contextmanager
def _no_telemetry(mode: str) -> Iterator[None]:
    """Offline means no network: wandb's own error reporting is off while an offline export runs.

    wandb reads ``WANDB_ERROR_REPORTING`` when it starts its service; a value the user set is kept.
    """
    key = "WANDB_ERROR_REPORTING"
    if mode != "offline" or key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)
