"""Reading: filtered vs full ``tracer.load`` on a generated trace of ≥ 1 GB.

The trace is written by tracer itself (full capture, ``max_values=None``) from an MLP
(4 × Linear(512, 512)+ReLU, batch 64, SGD with momentum) into a temporary directory under
/tmp, stepping until the files on disk reach ``--size-gb``; it is deleted afterwards.
Every query runs ``--repeats`` times (median), with the files in the page cache (they were
just written), so the times measure decoding and the bytes each query touches, not the
disk. "read" is the bytes the process read (``rchar`` in /proc/self/io) during the query.

"answer's share of the values" is the fraction of all stored values that the answer holds:
a reader that reads only what it needs cannot go much below that fraction of a full load.

Targets: ``tracer.load(path, step=k)`` / ``kind=`` / ``name=`` take ≤ 5 % of the time of
a full ``tracer.load(path)``; the full load reaches ≥ 50 % of the throughput of a plain
``pyarrow.parquet.read_table`` of the same files.

    python benchmarks/load.py                 # 1 GB
    python benchmarks/load.py --size-gb 3
    python benchmarks/load.py --quick         # 0.03 GB smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c

FILTERED_LIMIT = 0.05
THROUGHPUT_LIMIT = 0.50


def _mlp_run(width: int) -> tuple[Any, Any, Callable[[], None]]:
    import torch

    c.setup_torch()
    model = c.mlp(width, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(64, width), torch.randn(64, width)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    return model, opt, step


def generate(path: Path, size_bytes: int, width: int) -> dict[str, Any]:
    """Trace MLP training steps (full capture) into ``path`` until its files hold ``size_bytes``.

    A 3-step calibration trace gives the bytes per step (the writer's queue would make
    "step until the files are big enough" overshoot by up to the queue bound).
    """
    import tracer

    model, opt, step = _mlp_run(width)
    calib = path.with_name(path.name + "-calibration")
    with tracer.trace(model, opt, path=calib, max_values=None):
        for _ in range(3):
            step()
    per_step = c.dir_parquet_bytes(calib) / 3
    shutil.rmtree(calib)
    steps = max(2, math.ceil(size_bytes * 1.03 / per_step))
    t0 = time.perf_counter()
    with tracer.trace(model, opt, path=path, max_values=None) as run:
        for _ in range(steps):
            step()
        run.flush()
        while c.dir_parquet_bytes(path) < size_bytes:  # compression varies a little
            step()
            steps += 1
            run.flush()
    return {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "bytes": c.dir_parquet_bytes(path),
        "files": len(list(path.glob("*.parquet"))),
        "params": [n for n, _ in model.named_parameters()],
    }


def _rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    times, reads, rows = [], [], 0
    for _ in range(repeats):
        gc.collect()
        r0 = _rchar()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        reads.append(_rchar() - r0)
        rows = len(result)
        del result
    return {"seconds": c.median(times), "read": c.median(reads), "rows": rows}


def bench(path: Path, info: dict[str, Any], repeats: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    import tracer

    k = info["steps"] // 2
    name = info["params"][len(info["params"]) // 2]
    # (label, call, filters for the share of the trace's values the answer holds)
    queries: list[tuple[str, Callable[[], Any], dict[str, Any] | None]] = [
        ("tracer.load(path)", lambda: tracer.load(path), {}),
        ("pyarrow.parquet.read_table(path)", lambda: pq.read_table(path), {}),
        ("pyarrow.parquet.read_table(path).to_pandas()", lambda: pq.read_table(path).to_pandas(), {}),
        (f"tracer.load(path, step={k})", lambda: tracer.load(path, step=k), {"step": k}),
        ('tracer.load(path, kind="grad")', lambda: tracer.load(path, kind="grad"), {"kind": "grad"}),
        (f'tracer.load(path, name="{name}")', lambda: tracer.load(path, name=name), {"name": name}),
        ('tracer.load(path, kind="loss")', lambda: tracer.load(path, kind="loss"), {"kind": "loss"}),
        (
            f'tracer.load(path, kind="grad", name="{name}", step={k})',
            lambda: tracer.load(path, kind="grad", name=name, step=k),
            {"kind": "grad", "name": name, "step": k},
        ),
        (
            "tracer.load(path, columns=[step, kind, name, norm])",
            lambda: tracer.load(path, columns=["step", "kind", "name", "norm"]),
            None,
        ),
    ]
    index = tracer.load(path, columns=["step", "kind", "name", "numel"])
    total = index["numel"].sum()
    results = {}
    for label, fn, filters in queries:
        r = timed(fn, repeats)
        if filters is not None:
            mask = True
            for col, value in filters.items():
                mask = mask & (index[col] == value)
            r["share"] = float(index["numel"][mask].sum() / total) if filters else 1.0
        results[label] = r
    return results


def report(info: dict[str, Any], res: dict[str, Any], args: argparse.Namespace) -> str:
    full = res["tracer.load(path)"]
    arrow = res["pyarrow.parquet.read_table(path)"]
    out = [c.header(f"Load (benchmarks/load.py{' --quick' if args.quick else ''})")]
    out.append(
        f"Trace: {info['bytes'] / 1e9:.2f} GB in {info['files']} files, {info['steps']} steps of an MLP "
        f"4×Linear({args.width},{args.width}), full capture, written in {info['seconds']:.0f} s "
        f"({info['bytes'] / info['seconds'] / 1e6:.0f} MB/s on disk). Median of {args.repeats} runs, "
        "warm page cache.\n"
    )
    rows = []
    for q, r in res.items():
        share = f"{r['share'] * 100:.1f} %" if "share" in r else "–"
        rows.append(
            [
                f"`{q}`",
                r["rows"],
                f"{r['seconds'] * 1e3:.0f}",
                f"{r['seconds'] / full['seconds'] * 100:.1f} %",
                share,
                f"{r['read'] / 1e6:.0f}",
                f"{info['bytes'] / r['seconds'] / 1e6:.0f}",
            ]
        )
    out.append(
        c.table(
            [
                "query",
                "rows",
                "ms",
                "% of full load",
                "answer's share of the values",
                "MB read",
                "throughput, trace MB/s",
            ],
            rows,
        )
    )
    out.append("")
    verdicts = []
    for q, r in res.items():
        if q.startswith("tracer.load(path, ") and "columns" not in q:
            verdicts.append(
                [
                    f"6. `{q}` ≤ 5 % of a full load",
                    c.verdict(r["seconds"] / full["seconds"] * 100, FILTERED_LIMIT * 100, "{:.1f} %"),
                ]
            )
    ratio = arrow["seconds"] / full["seconds"]
    verdicts.append(
        [
            "6. full load throughput ≥ 50 % of `pyarrow.parquet.read_table`",
            f"{'met' if ratio >= THROUGHPUT_LIMIT else '**NOT met**'} ({ratio * 100:.0f} %)",
        ]
    )
    out.append(c.table(["target", "result"], verdicts))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test on a 0.03 GB trace")
    parser.add_argument("--size-gb", type=float, default=None, help="trace size (default 1.0; quick 0.03)")
    parser.add_argument("--width", type=int, default=512, help="MLP width (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per query (default 3; quick 1)")
    parser.add_argument("--keep", type=Path, help="write the trace here and keep it (default: temp, deleted)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    args.size_gb = args.size_gb or (0.03 if args.quick else 1.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="tracer-load-", dir="/tmp"))
    try:
        path = args.keep or tmp / "trace"
        info = generate(path, int(args.size_gb * 1e9), args.width)
        res = bench(path, info, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(info, res, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({"trace": info, "queries": res}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
