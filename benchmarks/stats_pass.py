"""The ways to take min, max, sum, sum of squares and the non-finite count of a CPU tensor,
measured against each other and against one read at the machine's bandwidth.

Candidates, each on float32 tensors of 32k–4M elements (gradients and weights of real
models) and on an update ``after − before``:

- ``stock, torch threads``: tracer without numba as before this change — ``aminmax``, a
  blocked sum, a blocked norm (three reads), with torch's intra-op threads;
- ``stock, serial``: the same inside ``tracer._stats.serial()`` (one thread, this thread only);
- ``numba one pass``: ``tracer._stats`` with numba installed (one read; the update's
  difference taken inside the same read, never written);
- ``torch.compile one pass``: one function returning the four reductions, compiled by
  Inductor (needs a C++ compiler at run time; its compile time is reported);
- ``one read``: ``Tensor.sum`` (torch's threads) — the floor of any statistic.

Each figure is the minimum over repeated calls (``min``) and the median, in µs; rounds of
all candidates interleave, so machine load hits them alike.

    python benchmarks/stats_pass.py
    python benchmarks/stats_pass.py --quick
    python benchmarks/stats_pass.py --busy 1     # with a busy-loop process competing
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c
import torch

from tracer import _stats

SIZES = [1 << 15, 1 << 16, 1 << 18, 1 << 20, 1 << 22]


def _stock(t: torch.Tensor) -> Any:
    kernels = _stats._KERNELS
    _stats._KERNELS = None
    try:
        return _stats._cpu_stats(t)
    finally:
        _stats._KERNELS = kernels


def _stock_threads(t: torch.Tensor) -> Any:
    fn = _stats._set_threads
    _stats._set_threads = None  # serial() becomes a no-op: torch's threads, as before
    try:
        return _stock(t)
    finally:
        _stats._set_threads = fn


def _compiled() -> tuple[Callable[[torch.Tensor], Any] | None, float]:
    try:
        import torch._dynamo

        def four(t: torch.Tensor) -> Any:
            d = t.double()
            return t.amin(), t.amax(), d.sum(), (d * d).sum()

        fn = torch.compile(four, dynamic=True)
        t0 = time.perf_counter()
        fn(torch.randn(5000))
        return fn, time.perf_counter() - t0
    except Exception as exc:  # no C++ compiler, or Inductor unavailable
        print(f"torch.compile unavailable: {exc}", file=sys.stderr)
        return None, float("nan")


def candidates(x: torch.Tensor, y: torch.Tensor, compiled: Any) -> dict[str, Callable[[], Any]]:
    have = _stats._kernels() is not None
    out: dict[str, Callable[[], Any]] = {
        "stock, torch threads": lambda: _stock_threads(x),
        "stock, serial": lambda: _stock(x),
        "update: sub + stock, torch threads": lambda: _stock_threads(y - x),
        "update: sub + stock, serial": lambda: _stock(y - x),
    }
    if have:
        out["numba one pass"] = lambda: _stats._cpu_stats(x)
        out["update: numba fused difference"] = lambda: _stats._diff_stats(y, x)
    if compiled is not None:
        out["torch.compile one pass"] = lambda: compiled(x)
    out["one read (Tensor.sum)"] = lambda: x.sum()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    c.setup_torch()
    t0 = time.perf_counter()
    kernels = _stats._kernels()
    first = time.perf_counter() - t0
    compiled, compile_s = (None, float("nan")) if args.no_compile else _compiled()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        bandwidth = c.read_bandwidth(quick=args.quick)
        rows = []
        calls, rounds = (5, 2) if args.quick else (20, 5)
        for n in SIZES:
            g = torch.Generator().manual_seed(n)
            x = torch.randn(n, generator=g)
            y = x + 1e-3 * torch.randn(n, generator=g)
            cands = candidates(x, y, compiled)
            for fn in cands.values():
                fn()  # compile, warm
            times: dict[str, list[float]] = {k: [] for k in cands}
            for _ in range(rounds):
                for k, fn in cands.items():
                    times[k] += c.timed_steps(fn, calls)
            for k, ts in times.items():
                rows.append([f"{n:,}", k, f"{min(ts) * 1e6:.0f}", f"{c.median(ts) * 1e6:.0f}"])
            rows.append([f"{n:,}", "one read at the measured bandwidth", f"{n * 4 / bandwidth * 1e6:.0f}", "–"])
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    busy = f", {args.busy} busy-loop process(es) competing" if args.busy else ""
    md = [c.header(f"One-pass statistics (benchmarks/stats_pass.py{' --quick' if args.quick else ''}{busy})")]
    md.append(
        f"Read bandwidth {bandwidth / 1e9:.1f} GB/s (`Tensor.sum` of 256 MB). numba "
        + (f"first use (import, compile or cache load): {first:.1f} s" if kernels else "not installed")
        + f"; torch.compile first call {compile_s:.1f} s. µs per call, float32.\n"
    )
    md.append(c.table(["elements", "candidate", "min µs", "median µs"], rows))
    text = "\n".join(md) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
