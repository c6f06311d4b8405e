"""Memory: resident set size over a long full-capture run of W1, against an untraced run.

Each run is its own subprocess, so peaks do not mix; both import ``tracer`` (and with it
pyarrow) before the baseline is read. RSS comes from ``/proc/self/status`` (VmRSS after
every step, VmHWM = peak). Finished trace files are deleted as they appear (after their
sizes are counted), so a 300-step run needs no disk space worth mentioning; the page
cache is not part of RSS.

Targets: peak RSS of the traced run exceeds the untraced peak by at most
3 × one step's captured bytes, and RSS does not grow from step 100 to step 300.

    python benchmarks/memory.py            # 300 steps
    python benchmarks/memory.py --quick    # 6 steps, growth checked from step 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as c

QUEUE_FACTOR = 3  # the target: excess peak ≤ 3 × one step's captured bytes
GROWTH_TOLERANCE = 0.05  # growth ≤ 5 % of the excess bound counts as "no growth" (allocator noise)
# (the bound is 3 × one step's captured bytes; 5 % of it is 14 MB for W1)


class _Sweeper(threading.Thread):
    """Counts and deletes finished trace files, so long runs use no disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="bench-sweeper", daemon=True)
        self.path = path
        self.raw = 0
        self.disk = 0
        self.steps: set[int] = set()
        self.stop = threading.Event()

    def sweep(self) -> None:
        import pyarrow.parquet as pq

        for file in sorted(self.path.glob("part-*.parquet")):
            t = pq.read_table(file, columns=["step", "numel", "dtype"])
            self.raw += sum(n * c.itemsize(d) for n, d in zip(t["numel"].to_pylist(), t["dtype"].to_pylist()))
            self.steps.update(t["step"].to_pylist())
            self.disk += file.stat().st_size
            file.unlink()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sweep()


def child(mode: str, steps: int, workload: str) -> dict[str, Any]:
    import tracer

    c.setup_torch()
    w = c.WORKLOADS[workload]()
    c.timed_steps(w.step, 3)  # optimizer state exists before the baseline
    start = c.rss_bytes()["VmRSS"]
    rss: list[int] = []
    out: dict[str, Any] = {"mode": mode, "steps": steps, "start_rss": start}
    t0 = time.perf_counter()
    if mode == "untraced":
        for _ in range(steps):
            w.step()
            rss.append(c.rss_bytes()["VmRSS"])
    else:
        with tempfile.TemporaryDirectory(prefix="tracer-mem-") as tmp:
            path = Path(tmp) / "trace"
            with tracer.trace(w.model, w.optimizer, path=path, max_values=None):
                sweeper = _Sweeper(path)
                sweeper.start()
                for _ in range(steps):
                    w.step()
                    rss.append(c.rss_bytes()["VmRSS"])
            out["rss_after_exit"] = c.rss_bytes()["VmRSS"]
            sweeper.stop.set()
            sweeper.join()
            sweeper.sweep()
            out["captured_per_step"] = sweeper.raw / max(len(sweeper.steps), 1)
            out["disk_per_step"] = sweeper.disk / max(len(sweeper.steps), 1)
    out["seconds"] = time.perf_counter() - t0
    out["rss"] = rss
    out["peak"] = c.rss_bytes()["VmHWM"]
    return out


def run_child(mode: str, steps: int, workload: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(steps), "--workload", workload]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"memory child {mode!r} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(base: dict[str, Any], traced: dict[str, Any], growth_from: int, quick: bool) -> str:
    steps = traced["steps"]
    per_step = traced["captured_per_step"]
    bound = QUEUE_FACTOR * per_step
    excess = traced["peak"] - base["peak"]
    # growth: median RSS over the second half of steps growth_from..steps against the median
    # over the first half; single readings swing by a writer batch, the peak is checked above
    window = traced["rss"][growth_from - 1 :]
    half = max(len(window) // 2, 1)
    growth = c.median(window[half:] or window) - c.median(window[:half])
    checkpoints = sorted(k for k in {1, 10, growth_from, steps // 2, steps} if 1 <= k <= steps)
    out = [c.header(f"Memory (benchmarks/memory.py{' --quick' if quick else ''})")]
    out.append(
        f"{base['workload']}, {steps} steps; RSS in MB (VmRSS after the step; peak = VmHWM). "
        f"Full capture (`max_values=None`), {c.mb(per_step)} MB captured per step "
        f"({c.mb(traced['disk_per_step'])} MB on disk), {traced['seconds'] / steps * 1e3:.0f} ms/step "
        f"(untraced {base['seconds'] / steps * 1e3:.0f} ms/step).\n"
    )
    rows = []
    for run in (base, traced):
        rows.append(
            [run["mode"], c.mb(run["start_rss"])] + [c.mb(run["rss"][k - 1]) for k in checkpoints] + [c.mb(run["peak"])]
        )
    out.append(c.table(["run", "before loop"] + [f"step {k}" for k in checkpoints] + ["peak"], rows))
    out.append("")
    out.append(
        c.table(
            ["target", "result"],
            [
                [
                    f"4. peak excess over untraced ≤ {QUEUE_FACTOR} × captured bytes/step",
                    c.verdict(excess / 1e6, bound / 1e6, "{:.0f} MB"),
                ],
                [
                    f"4. no RSS growth from step {growth_from} to {steps}",
                    (
                        f"{'met' if growth <= GROWTH_TOLERANCE * bound else '**NOT met**'} "
                        f"({growth / 1e6:+.1f} MB: median RSS of steps {growth_from + half}–{steps} − median of "
                        f"steps {growth_from}–{growth_from + half - 1})"
                    ),
                ],
            ],
        )
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 6 steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 300; quick 6)")
    parser.add_argument("--growth-from", type=int, default=None, help="default 100; quick 3")
    parser.add_argument("--workload", default="W1", choices=sorted(c.WORKLOADS))
    parser.add_argument("--child", choices=["untraced", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else 300)
    if args.child:
        print(json.dumps(child(args.child, steps, args.workload)))
        return 0
    growth_from = args.growth_from or (3 if args.quick else 100)
    if not 1 <= growth_from <= steps:
        parser.error(f"--growth-from must be in 1..{steps} (got {growth_from})")
    base = run_child("untraced", steps, args.workload)
    traced = run_child("full", steps, args.workload)
    base["workload"] = args.workload
    text = report(base, traced, growth_from, args.quick)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({"untraced": base, "full": traced}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
