"""A long run's files: how many a trace ends as, and how long ``tracer.load`` takes.

A run of ``--steps`` steps of a 2-layer model (the HTML page benchmark's), traced with a
short ``flush_seconds`` so that it flushes as often as hours of training at the default
1 s would: once with the background merging of small files (``tracer._compact``, the
default), once without. Reported: files written, files left, load time (best of 3).

The file count after ``n`` flushes is the sum of the base-16 digits of ``n`` at most (15
per level of merging), so a 24-hour run at the default flush (86,400 flushes = 0x15180)
ends as at most 15 files plus the leftovers the final merge joins.

    python benchmarks/long_run.py [--steps 10000] [--flush 0.02] [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import tracer
import tracer._store as store


def traced_run(path: Path, steps: int, flush: float, compact: bool) -> tuple[int, int, float, float]:
    """(files written, files left, seconds of training, CPU seconds of the process) of one run."""
    original = store.Writer.__init__

    def init(self, *args, **kwargs):  # the merging is internal: switched off here only
        kwargs["compact"] = compact
        original(self, *args, **kwargs)
        writers.append(self)

    writers: list[store.Writer] = []
    store.Writer.__init__ = init  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(16, 8), torch.randn(16, 1)
        start, cpu = time.perf_counter(), time.process_time()
        with tracer.trace(model, opt, path=path, flush_seconds=flush):
            for _ in range(steps):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        store.Writer.__init__ = original  # type: ignore[method-assign]
    return writers[0].files_written, len(list(path.glob("*.parquet"))), seconds, cpu


def best_load(path: Path, rounds: int = 3) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        rows = len(tracer.load(path))
        times.append(time.perf_counter() - start)
    return min(times), rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--flush", type=float, default=0.02)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--quick", action="store_true", help="300 steps: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 300)
    lines = [
        f"## A long run's files (benchmarks/long_run.py: {args.steps:,} steps, flush_seconds={args.flush})",
        "",
        "| merging | files written | files left | training (s) | CPU (s) | `tracer.load` (best of 3) | rows |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for compact in (False, True):
            path = Path(tmp) / f"run-{compact}"
            written, left, seconds, cpu = traced_run(path, args.steps, args.flush, compact)
            load, rows = best_load(path)
            lines.append(
                f"| {'on' if compact else 'off'} | {written:,} | {left:,} | {seconds:.1f} | {cpu:.1f} "
                f"| {load:.2f} s | {rows:,} |"
            )
            shutil.rmtree(path)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
