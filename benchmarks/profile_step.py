"""Where tracing time goes: run one workload in one mode, for a sampling profiler to watch.

    py-spy record --threads --idle -r 250 -f raw -o w1-stats.txt -- \\
        python benchmarks/profile_step.py --workload W1 --mode stats --steps 200
    python benchmarks/profile_step.py --summarize w1-stats.txt

``--summarize`` reads py-spy's raw (collapsed) output and attributes the training
thread's samples inside the timed loop to the parts of tracer (hooks, capture, statistics,
the writer queue) and to the model's own work; the writer thread is summarized apart.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

import _common as c

MODES = {"untraced": "untraced", "default": 1024, "stats": 0, "full": None}


def loop(workload: str, mode: str, steps: int) -> None:
    import tracer

    c.setup_torch()
    w = c.WORKLOADS[workload]()
    c.timed_steps(w.step, 5)
    with tempfile.TemporaryDirectory(prefix="tracer-prof-") as tmp:
        t0 = time.perf_counter()
        if mode == "untraced":
            times = c.timed_steps(w.step, steps)
        else:
            with tracer.trace(w.model, w.optimizer, path=Path(tmp) / "t", max_values=MODES[mode]):
                times = c.timed_steps(w.step, steps)
        wall = time.perf_counter() - t0
    print(f"{workload} {mode}: median {c.median(times) * 1e3:.1f} ms/step, block {wall / steps * 1e3:.1f} ms/step")


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+):(?P<line>\d+)\)$")
_UNTRACED = "model/optimizer work, not tracer's"
_PATCH = "_make_patched_backward.<locals>.backward"


def summarize(file: Path, top: int) -> None:
    """Print where the training thread's and the writer thread's samples fall."""
    by_func: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    by_hook: collections.Counter[str] = collections.Counter()
    writer: collections.Counter[str] = collections.Counter()
    total_main = total_writer = 0
    for raw in file.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if any("Writer._run (tracer/_store.py" in f for f in frames):
            total_writer += n
            writer[_describe(_innermost(frames, ("tracer/", "pyarrow/", "numpy/")) or frames[-1])] += n
            continue
        if not any("timed_steps" in f for f in frames):
            continue  # set-up, warm-up, other threads
        total_main += n
        tracer_frames = [f for f in frames if "tracer/" in f]
        if not tracer_frames or (tracer_frames[-1].startswith(_PATCH) and len(tracer_frames) == 1):
            by_func[_UNTRACED] += n  # the real backward runs inside tracer's backward patch
            continue
        inner = tracer_frames[-1]
        by_func[_FRAME.match(inner)["func"] if _FRAME.match(inner) else inner] += n
        by_line[_describe(inner)] += n
        hooks = [f for f in tracer_frames if not f.startswith(_PATCH)]
        by_hook[_FRAME.match(hooks[0])["func"] if hooks and _FRAME.match(hooks[0]) else "?"] += n
    print(f"training thread: {total_main} samples in the timed loop (100 % = traced step time)")
    print("  by innermost tracer function:")
    for key, n in by_func.most_common():
        print(f"  {n / total_main * 100:5.1f} %  {key}")
    print("  by hook (outermost tracer frame):")
    for key, n in by_hook.most_common():
        print(f"  {n / total_main * 100:5.1f} %  {key}")
    print("  by innermost tracer line:")
    for key, n in by_line.most_common(top):
        print(f"  {n / total_main * 100:5.1f} %  {key}")
    if total_writer:
        print(f"writer thread: {total_writer} samples")
        for key, n in writer.most_common(top):
            print(f"  {n / total_writer * 100:5.1f} %  {key}")


def _innermost(frames: list[str], markers: tuple[str, ...]) -> str | None:
    return next((f for f in reversed(frames) if any(m in f for m in markers)), None)


def _describe(frame: str) -> str:
    """``func (tracer/x.py:12)`` -> ``func x.py:12  <source line>`` (source as it is now)."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    text = ""
    path = Path(__file__).resolve().parent.parent / m["file"]
    if m["file"].startswith("tracer/") and path.is_file():
        lines = path.read_text().splitlines()
        k = int(m["line"])
        text = lines[k - 1].strip() if 0 < k <= len(lines) else ""
    return f"{m['func']} {m['file']}:{m['line']}  {text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W1", choices=sorted(c.WORKLOADS))
    parser.add_argument("--mode", default="stats", choices=list(MODES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--summarize", type=Path, help="summarize a py-spy raw file instead")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(args.summarize, args.top)
    else:
        loop(args.workload, args.mode, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
