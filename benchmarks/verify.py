"""Cost of ``verify=True``: W1–W3 × untraced / verify=False / verify=True (default max_values).

Untraced and traced blocks of steps alternate in one process (the traced order rotates
every round, after a warm-up), so drift in machine load hits every mode alike. Reported
per workload: the median time per step of each mode, the ratios of verify=True to the
untraced run and to verify=False around it, and the extra time of verify in units of the
workload's own ``optimizer.step()`` (timed alone, untraced): the issue's aim is about one.

    python benchmarks/verify.py            # the numbers in benchmarks/README.md
    python benchmarks/verify.py --quick    # smoke test, a few seconds per workload
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

import tracer

MODES = ("untraced", "verify=False", "verify=True")


def run_block(w: c.Workload, mode: str, steps: int, tmp: Path, n: int) -> list[float]:
    """Per-step wall seconds of one block of ``steps`` steps (the first dropped from 3 on)."""
    if mode == "untraced":
        times = c.timed_steps(w.step, steps)
    else:
        path = tmp / f"{w.name}-{n}"
        with tracer.trace(w.model, w.optimizer, path=path, verify=mode == "verify=True"):
            times = c.timed_steps(w.step, steps)
        shutil.rmtree(path)
    return times[1:] if steps >= 3 else times


def optimizer_step_time(w: c.Workload, steps: int) -> float:
    """Median seconds of ``optimizer.step()`` alone, untraced (gradients made just before)."""
    times = []
    for _ in range(steps):
        step = w.optimizer.step
        w.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]  # the loop body without its step
        try:
            w.step()
        finally:
            del w.optimizer.step
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return c.median(times)


def bench_workload(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    c.setup_torch()
    w = c.WORKLOADS[name]()
    c.timed_steps(w.step, args.warmup)
    traced = list(MODES[1:])
    if not args.quick:
        for mode in traced:
            run_block(w, mode, 2, tmp, -1)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    to_untraced, to_plain = [], []
    for r in range(args.rounds):
        medians = {}
        for mode in ["untraced", *(traced[r % 2 :] + traced[: r % 2])]:
            block = run_block(w, mode, args.steps, tmp, r)
            times[mode] += block
            medians[mode] = c.median(block)
            gc.collect()
        to_untraced.append(medians["verify=True"] / medians["untraced"])
        to_plain.append(medians["verify=True"] / medians["verify=False"])
        print(f"  {name} round {r}: " + ", ".join(f"{m} {v * 1e3:.1f} ms" for m, v in medians.items()), file=sys.stderr)
    opt_step = optimizer_step_time(w, max(3, args.steps))
    median = {m: c.median(t) for m, t in times.items()}
    return {
        "workload": name,
        "description": w.description,
        "median_s": median,
        "to_untraced": c.median(to_untraced),
        "to_plain": c.median(to_plain),
        "optimizer_step_s": opt_step,
        "extra_steps": (median["verify=True"] - median["verify=False"]) / opt_step,
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [c.header("verify=True (benchmarks/verify.py" + (" --quick)" if args.quick else ")"))]
    out.append(
        f"{args.rounds} rounds of one block per mode ({args.steps} steps each, the first dropped), in one process; "
        "ms = median wall time per step; ratios = median over rounds of the round's medians; *extra* = "
        "(verify=True − verify=False) ÷ the workload's own untraced `optimizer.step()`.\n"
    )
    rows = [
        [
            r["workload"],
            *(f"{r['median_s'][m] * 1e3:.1f}" for m in MODES),
            f"{r['to_untraced']:.2f}×",
            f"{r['to_plain']:.2f}×",
            f"{r['optimizer_step_s'] * 1e3:.1f}",
            f"{r['extra_steps']:.1f}",
        ]
        for r in results
    ]
    headers = ["workload", "untraced ms", "verify=False ms", "verify=True ms", "÷ untraced", "÷ verify=False",
               "optimizer.step() ms", "extra, in optimizer steps"]  # fmt: skip
    out.append(c.table(headers, rows))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few short rounds: a smoke test")
    parser.add_argument("--workloads", nargs="+", default=list(c.WORKLOADS), choices=list(c.WORKLOADS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.steps = args.steps or (3 if args.quick else 12)
    args.warmup = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_workload(name, args, Path(tmp)) for name in args.workloads]
    text = report(results, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
