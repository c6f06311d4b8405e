"""Tracing cost on small real loops (GPT with AdamW groups and accumulation, DCGAN,
makemore; ``_loops.py``) and W1–W3, against the physical floor.

Blocks alternate U T₁ U T₂ U … in one process as in ``overhead.py`` (traced order rotating);
a block's ratio is its median step ÷ the mean of the two untraced medians around it. The
table gives the median over rounds and the best round. *floor* = (untraced step + captured
bytes ÷ read bandwidth) ÷ untraced step: one read of every captured tensor at this
machine's measured memory bandwidth (``_common.read_bandwidth``), the least any tracer
that looks at every value could cost. ``--busy N`` runs N busy-loop processes meanwhile.

    python benchmarks/loops.py                        # the numbers in benchmarks/README.md
    python benchmarks/loops.py --busy 1               # with a competing CPU load
    python benchmarks/loops.py --quick                # smoke test
    python benchmarks/loops.py --profile gpt          # cProfile of tracer's part of one loop
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
import _loops

import tracer
from tracer import _stats

MODES: dict[str, Any] = {"default": tracer.DEFAULT_MAX_VALUES, "stats": 0}
MAKERS = {**c.WORKLOADS, **_loops.LOOPS}
TARGET = 1.5


def fuse_updates() -> None:
    """What-if (issue 15, item 3): the statistics-only update taken by
    ``tracer._tensors.difference_stats`` (one read of parameter and snapshot, nothing
    written) instead of ``torch.sub(after, before, out=before)`` and a second read: the
    call-site change requested of ``tracer/_optimizer_steps.py``, patched in here."""
    from tracer._optimizer_steps import OptimizerSteps
    from tracer._tensors import difference_stats

    original = OptimizerSteps._update
    if getattr(original, "fused", False):
        return

    def _update(self: Any, p: Any, before: Any) -> Any:
        if self.max_values is not None and p.numel() > self.max_values:
            fused = difference_stats(p.detach(), before)
            if fused is not None:
                return fused
        return original(self, p, before)

    _update.fused = True  # type: ignore[attr-defined]
    OptimizerSteps._update = _update  # type: ignore[method-assign]


def captured_bytes(path: Path) -> tuple[float, int]:
    """Raw bytes of every captured tensor per step (numel × itemsize of the recorded dtype)."""
    df = tracer.load(path, columns=["step", "numel", "dtype"])
    nbytes = df["numel"].to_numpy() * df["dtype"].map(c.itemsize).to_numpy(dtype="int64")
    return float(nbytes.sum()) / max(df["step"].nunique(), 1), len(df) // max(df["step"].nunique(), 1)


def block(w: c.Workload, mode: str, steps: int, tmp: Path, n: int) -> dict[str, Any]:
    if mode == "untraced":
        return {"times": c.timed_steps(w.step, steps)[1:]}
    path = tmp / f"{w.name}-{mode}-{n}"
    kernels = _stats._kernels()
    if mode.endswith("-stock"):
        _stats._KERNELS = None  # the stock reductions for this block (--compare-numba)
    try:
        with tracer.trace(w.model, w.optimizer, path=path, max_values=MODES[mode]):
            times = c.timed_steps(w.step, steps)[1:]
    finally:
        _stats._KERNELS = kernels
    raw, rows = captured_bytes(path)
    shutil.rmtree(path)
    return {"times": times, "raw": raw, "rows": rows}


def bench(name: str, args: argparse.Namespace, tmp: Path, bandwidth: float) -> dict[str, Any]:
    c.setup_torch()
    w = MAKERS[name]()
    c.timed_steps(w.step, args.warmup)
    for mode in MODES:
        block(w, mode, 3, tmp, -1)  # imports, first compilation of the kernels, writer start
    ratios: dict[str, list[float]] = {m: [] for m in MODES}
    untraced: list[float] = []
    raw: dict[str, float] = {}
    rows: dict[str, int] = {}
    before = c.median(block(w, "untraced", args.steps, tmp, 0)["times"])
    for r in range(args.rounds):
        order = list(MODES)[r % len(MODES) :] + list(MODES)[: r % len(MODES)]
        for mode in order:
            b = block(w, mode, args.steps, tmp, r)
            raw[mode], rows[mode] = b["raw"], b["rows"]
            c.timed_steps(w.step, 2)
            after = c.median(block(w, "untraced", args.steps, tmp, r)["times"])
            ratios[mode].append(c.median(b["times"]) / ((before + after) / 2))
            untraced.append(after)
            print(f"  {name} round {r} {mode}: ratio {ratios[mode][-1]:.2f}", file=sys.stderr)
            before = after
    u = c.median(untraced)
    return {
        "workload": name,
        "description": w.description,
        "untraced_s": u,
        "ratios": ratios,
        "raw_per_step": raw,
        "rows_per_step": rows,
        "floor": {m: (u + raw[m] / bandwidth) / u for m in MODES},
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace, bandwidth: float) -> str:
    busy = f", {args.busy} busy-loop process(es) running" if args.busy else ""
    busy += ", fused update (what-if)" if args.fused_update else ""
    busy += ", numba " + ("on" if _stats._kernels() is not None else "off")
    busy += ", tracer on torch's threads" if args.torch_threads else ""
    out = [c.header(f"Real loops (benchmarks/loops.py{' --quick' if args.quick else ''}{busy})")]
    out.append(
        f"{args.rounds} rounds × {args.steps} steps per block; ratio = traced ÷ untraced around it, "
        f"median over rounds (best round in brackets); floor = (untraced + captured bytes ÷ "
        f"{bandwidth / 1e9:.1f} GB/s read bandwidth) ÷ untraced. Target default ≤ {TARGET}×.\n"
    )
    rows = []
    for r in results:
        d, s = r["ratios"]["default"], r["ratios"]["stats"]
        extra = [f"{c.median(r['ratios'][m]):.2f}× ({min(r['ratios'][m]):.2f}×)" for m in MODES if m.endswith("-stock")]
        rows.append(
            [
                r["workload"],
                r["description"],
                f"{r['untraced_s'] * 1e3:.1f}",
                f"{c.median(d):.2f}× ({min(d):.2f}×)",
                f"{c.median(s):.2f}× ({min(s):.2f}×)",
                *extra,
                r["rows_per_step"]["default"],
                c.mb(r["raw_per_step"]["default"]),
                f"{r['floor']['default']:.3f}×",
                "met" if c.median(d) <= TARGET else "**NOT met**",
            ]
        )
    stock = [f"{m.removesuffix('-stock')}, stock reductions" for m in MODES if m.endswith("-stock")]
    headers = ["loop", "what", "untraced ms", "default", "stats only", *stock, "rows/step", "captured MB/step", "floor"]
    out.append(c.table([*headers, f"default ≤ {TARGET}×"], rows))
    return "\n".join(out) + "\n"


def profile(name: str, steps: int, tmp: Path) -> str:
    """cProfile of ``steps`` traced steps (statistics only), tracer's functions by own time."""
    c.setup_torch()
    w = MAKERS[name]()
    c.timed_steps(w.step, 5)
    with tracer.trace(w.model, w.optimizer, path=tmp / "prof", max_values=0):
        c.timed_steps(w.step, 3)
        prof = cProfile.Profile()
        prof.enable()
        c.timed_steps(w.step, steps)
        prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    mine = [(k, v) for k, v in stats.stats.items() if "tracer" in k[0]]  # type: ignore[attr-defined]
    mine.sort(key=lambda kv: -kv[1][3])
    lines = [f"cProfile, {name}, statistics only, {steps} steps: {total:.2f} s of own time in all"]
    lines += [
        f"  cum {v[3] * 1e3 / steps:7.2f} ms/step  own {v[2] * 1e3 / steps:6.2f}  {v[1]:6d} calls  "
        f"{Path(k[0]).name}:{k[1]} {k[2]}"
        for k, v in mine[:25]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="gpt,dcgan,makemore,W1,W2,W3")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes to run meanwhile")
    parser.add_argument("--threads", type=int, default=c.THREADS, help="torch's intra-op threads")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fused-update", action="store_true", help="what-if: see fuse_updates()")
    parser.add_argument(
        "--torch-threads", action="store_true", help="tracer's reductions on torch's threads, as before"
    )
    parser.add_argument("--compare-numba", action="store_true", help="also default/stats with the stock reductions")
    parser.add_argument("--profile", metavar="LOOP")
    parser.add_argument("--markdown")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
    if args.fused_update:
        fuse_updates()
    c.THREADS = args.threads
    if args.compare_numba and _stats._kernels() is not None:
        MODES.update({"default-stock": MODES["default"], "stats-stock": MODES["stats"]})
    if args.torch_threads:
        _stats._set_threads = None  # serial() is a no-op
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)
    ]  # a competing CPU load, ended by pid below
    try:
        with tempfile.TemporaryDirectory(prefix="tracer-loops-") as tmp:
            if args.profile:
                print(profile(args.profile, 5 if args.quick else 30, Path(tmp)))
                return 0
            c.setup_torch()
            bandwidth = c.read_bandwidth(quick=args.quick)
            print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s", file=sys.stderr)
            t0 = time.perf_counter()
            results = [bench(n, args, Path(tmp), bandwidth) for n in args.workloads.split(",")]
            print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    md = report(results, args, bandwidth)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth": bandwidth, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
