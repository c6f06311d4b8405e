"""Micro-benchmarks of the training-thread pieces of tracing, against the plain ops.

Minimum and median of many runs of each piece on the tensors W1–W3 produce (a busy
machine inflates medians; the minimum is the uncontended cost), and the accuracy of
tracer's statistics against float64 references on hard inputs (large mean, tiny spread;
NaN/Inf). To try a faster candidate, add it to the table next to the piece it replaces.

    python benchmarks/micro.py
    python benchmarks/micro.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import _common as c
import torch

from tracer._stats import _stats
from tracer._tensors import capture


def bench(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    times = c.timed_steps(fn, n)
    return min(times), c.median(times)


def accuracy() -> list[list[str]]:
    torch.manual_seed(0)
    cases = {
        "randn 1M": torch.randn(1 << 20),
        "1 + 1e-4·randn (LayerNorm-like)": 1 + 1e-4 * torch.randn(1 << 20),
        "1e4 + randn": 1e4 + torch.randn(1 << 20),
        "relu(randn)": torch.relu(torch.randn(1 << 20)),
        "float64 update ~1e-6": 1e-6 * torch.randn(1 << 20, dtype=torch.float64),
        "with NaN": torch.tensor([1.0, float("nan"), 3.0]),
        "with Inf": torch.tensor([1.0, float("inf"), 3.0]),
    }
    rows = []
    for label, t in cases.items():
        ref64 = t.double()
        ref = torch.tensor(
            [
                ref64.mean(),
                ref64.std(correction=0),
                ref64.min(),
                ref64.max(),
                torch.linalg.vector_norm(ref64),
                (~torch.isfinite(ref64)).sum(),
            ],
            dtype=torch.float64,
        )
        row = [label]
        g, r = _stats(t).tolist(), ref.tolist()
        if not all(map(math.isfinite, r)):
            same = all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(g[2:4] + g[5:], r[2:4] + r[5:]))
            row.append("min/max/nonfinite " + ("exact" if same else "WRONG"))
        else:
            scale = max(abs(r[0]), r[1])  # the mean's error relative to the spread, or to itself
            errs = [abs(g[0] - r[0]) / scale, abs(g[1] - r[1]) / r[1], abs(g[4] - r[4]) / r[4]]
            row.append(f"{max(errs):.1e}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = 20 if args.quick else 100
    c.setup_torch()
    p = torch.randn(1024, 1024)
    before = p.clone()
    p += 1e-3 * torch.randn_like(p)
    act = torch.randn(64, 1024)
    conv = torch.randn(32, 32, 32, 32)
    small = torch.randn(1024)
    update64, update32 = p.double() - before.double(), p - before
    buf, snap = torch.empty_like(update64), torch.empty_like(p)
    pieces: dict[str, Callable[[], Any]] = {
        "_stats, 1M float32 (W1 weight/grad/state)": lambda: _stats(p),
        "_stats, 64×1024 float32 (W1 activation)": lambda: _stats(act),
        "_stats, 32×32×32×32 float32 (W2 conv activation)": lambda: _stats(conv),
        "torch.var_mean, 1M float32": lambda: torch.var_mean(p, correction=0),
        "torch.aminmax, 1M float32": lambda: torch.aminmax(p),
        "Tensor.sum, 1M float32": lambda: p.sum(),
        "linalg.vector_norm, 1M float32": lambda: torch.linalg.vector_norm(p),
        "update before 447eb1e: p.to(f64) − before.to(f64), 1M": lambda: p.to(torch.float64) - before.to(torch.float64),
        "_stats of that float64 update": lambda: _stats(update64),
        "exact float64 update into a reused buffer: buf.copy_(p).sub_(before)": lambda: buf.copy_(p).sub_(before),
        "update for statistics: torch.sub(p, before, out=snapshot) in float32": lambda: torch.sub(p, before, out=snap),
        "_stats of the float32 update": lambda: _stats(update32),
        "snapshot before 447eb1e: p.clone(), 1M": lambda: p.clone(),
        "snapshot since 447eb1e: buf.copy_(p), 1M": lambda: snap.copy_(p),
        "capture(1024 values, max_values=1024)": lambda: capture(small, 1024),
        "capture(1024 values, max_values=0) (stats)": lambda: capture(small, 0),
    }
    rows = []
    for label, fn in pieces.items():
        lo, med = bench(fn, n)
        rows.append([label, f"{lo * 1e3:.3f}", f"{med * 1e3:.3f}"])
    print(c.header("Micro-benchmarks (benchmarks/micro.py" + (" --quick)" if args.quick else ")")))
    print(c.table(["piece", "min ms", "median ms"], rows))
    print()
    print(
        c.table(
            ["input", "max rel. error of _stats (mean, std, norm; mean relative to max(abs(mean), std))"], accuracy()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
