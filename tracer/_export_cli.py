"""``tracer export tensorboard|wandb``: the subcommands of the ``tracer`` command line.

Each opens the trace once and hands the ``Trace`` to :mod:`tracer.export`.

>>> parser = argparse.ArgumentParser(prog="tracer")
>>> export = add_export_parser(parser.add_subparsers())
>>> parser.parse_args(["export", "tensorboard", "traces/run1", "runs/run1"]).logdir
'runs/run1'
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

from tracer._export_series import HISTOGRAM_KINDS

_TENSORBOARD_EPILOG = """\
examples:
  tracer export tensorboard traces/run1 runs/run1 && tensorboard --logdir runs
  tracer export tensorboard traces/run1 runs/run1 --histograms grad --histograms activation
  tracer export tensorboard traces/run1 runs/run1 --no-histograms
  tracer export tensorboard traces/run1 runs/run1 --follow   # live, while training writes it
"""

_WANDB_EPILOG = """\
examples:
  tracer export wandb traces/run1                       # offline: no account, no network
  tracer export wandb traces/run1 --project my-project --dir /tmp/wandb
  tracer export wandb traces/run1 --mode online --project my-project
  tracer export wandb traces/run1 --mode online --follow     # live, while training writes it
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
    _follow_options(tb)
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
    _follow_options(wb)
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


def _follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep exporting while the trace is written (each step once); stop when it is complete or on Ctrl-C",
    )
    parser.add_argument(
        "--poll",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="with --follow: seconds between looks (default: 1)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text!r})")
    return value


def _following(
    args: argparse.Namespace, export: Callable[[], Path], prepare: Callable[[], object] | None = None
) -> Path | None:
    """Run ``export``; with ``--follow``, say so first, and make Ctrl-C a clean stop (None).

    ``prepare`` (importing the exporter's library) runs before anything is said: a Ctrl-C
    then never lands inside an import, where a half-imported library can keep the process
    from exiting."""
    if not getattr(args, "follow", False):
        return export()
    from tracer._render import escape_text

    if prepare is not None:
        prepare()
    try:
        print(f"following {escape_text(args.path)} (Ctrl-C to stop) ...", flush=True)
        return export()
    except KeyboardInterrupt:
        print("stopped following (Ctrl-C); the steps exported so far are kept", flush=True)
        return None


def _histograms_arg(args: argparse.Namespace) -> bool | list[str]:
    if args.no_histograms:
        return False
    return args.histograms or True


def cmd_export_tensorboard(args: argparse.Namespace) -> int:
    """``tracer export tensorboard PATH LOGDIR``."""
    from tracer._render import escape_text
    from tracer._trace import Trace
    from tracer.export import to_tensorboard
    from tracer.integrations import require

    source = args.path if args.follow else Trace.open(args.path)
    out = _following(
        args,
        lambda: to_tensorboard(
            source, args.logdir, histograms=_histograms_arg(args), follow=args.follow, poll=args.poll
        ),
        prepare=lambda: (require("tensorboard", "tensorboard", "tracer export tensorboard"),
                         importlib.import_module("torch.utils.tensorboard")),
    )  # fmt: skip
    if out is None:
        return 130
    shown = escape_text(str(out))
    print(f"wrote TensorBoard events to {shown} (view: tensorboard --logdir {shown})")
    return 0


def cmd_export_wandb(args: argparse.Namespace) -> int:
    """``tracer export wandb PATH``."""
    from tracer._render import escape_text
    from tracer._trace import Trace
    from tracer.export import to_wandb
    from tracer.integrations import require

    source = args.path if args.follow else Trace.open(args.path)
    run_dir = _following(args, lambda: to_wandb(
        source, project=args.project, name=args.name, mode=args.mode, dir=args.dir,
        histograms=_histograms_arg(args), follow=args.follow, poll=args.poll,
    ), prepare=lambda: require("wandb", "wandb", "tracer export wandb"))  # fmt: skip
    if run_dir is None:
        return 130
    shown = escape_text(str(run_dir))
    if args.mode == "offline":
        print(f"wrote offline W&B run to {shown} (upload: wandb sync {shown})")
    else:
        print(f"logged W&B run {escape_text(run_dir.name)}")
    return 0
