"""The HTML report page of a long trace: time to build ``tracer.report(path).to_html()``.

Two traces (issue 13's "Done when"): 10,000 steps of a 2-layer model
(``Linear(4, 8)``, ``ReLU``, ``Linear(8, 1)``, SGD), target ≤ 3 s; and the 1,000-step
10-layer trace of ``report_page.py``. ``--profile FILE`` writes a cProfile of the page build
(read it with ``python -m pstats FILE``) and prints its top functions. ``--text`` times
``tracer.report(path).to_text()`` instead (issue 13: ≤ 2 s on the 10-layer trace). Each build
is timed in wall-clock and CPU seconds (the CPU time of a busy machine varies less).

Run:  python benchmarks/html_page.py [--model 10-layer] [--text] [--steps N] [--trace DIR] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import tracer


def two_layer_trace(path: Path, steps: int) -> float:
    """Trace ``steps`` SGD steps of a 2-layer model into ``path``; returns the seconds taken."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    start = time.perf_counter()
    with tracer.trace(model, opt, path=path):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    return time.perf_counter() - start


def ten_layer_trace(path: Path, steps: int) -> float:
    """The trace of ``report_page.py``: 10 × (Linear(32, 32) + ReLU), SGD with momentum."""
    sys.path.insert(0, str(Path(__file__).parent))
    from report_page import make_trace

    return make_trace(path, steps)


def build_page(path: Path, text: bool = False) -> tuple[str, float, float]:
    """``tracer.report(path).to_html()`` (``to_text()`` with ``text``) and the wall-clock and
    CPU seconds it took (report and page together)."""
    start, cpu = time.perf_counter(), time.process_time()
    rep = tracer.report(path)
    page = rep.to_text() if text else rep.to_html()
    return page, time.perf_counter() - start, time.process_time() - cpu


def profiled_page(path: Path, out: Path, top: int = 25, text: bool = False) -> str:
    """Build the page under cProfile; write the profile to ``out``; the top functions as text."""
    profiler = cProfile.Profile()
    profiler.enable()
    rep = tracer.report(path)
    rep.to_text() if text else rep.to_html()
    profiler.disable()
    profiler.dump_stats(out)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["2-layer", "10-layer"], default="2-layer")
    parser.add_argument("--steps", type=int, default=None, help="default: 10000 (2-layer), 1000 (10-layer)")
    parser.add_argument("--trace", type=Path, help="reuse (or create) the trace in this directory")
    parser.add_argument("--rounds", type=int, default=3, help="timed page builds (the minimum is reported)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of one page build here")
    parser.add_argument("--quick", action="store_true", help="200 steps, one round: a smoke test")
    parser.add_argument("--text", action="store_true", help="time report(path).to_text() instead of to_html()")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    steps = args.steps or (10_000 if args.model == "2-layer" else 1_000)
    rounds = args.rounds
    if args.quick:
        steps, rounds = 200, 1
    make = two_layer_trace if args.model == "2-layer" else ten_layer_trace
    with tempfile.TemporaryDirectory() as tmp:
        path = args.trace or Path(tmp) / "trace"
        traced_s = make(path, steps) if not path.exists() else None
        times, cpu, page = [], [], ""
        for _ in range(rounds):
            page, seconds, cpu_seconds = build_page(path, args.text)
            times.append(seconds)
            cpu.append(cpu_seconds)
        profile = profiled_page(path, args.profile, text=args.text) if args.profile else ""
    what = "to_text" if args.text else "to_html"
    full = steps == (10_000 if args.model == "2-layer" else 1_000)
    goal = {("2-layer", "to_html"): "≤ 3 s |", ("10-layer", "to_text"): "≤ 2 s |"}.get((args.model, what))
    target = goal if goal and full else "– |"
    lines = [
        "## HTML report page (benchmarks/html_page.py)",
        "",
        f"{steps} steps of the {args.model} model · torch {torch.__version__}",
        "",
        "| what | value | target |",
        "|---|---|---|",
        f"| tracing the run | {'reused' if traced_s is None else f'{traced_s:.1f} s'} | – |",
        f"| `tracer.report(path).{what}()` (best of {rounds}) | {min(times):.2f} s wall, {min(cpu):.2f} s CPU | "
        + target,
        f"| page size | {len(page.encode()) / 1e6:.2f} MB | – |",
        f"| load average (1, 5, 15 min) | {', '.join(f'{x:.1f}' for x in os.getloadavg())} | – |",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if profile:
        sys.stderr.write(profile)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
