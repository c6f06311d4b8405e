"""The ``tracer`` command line (also ``python -m tracer``): summary, diff, report, diagnose, export, compare.

Every command opens each trace it is given once (:meth:`tracer.Trace.open`, which also
checks it) and hands that ``Trace`` on, so a command reads the trace once.

Exit codes: 0 ok, 1 a divergence (``diff``) or a failed check (``report --check``),
2 bad input (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracer._report import Report
    from tracer._trace import Trace

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT = 0, 1, 2

_SUMMARY_EPILOG = """\
examples:
  tracer summary traces/run1
  tracer summary traces/run1 --json > summary.json
  python -m tracer summary traces/run1 | less
"""

_DIFF_EPILOG = """\
examples:
  tracer diff traces/before traces/after
  tracer diff traces/fp64 traces/fp32 --rtol 1e-4 --atol 1e-6
  tracer diff traces/before traces/after --kind loss --kind grad
"""

_REPORT_EPILOG = """\
examples:
  tracer report traces/run1                # compact text: rules once, one line per update
  tracer report traces/run1 --format markdown > report.md
  tracer report traces/run1 -o report.html # the format from the file's suffix
  tracer report traces/run1 --step 0 --name 'fc.*'
  tracer report traces/run1 --check        # exit 1 unless every update follows its rule
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    from tracer._errors import TracerError

    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `tracer summary x | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except (TracerError, FileNotFoundError, OSError, ValueError) as exc:
        print(f"tracer: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    from tracer import __version__

    parser = argparse.ArgumentParser(
        prog="tracer",
        description="See what a traced PyTorch training loop did: summarise, compare, explain.",
        epilog="run 'tracer COMMAND --help' for the examples of each command",
    )
    parser.add_argument("--version", action="version", version=f"tracer {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_summary(commands)
    _add_diff(commands)
    _add_report(commands)
    _add_diagnose(commands)
    from tracer.export import add_export_parser  # no dashboard package is imported here

    add_export_parser(commands)
    from tracer._compare_cli import add_compare_parser

    add_compare_parser(commands)
    return parser


def _add_summary(commands: argparse._SubParsersAction) -> None:
    summary = _command(commands, "summary", "steps, kinds, names, sizes, loss and norms of a trace", _SUMMARY_EPILOG)
    summary.add_argument("path", metavar="PATH", help="the trace directory")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.set_defaults(func=_summary)


def _add_diff(commands: argparse._SubParsersAction) -> None:
    diff = _command(
        commands,
        "diff",
        "the first divergence between two traces, in training order",
        _DIFF_EPILOG,
        "Exit status: 0 when the traces are close, 1 at a divergence (printed), 2 on bad input.",
    )
    diff.add_argument("a", metavar="A", help="the first trace directory")
    diff.add_argument("b", metavar="B", help="the second trace directory")
    default = "(default: torch.testing's for each row's dtype)"
    diff.add_argument("--rtol", type=float, default=None, help=f"relative tolerance {default}")
    diff.add_argument("--atol", type=float, default=None, help=f"absolute tolerance {default}")
    diff.add_argument(
        "--kind", action="append", dest="kinds", metavar="KIND", help="compare only this kind (repeatable)"
    )
    diff.set_defaults(func=_diff)


FORMATS = ["text", "markdown", "html", "latex"]
_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".tex": "latex"}


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = _command(
        commands,
        "report",
        "the update rule behind every update, checked",
        _REPORT_EPILOG,
        "Exit status: 0, or 1 with --check when an update does not follow its rule or could not\n"
        "be checked; 2 on bad input.",
    )
    report.add_argument("path", metavar="PATH", help="the trace directory")
    report.add_argument(
        "--format", choices=FORMATS, default=None,
        help="output format (default: text, on a terminal and piped alike; with -o FILE, the one its "
        "suffix names: .md, .html, .tex, else text)",
    )  # fmt: skip
    report.add_argument("--step", type=int, default=None, metavar="N", help="only this step (worked by hand if small)")
    report.add_argument("--name", default=None, metavar="GLOB", help="only parameters matching this glob")
    report.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE, not stdout")
    report.add_argument(
        "--check", action="store_true", help="exit 1 unless every update was checked and follows its rule"
    )
    report.set_defaults(func=_report)


def _command(
    commands: argparse._SubParsersAction, name: str, help: str, epilog: str, details: str = ""
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help,
        description=help[0].upper()
        + help[1:]
        + ("" if help.endswith(".") else ".")
        + (f"\n\n{details}" if details else ""),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _open(path: str) -> Trace:
    """The trace at ``path``, opened and checked (missing, not a trace, corrupt: TraceFormatError)."""
    from tracer._trace import Trace

    return Trace.open(Path(path))


def _summary(args: argparse.Namespace) -> int:
    from tracer._summary import format_summary, summarize

    data = summarize(_open(args.path))
    print(json.dumps(_strict_json(data), indent=2) if args.json else format_summary(data))
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from tracer._diff import diff

    a, b = _open(args.a), _open(args.b)
    found = diff(a, b, rtol=args.rtol, atol=args.atol, kinds=args.kinds)
    if found is None:
        print(f"no divergence: {_shown(a.source)} and {_shown(b.source)} are close")
        return EXIT_OK
    print(f"a: {_shown(a.source)}\nb: {_shown(b.source)}\n{found}")
    return EXIT_DIFFERENT


def _report(args: argparse.Namespace) -> int:
    from tracer._report import report

    trace = _open(args.path)
    _check_selection(trace, args.step, args.name)
    result = report(trace, step=args.step, name=args.name)
    fmt = args.format or (_SUFFIXES.get(Path(args.output).suffix.lower(), "text") if args.output else "text")
    render = {"text": result.to_text, "markdown": result.to_markdown, "html": result.to_html, "latex": result.to_latex}
    text = render[fmt]()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {_shown(args.output)}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    failed = _check_failure(result) if args.check else None
    if failed:
        print(f"tracer: check failed: {failed}", file=sys.stderr)
        return EXIT_DIFFERENT
    return EXIT_OK


def _check_selection(trace: Trace, step: int | None, name: str | None) -> None:
    """A ``--step`` or ``--name`` that matches nothing is bad input: say what there is."""
    import difflib
    import fnmatch

    if step is not None:
        steps = trace.steps
        if step not in steps:
            from tracer._report import spans

            has = spans(steps) if steps else "no steps"
            raise ValueError(f"--step {step} matches no step of {_shown(trace.source)} (it has {has})")
    if name is not None:
        names = [p.name for p in trace.meta.parameters]
        if not names:
            stats = trace.stats
            names = sorted({str(n) for n in stats.loc[stats["kind"].isin(["grad", "param", "update"]), "name"]})
        if not any(n == name or fnmatch.fnmatchcase(n, name) for n in names):
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.3) or names[:3]
            shown = ", ".join(repr(n) for n in close) if close else "none: the trace has no parameters"
            raise ValueError(f"--name {name!r} matches no parameter of {_shown(trace.source)} (closest: {shown})")


def _check_failure(result: Report) -> str | None:
    """Why ``report --check`` fails (None: every update was checked and follows its rule)."""
    counts = result.counts
    total = sum(counts.values())
    if not total:
        return "no update was traced"
    failing = counts["differ"] + counts["unchecked"]
    return f"{failing} of {total} updates do not follow their rule or could not be checked" if failing else None


def _strict_json(value: object) -> object:
    """NaN and infinities as the strings "nan", "inf", "-inf": strict JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def _one_line(exc: BaseException) -> str:
    """The error as one printable line (a file name that is not UTF-8 is shown escaped)."""
    from tracer._render import escape_text

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return escape_text(text)


def _shown(path: object) -> str:
    """A path as printed: characters that cannot be printed (bytes of a non-UTF-8 name) escaped."""
    from tracer._render import escape_text

    return escape_text(str(path))


_DIAGNOSE_EPILOG = """\
examples:
  tracer diagnose traces/run1
  tracer diagnose traces/run1 --json > findings.json
  tracer diagnose traces/run1 --threshold update_ratio_high=0.3 --threshold min_steps=10
"""


def _add_diagnose(commands: argparse._SubParsersAction) -> None:
    diagnose = _command(
        commands,
        "diagnose",
        "what went wrong in a run: first NaN/Inf, bad gradients, dead units, the loss trend and more",
        _DIAGNOSE_EPILOG,
        "Findings are printed most severe first. Exit status: 0, or 1 when a finding has\n"
        "severity 'error'; 2 on bad input. Thresholds: see tracer.Thresholds.",
    )
    diagnose.add_argument("path", metavar="PATH", help="the trace directory")
    diagnose.add_argument("--json", action="store_true", help="print the findings as JSON")
    diagnose.add_argument(
        "--threshold", action="append", default=[], metavar="NAME=VALUE",
        help="change a threshold, e.g. update_ratio_high=0.3 (repeatable)",
    )  # fmt: skip
    diagnose.set_defaults(func=_diagnose)


def _diagnose(args: argparse.Namespace) -> int:
    from tracer._diagnose import Thresholds, diagnose

    thresholds = Thresholds.parse(args.threshold)  # a bad NAME=VALUE: ValueError, exit 2
    findings = diagnose(_open(args.path), thresholds=thresholds)
    sys.stdout.write(findings.to_json() + "\n" if args.json else str(findings))
    return EXIT_DIFFERENT if findings.has_errors else EXIT_OK
