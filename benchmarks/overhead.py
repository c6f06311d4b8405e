"""Tracing overhead: W1–W3 × untraced / default / statistics-only / full capture.

Untraced and traced blocks of steps alternate in one process (the order rotates every
round, after a warm-up), so drift in machine load hits every mode alike. Reported per
mode: the median time per step inside the blocks, the ratio to the untraced median, rows
and bytes per step on disk, and — for full capture — the bound
``1.25 × (untraced step + captured bytes ÷ raw Parquet write rate)``, with the write rate
measured in the same run (``pyarrow.parquet.write_table`` of as many float32 bytes, no
compression, no dictionary).

    python benchmarks/overhead.py            # the numbers in benchmarks/README.md
    python benchmarks/overhead.py --quick    # smoke test, a few seconds per workload
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

import tracer

MODES: dict[str, Any] = {
    "untraced": "untraced",
    "default": tracer.DEFAULT_MAX_VALUES,
    "stats": 0,
    "full": None,
}
TARGET_DEFAULT = {"W1": 1.30, "W2": 1.15, "W3": 1.08}
TARGET_STATS = {"W1": 1.25, "W2": 1.10, "W3": 1.05}
FULL_FACTOR = 1.25
STATS_BYTES_PER_ROW = 150
FULL_DISK_TO_RAW = 1.1


def trace_sizes(path: Path, max_values: int | None) -> dict[str, float]:
    """Rows, steps, bytes on disk and raw tensor bytes of one trace."""
    df = tracer.load(path, columns=["step", "numel", "dtype"])
    nbytes = df["numel"].to_numpy() * df["dtype"].map(c.itemsize).to_numpy(dtype="int64")
    stored = nbytes if max_values is None else nbytes[df["numel"].to_numpy() <= max_values]
    return {
        "rows": len(df),
        "steps": df["step"].nunique(),
        "disk": c.dir_parquet_bytes(path),
        "raw": float(nbytes.sum()),
        "raw_values": float(stored.sum()),
    }


def run_block(w: c.Workload, mode: str, steps: int, tmp: Path, n: int) -> dict[str, Any]:
    """One block of ``steps`` steps in ``mode``: per-step wall and CPU times, sizes on disk.

    The first step of a block of 3 or more is dropped from the per-step times; ``wall``/``cpu``
    are the whole block, including hook install and the writer draining at exit.
    """
    max_values = MODES[mode]
    path = tmp / f"{w.name}-{mode}-{n}"
    t0, p0 = time.perf_counter(), time.process_time()
    if mode == "untraced":
        times, cpu = c.timed_steps(w.step, steps, cpu=True)
    else:
        with tracer.trace(w.model, w.optimizer, path=path, max_values=max_values):
            times, cpu = c.timed_steps(w.step, steps, cpu=True)
    skip = 1 if steps >= 3 else 0
    block = {
        "wall": time.perf_counter() - t0,
        "cpu": time.process_time() - p0,
        "steps": steps,
        "times": times[skip:],
        "cpu_times": cpu[skip:],
    }
    if mode != "untraced":
        block["sizes"] = trace_sizes(path, max_values)
        shutil.rmtree(path)
    return block


def bench_workload(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Blocks U T1 U T2 U T3 U T1 ... (traced order rotating), each T between two U."""
    c.setup_torch()
    w = c.WORKLOADS[name]()
    traced = [m for m in MODES if m in args.modes and m != "untraced"]
    c.timed_steps(w.step, args.warmup)
    if not args.quick:
        for mode in traced:  # warm-up of every mode (imports, writer thread, first files)
            run_block(w, mode, 2, tmp, -1)
    blocks: dict[str, list[dict[str, Any]]] = {m: [] for m in ["untraced", *traced]}
    ratios: dict[str, list[float]] = {m: [] for m in traced}
    cpu_ratios: dict[str, list[float]] = {m: [] for m in traced}
    rates: list[float] = []
    before = run_block(w, "untraced", args.steps, tmp, 0)
    blocks["untraced"].append(before)
    for r in range(args.rounds):
        for mode in traced[r % len(traced) :] + traced[: r % len(traced)]:
            steps = args.full_steps if mode == "full" else args.steps
            block = run_block(w, mode, steps, tmp, r)
            blocks[mode].append(block)
            if mode == "full":  # the raw write rate, under the same machine load
                rates.append(c.parquet_write_rate(int(block["sizes"]["raw"] / block["sizes"]["steps"]), tmp, repeats=1))
            gc.collect()
            c.timed_steps(w.step, args.settle)  # untimed: let the traced block's after-effects pass
            after = run_block(w, "untraced", args.steps, tmp, r)
            blocks["untraced"].append(after)
            ref = (c.median(before["times"]) + c.median(after["times"])) / 2
            ref_cpu = (c.median(before["cpu_times"]) + c.median(after["cpu_times"])) / 2
            ratios[mode].append(c.median(block["times"]) / ref)
            cpu_ratios[mode].append(c.median(block["cpu_times"]) / ref_cpu)
            print(
                f"  {name} round {r} {mode}: {c.median(block['times']) * 1e3:.1f} ms/step, "
                f"untraced around it {ref * 1e3:.1f} ms/step, ratio {ratios[mode][-1]:.2f}",
                file=sys.stderr,
            )
            before = after

    result: dict[str, Any] = {"workload": name, "description": w.description, "modes": {}}
    for mode, bs in blocks.items():
        entry = {
            "median_s": c.median([t for b in bs for t in b["times"]]),
            "cpu_s": c.median([t for b in bs for t in b["cpu_times"]]),
            "amortized_s": c.median([b["wall"] / b["steps"] for b in bs]),
            "amortized_cpu_s": c.median([b["cpu"] / b["steps"] for b in bs]),
            "blocks": len(bs),
        }
        if mode != "untraced":
            tot = {k: sum(b["sizes"][k] for b in bs) for k in bs[0]["sizes"]}
            entry.update(
                ratio=c.median(ratios[mode]),
                ratios=ratios[mode],
                cpu_ratio=c.median(cpu_ratios[mode]),
                rows_per_step=tot["rows"] / tot["steps"],
                disk_per_step=tot["disk"] / tot["steps"],
                raw_per_step=tot["raw"] / tot["steps"],
                disk_per_row=tot["disk"] / tot["rows"],
                disk_to_raw_values=(tot["disk"] / tot["raw_values"]) if tot["raw_values"] else None,
            )
        result["modes"][mode] = entry
    if "full" in result["modes"]:
        full = result["modes"]["full"]
        full["write_rate"] = c.median(rates)
        full["bound_s"] = FULL_FACTOR * (
            result["modes"]["untraced"]["median_s"] + full["raw_per_step"] / full["write_rate"]
        )
    return result


def fmt_mode(res: dict[str, Any], mode: str) -> str:
    m = res["modes"].get(mode)
    if m is None:
        return "–"
    ratio = f" ({m['ratio']:.2f}×)" if "ratio" in m else ""
    return f"{m['median_s'] * 1e3:.1f}{ratio}"


def fmt_cpu(res: dict[str, Any], mode: str) -> str:
    m = res["modes"].get(mode)
    if m is None:
        return "–"
    ratio = f" ({m['cpu_ratio']:.2f}×)" if "cpu_ratio" in m else ""
    return f"{m['cpu_s'] * 1e3:.1f}{ratio}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [c.header("Overhead (benchmarks/overhead.py" + (" --quick)" if args.quick else ")"))]
    out.append(
        f"{args.rounds} rounds; every traced block ({args.steps} steps, {args.full_steps} for full "
        f"capture) runs between two untraced blocks of {args.steps} steps, in one process; the first "
        "step of each block of 3 or more is dropped. ms = median wall time per step; (×) = median over blocks of "
        "traced median ÷ mean of the two untraced medians around it. CPU = process CPU time per step "
        "(all threads, the writer's included), less sensitive to other load on the machine. "
        "*full, amortized* = block wall time including hook install and the writer draining at "
        "exit, ÷ steps; *full bound* = 1.25 × (untraced + captured bytes ÷ raw write rate).\n"
    )
    rows = []
    for r in results:
        full = r["modes"].get("full")
        rows.append(
            [
                r["workload"],
                fmt_mode(r, "untraced"),
                fmt_mode(r, "default"),
                fmt_mode(r, "stats"),
                fmt_mode(r, "full"),
                f"{full['amortized_s'] * 1e3:.0f}" if full else "–",
                f"{full['bound_s'] * 1e3:.0f}" if full and "bound_s" in full else "–",
            ]
        )
    out.append(
        c.table(
            [
                "workload",
                "untraced ms",
                "default ms (×)",
                "stats only ms (×)",
                "full ms (×)",
                "full, amortized ms",
                "full bound ms",
            ],
            rows,
        )
    )
    out.append("")
    rows = [[r["workload"]] + [fmt_cpu(r, m) for m in MODES] for r in results]
    out.append(
        c.table(["workload", "untraced CPU ms", "default CPU ms (×)", "stats only CPU ms (×)", "full CPU ms (×)"], rows)
    )
    out.append("")
    rows = []
    for r in results:
        for mode in ("default", "stats", "full"):
            m = r["modes"].get(mode)
            if m is None:
                continue
            d2r = m["disk_to_raw_values"]
            rows.append(
                [
                    r["workload"],
                    mode,
                    f"{m['rows_per_step']:.0f}",
                    c.mb(m["raw_per_step"]),
                    f"{m['disk_per_step'] / 1e6:.3f}",
                    f"{m['disk_per_row']:.0f}",
                    f"{d2r:.2f}" if d2r is not None else "–",
                    f"{m['write_rate'] / 1e6:.0f}" if "write_rate" in m else "–",
                ]
            )
    out.append(
        c.table(
            [
                "workload",
                "mode",
                "rows/step",
                "captured MB/step (raw tensor bytes)",
                "disk MB/step",
                "disk B/row",
                "disk ÷ raw bytes of stored values",
                "raw Parquet write MB/s",
            ],
            rows,
        )
    )
    out.append("")
    out.append(targets(results))
    return "\n".join(out)


def targets(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        w, ms = r["workload"], r["modes"]
        base = ms.get("untraced")
        if base and "default" in ms:
            rows.append([f"1. default, {w}", c.verdict(ms["default"]["ratio"], TARGET_DEFAULT[w], "{:.2f}×")])
        if base and "stats" in ms:
            rows.append([f"2. stats only, {w}", c.verdict(ms["stats"]["ratio"], TARGET_STATS[w], "{:.2f}×")])
        if "full" in ms and "bound_s" in ms["full"]:
            f = ms["full"]
            rows.append(
                [
                    f"3. full capture, {w} (amortized ms/step vs bound)",
                    c.verdict(f["amortized_s"] * 1e3, f["bound_s"] * 1e3, "{:.0f} ms"),
                ]
            )
        if "stats" in ms:
            rows.append(
                [
                    f"5. stats-only bytes per row, {w}",
                    c.verdict(ms["stats"]["disk_per_row"], STATS_BYTES_PER_ROW, "{:.0f} B"),
                ]
            )
        if "full" in ms:
            rows.append(
                [
                    f"5. full values on disk ÷ raw tensor bytes, {w}",
                    c.verdict(ms["full"]["disk_to_raw_values"], FULL_DISK_TO_RAW, "{:.2f}×"),
                ]
            )
    return c.table(["target", "result"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few, short blocks")
    parser.add_argument("--workloads", default="W1,W2,W3", help="comma-separated (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 6; quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per block (default 12; quick 2)")
    parser.add_argument(
        "--full-steps", type=int, default=None, help="steps per full-capture block (default 6; quick 1)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untraced warm-up steps (default 10; quick 2)")
    parser.add_argument(
        "--settle", type=int, default=None, help="untimed steps after each traced block (default 2; quick 1)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 6)
    args.steps = args.steps or (2 if quick else 12)
    args.full_steps = args.full_steps or (1 if quick else 6)
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 10)
    args.settle = args.settle if args.settle is not None else (1 if quick else 2)
    args.modes = args.modes.split(",")
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown or "untraced" not in args.modes:
        parser.error(f"--modes must include 'untraced' and be among {list(MODES)} (got {args.modes})")
    c.setup_torch()
    results = []
    with tempfile.TemporaryDirectory(prefix="tracer-bench-") as tmp:
        for name in args.workloads.split(","):
            results.append(bench_workload(name.strip(), args, Path(tmp)))
    text = report(results, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
