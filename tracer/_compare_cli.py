"""``tracer compare A B [C ...] -o page.html``: several runs overlaid on one HTML page.

>>> parser = argparse.ArgumentParser(prog="tracer")
>>> _ = add_compare_parser(parser.add_subparsers())
>>> parser.parse_args(["compare", "traces/a", "traces/b", "-o", "ab.html"]).output
'ab.html'
"""

from __future__ import annotations

import argparse

_EPILOG = """\
examples:
  tracer compare traces/lr-0.1 traces/lr-0.01 -o compare.html
  tracer compare traces/a traces/b traces/c --label baseline --label wider --label deeper -o abc.html
"""


def add_compare_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``tracer compare`` to the ``tracer`` command line's subcommands (``func`` returns the exit code)."""
    parser = commands.add_parser(
        "compare",
        help="several runs side by side on one HTML page",
        description=(
            "Write one HTML page that shows each run's hyper-parameters and overlays their loss, "
            "gradient norms and update ratios per layer."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="two trace directories or more")
    parser.add_argument("-o", "--output", default="compare.html", metavar="PAGE", help="default: compare.html")
    parser.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="a run's name on the page: once per PATH, in order (default: each directory's name)",
    )
    parser.set_defaults(func=cmd_compare)
    return parser


def cmd_compare(args: argparse.Namespace) -> int:
    """``tracer compare PATH PATH [PATH ...]``; bad input raises ValueError (exit 2 in ``tracer``)."""
    from tracer._compare import compare
    from tracer._render import escape_text

    out = compare(*args.paths, labels=args.label).save(args.output)
    print(f"wrote the comparison of {len(args.paths)} runs to {escape_text(str(out))}")
    return 0
