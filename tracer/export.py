"""Export a trace to the dashboards people already watch: TensorBoard and Weights & Biases.

An export reads the trace directory; it never hooks training again, so a trace can be
exported any time after (or while) it is written.

>>> tracer.export.to_tensorboard("traces/run1", "runs/run1")     # doctest: +SKIP
>>> tracer.export.to_wandb("traces/run1", project="my-project")  # doctest: +SKIP

What is written, per step (``step`` is the trace's step; rank 0's rows of a distributed
trace):

- ``loss``: the mean of the step's ``loss`` rows (as ``tracer summary``);
- ``grad_norm/NAME``, ``update_norm/NAME``, ``param_norm/NAME``: L2 norms per parameter,
  and ``update_ratio/NAME`` = ‖Δθ‖ / ‖θ‖;
- ``total/grad_norm``, ``total/update_norm``, ``total/param_norm``: over all parameters;
- ``lr/OPTIMIZER/groupG``: each param group's learning rate, as traced;
- histograms ``hist/KIND/NAME`` of the ``param``, ``grad`` and ``update`` rows whose values
  are stored (tensors of at most ``max_values`` elements); other kinds on request
  (``hist/activation/NAME[/PART]``, the root module is ``(root)``).

Needs ``pip install 'torch-tracer[tensorboard]'`` / ``pip install 'torch-tracer[wandb]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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

HISTOGRAM_KINDS = ("param", "grad", "update")
"""The kinds exported as histograms by default (``histograms=True``)."""

_COLUMNS = ["step", "rank", "kind", "name", "call", "part", "norm", "mean", "optimizer", "param_group", "hparams"]


@dataclasses.dataclass
class Series:
    """What an export writes: scalars and histogram values per step, in step order."""

    scalars: dict[int, dict[str, float]]
    histograms: dict[int, dict[str, np.ndarray]]
    meta: dict[str, Any]

    @property
    def steps(self) -> list[int]:
        return sorted(set(self.scalars) | set(self.histograms))


def series(trace: Any, *, histograms: bool | Iterable[str] = True) -> Series:
    """The scalars and histograms an export writes, read from ``trace`` (a path or a ``Run``).

    Example::

        s = tracer.export.series("traces/run1")
        s.scalars[0]["grad_norm/fc.weight"]

    Args:
        trace: the trace directory, or the ``run`` of ``tracer.trace``.
        histograms: True for ``HISTOGRAM_KINDS``, False for none, or the kinds to export
            (``["grad", "activation"]``: activation histograms are of each module's first
            call in a step, training batches only).

    Raises:
        TraceFormatError: ``trace`` is not a readable trace.
    """
    meta, steps = _read(trace, histograms)
    scalars: dict[int, dict[str, float]] = {}
    hists: dict[int, dict[str, np.ndarray]] = {}
    for step, step_scalars, step_hists in steps:
        scalars[step] = step_scalars
        if step_hists:
            hists[step] = step_hists
    return Series(scalars, hists, meta)


_CHUNK = 32  # steps of histogram values read at a time: memory stays bounded on long traces


def _read(
    trace: Any, histograms: bool | Iterable[str]
) -> tuple[dict[str, Any], Iterator[tuple[int, dict[str, float], dict[str, np.ndarray]]]]:
    """The trace's metadata, and ``(step, scalars, histograms)`` per step, read as it goes."""
    from tracer._load import load, trace_path
    from tracer._reader import check_trace_dir, read_meta

    path = trace_path(trace)
    check_trace_dir(path)
    kinds = _histogram_kinds(histograms)
    df = load(path, kind=["loss", "grad", "param", "update"], columns=_COLUMNS)  # no values: small
    if len(df):
        df = df[df["rank"] == df["rank"].min()]
    scalars = {int(step): _step_scalars(rows) for step, rows in df.groupby("step", sort=True)}

    def steps() -> Iterator[tuple[int, dict[str, float], dict[str, np.ndarray]]]:
        order = sorted(scalars)
        if kinds:  # steps with only (say) activations still get their histograms
            extra = load(path, kind=list(kinds), columns=["step"])["step"]
            order = sorted(set(order) | {int(s) for s in extra})
        for i in range(0, len(order), _CHUNK):
            chunk = order[i : i + _CHUNK]
            hists = _histograms(path, kinds, chunk) if kinds else {}
            for step in chunk:
                yield step, scalars.get(step, {}), hists.get(step, {})

    return read_meta(path), steps()


def _histogram_kinds(histograms: bool | Iterable[str]) -> tuple[str, ...]:
    from tracer._schema import KINDS

    if histograms is True:
        return HISTOGRAM_KINDS
    if histograms is False or histograms is None:
        return ()
    kinds = (histograms,) if isinstance(histograms, str) else tuple(histograms)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown histogram kind(s) {unknown}; valid kinds are {list(KINDS)}")
    return kinds


def _step_scalars(rows: Any) -> dict[str, float]:
    import pandas as pd

    from tracer._reader import parse_hparams

    out: dict[str, float] = {}
    loss = rows[rows["kind"] == "loss"]
    if len(loss):
        out["loss"] = float(loss["mean"].mean())
    norms: dict[str, dict[str, float]] = {}
    for kind in ("grad", "update", "param"):
        part = rows[(rows["kind"] == kind) & (rows["part"] == "")].drop_duplicates("name")
        norms[kind] = {n: float(v) for n, v in zip(part["name"], part["norm"].astype("float64"))}
        for name, norm in norms[kind].items():
            out[f"{kind}_norm/{name}"] = norm
        if norms[kind]:
            out[f"total/{kind}_norm"] = math.sqrt(sum(v * v for v in norms[kind].values()))
    for name, update in norms["update"].items():
        param = norms["param"].get(name)
        if param:
            out[f"update_ratio/{name}"] = update / param
    updates = rows[rows["kind"] == "update"].drop_duplicates(["optimizer", "param_group"])
    for opt, group, hp in zip(updates["optimizer"], updates["param_group"], updates["hparams"]):
        lr = parse_hparams(hp, f"the hparams of optimizer {opt}").get("lr") if isinstance(hp, str) else None
        if isinstance(lr, (int, float)) and not isinstance(lr, bool):
            out[f"lr/{opt}/group{0 if pd.isna(group) else int(group)}"] = float(lr)
    return out


def _histograms(path: Path, kinds: Sequence[str], steps: list[int]) -> dict[int, dict[str, np.ndarray]]:
    from tracer._load import load

    columns = ["step", "rank", "kind", "name", "call", "part", "grad_enabled", "values"]
    df = load(path, kind=list(kinds), step=steps, columns=columns)
    out: dict[int, dict[str, np.ndarray]] = {}
    if not len(df):
        return out
    df = df[(df["rank"] == df["rank"].min()) & (df["call"] == 0) & df["values"].notna()]
    df = df[df["grad_enabled"].fillna(True).astype(bool)]  # not the forward-only (validation) rows
    for step, kind, name, part, values in zip(df["step"], df["kind"], df["name"], df["part"], df["values"]):
        if len(values):
            tag = f"hist/{kind}/{name or '(root)'}" + (f"/{part}" if part else "")
            out.setdefault(int(step), {}).setdefault(tag, _real(values))
    return out


def _real(values: np.ndarray) -> np.ndarray:
    """The numbers a histogram shows: the values, or |z| of complex ones (as their statistics)."""
    values = np.asarray(values)
    return np.abs(values) if np.iscomplexobj(values) else values.astype(np.float64, copy=False)


# --------------------------------------------------------------------------- TensorBoard


def to_tensorboard(trace: Any, logdir: str | os.PathLike[str], *, histograms: bool | Iterable[str] = True) -> Path:
    """Write a trace's loss, norms, update ratios, learning rates and histograms as TensorBoard events.

    Example::

        tracer.export.to_tensorboard("traces/run1", "runs/run1")
        # then: tensorboard --logdir runs

    Args:
        trace: the trace directory, or the ``run`` of ``tracer.trace``.
        logdir: the TensorBoard log directory (created; an event file is added to it).
        histograms: see ``series``.

    Returns:
        ``logdir``.

    Raises:
        TraceFormatError: ``trace`` is not a readable trace.
        MissingExtraError: the ``tensorboard`` package is not installed.
    """
    from tracer.integrations import require

    _, steps = _read(trace, histograms)
    require("tensorboard", "tensorboard", "tracer export tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    out = Path(logdir)
    writer = SummaryWriter(log_dir=str(out))
    try:
        for step, scalars, hists in steps:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)
            for tag, values in hists.items():
                finite = values[np.isfinite(values)]
                if finite.size:
                    writer.add_histogram(tag, finite, global_step=step)
    finally:
        writer.close()
    return out


# --------------------------------------------------------------------------- Weights & Biases


def to_wandb(
    trace: Any,
    *,
    project: str | None = None,
    mode: str = "offline",
    name: str | None = None,
    dir: str | os.PathLike[str] | None = None,
    histograms: bool | Iterable[str] = True,
    settings: Any = None,
    **init: Any,
) -> Path:
    """Log a trace to a Weights & Biases run: one ``run.log`` per step, ``step`` = the trace's step.

    Offline (the default) needs no network and no account: the run is written under
    ``dir`` (``wandb/offline-run-…``) and can be uploaded later with ``wandb sync``.

    Example::

        run_dir = tracer.export.to_wandb("traces/run1", project="my-project")
        # later, online: wandb sync <run_dir>

    Args:
        trace: the trace directory, or the ``run`` of ``tracer.trace``.
        project: the W&B project (default ``"tracer"``).
        mode: ``"offline"`` (default), ``"online"`` or ``"disabled"``.
        name: the run's name (default: the trace directory's name).
        dir: where wandb writes its files (default: wandb's, ``./wandb``).
        histograms: see ``series``.
        settings: a ``wandb.Settings`` (default: no git, code, console or system metrics
            collection, no update check).
        **init: further keyword arguments of ``wandb.init`` (``entity``, ``tags``, …).

    Returns:
        The run's local directory (what ``wandb sync`` takes).

    Raises:
        TraceFormatError: ``trace`` is not a readable trace.
        MissingExtraError: the ``wandb`` package is not installed.
    """
    from tracer._load import trace_path
    from tracer.integrations import require

    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"mode must be 'offline', 'online' or 'disabled' (got {mode!r})")
    meta, steps = _read(trace, histograms)
    wandb = require("wandb", "wandb", "tracer export wandb")
    path = trace_path(trace)
    if settings is None:
        settings = _quiet_settings(wandb)
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    with _no_telemetry(mode):
        run = wandb.init(
            project=project or "tracer",
            name=name or path.resolve().name,
            mode=mode,
            dir=None if dir is None else str(dir),
            config={
                "trace": str(path),
                "model": meta.get("model"),
                "optimizers": meta.get("optimizers"),
                "options": meta.get("options"),
            },
            settings=settings,
            **init,
        )
        try:
            run_dir = Path(run.dir).parent
            for step, scalars, hists in steps:
                record: dict[str, Any] = dict(scalars)
                for tag, values in hists.items():
                    finite = values[np.isfinite(values)]
                    if finite.size:
                        record[tag] = wandb.Histogram(finite.tolist())
                run.log(record, step=step)
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()
    return run_dir


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


# --------------------------------------------------------------------------- command line

_TENSORBOARD_EPILOG = """\
examples:
  tracer export tensorboard traces/run1 runs/run1 && tensorboard --logdir runs
  tracer export tensorboard traces/run1 runs/run1 --histograms grad --histograms activation
  tracer export tensorboard traces/run1 runs/run1 --no-histograms
"""

_WANDB_EPILOG = """\
examples:
  tracer export wandb traces/run1                       # offline: no account, no network
  tracer export wandb traces/run1 --project my-project --dir /tmp/wandb
  tracer export wandb traces/run1 --mode online --project my-project
"""


def add_export_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``tracer export {tensorboard,wandb}`` to the ``tracer`` command line's subcommands.

    Each subcommand's ``func`` takes the parsed arguments and returns the exit code.
    """
    export = commands.add_parser(
        "export",
        help="write a trace to TensorBoard or Weights & Biases",
        description="Write a trace's loss, norms, update ratios, learning rates and histograms to a dashboard.",
        epilog="run 'tracer export tensorboard --help' or 'tracer export wandb --help' for examples",
    )
    targets = export.add_subparsers(title="dashboards", metavar="DASHBOARD", required=True)

    tb = targets.add_parser(
        "tensorboard",
        help="write TensorBoard event files",
        description="Write a trace as TensorBoard event files (scalars and histograms).",
        epilog=_TENSORBOARD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tb.add_argument("path", metavar="PATH", help="the trace directory")
    tb.add_argument("logdir", metavar="LOGDIR", help="the TensorBoard log directory to write to")
    _histogram_options(tb)
    tb.set_defaults(func=cmd_export_tensorboard)

    wb = targets.add_parser(
        "wandb",
        help="log to a Weights & Biases run (offline by default)",
        description="Log a trace to a Weights & Biases run, one log call per step (offline by default).",
        epilog=_WANDB_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wb.add_argument("path", metavar="PATH", help="the trace directory")
    wb.add_argument("--project", default=None, help="the W&B project (default: tracer)")
    wb.add_argument("--name", default=None, help="the run name (default: the trace directory's name)")
    wb.add_argument("--mode", choices=["offline", "online"], default="offline", help="default: offline")
    wb.add_argument("--dir", default=None, help="where wandb writes its files (default: ./wandb)")
    _histogram_options(wb)
    wb.set_defaults(func=cmd_export_wandb)
    return export


def _histogram_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--histograms",
        action="append",
        metavar="KIND",
        help=f"export histograms of this kind (repeatable; default: {', '.join(HISTOGRAM_KINDS)})",
    )
    parser.add_argument("--no-histograms", action="store_true", help="scalars only")


def _histograms_arg(args: argparse.Namespace) -> bool | list[str]:
    if args.no_histograms:
        return False
    return args.histograms or True


def cmd_export_tensorboard(args: argparse.Namespace) -> int:
    """``tracer export tensorboard PATH LOGDIR``."""
    from tracer._render import escape_text

    out = to_tensorboard(args.path, args.logdir, histograms=_histograms_arg(args))
    shown = escape_text(str(out))
    print(f"wrote TensorBoard events to {shown} (view: tensorboard --logdir {shown})")
    return 0


def cmd_export_wandb(args: argparse.Namespace) -> int:
    """``tracer export wandb PATH``."""
    from tracer._render import escape_text

    run_dir = to_wandb(
        args.path, project=args.project, name=args.name, mode=args.mode, dir=args.dir,
        histograms=_histograms_arg(args),
    )  # fmt: skip
    shown = escape_text(str(run_dir))
    if args.mode == "offline":
        print(f"wrote offline W&B run to {shown} (upload: wandb sync {shown})")
    else:
        print(f"logged W&B run {escape_text(run_dir.name)}")
    return 0
