"""The cost of ``capture_ops=True``: W1–W3 and a forward full of functional operations, each
untraced, traced (``capture_ops=False``) and traced with ``capture_ops=True``.

Blocks of steps in the three modes alternate in one process (the order rotates every
round, after a warm-up), so drift in machine load hits every mode alike. Reported per
workload: the median time per step of each mode, the ratio of ``capture_ops=True`` to the
untraced run and to ``capture_ops=False``, and the ``op`` rows per step.

    python benchmarks/ops.py            # the numbers in benchmarks/README.md
    python benchmarks/ops.py --quick    # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as c
import torch

import tracer

MODES = ("untraced", "traced", "ops")


class Functional(torch.nn.Module):
    """A residual MLP whose forward is mostly functional calls (TorchLens's kind of model)."""

    def __init__(self, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = torch.nn.functional.gelu(layer(x))
            x = torch.nn.functional.layer_norm(x + h * 0.5, x.shape[-1:])
        return x.flatten(1).softmax(-1)


def functional() -> c.Workload:
    """W4: the Functional model, batch 64, SGD, MSE."""
    model = Functional()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 256), torch.randn(64, 256)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    return c.Workload("W4", "residual MLP 4×(Linear 256, gelu, add, mul, layer_norm), b64, SGD", model, opt, step)


WORKLOADS = {**c.WORKLOADS, "W4": functional}


def run_block(w: c.Workload, mode: str, steps: int, tmp: Path, n: int) -> dict[str, Any]:
    """One block of ``steps`` steps in ``mode``: per-step times (the first dropped), op rows."""
    path = tmp / f"{w.name}-{mode}-{n}"
    if mode == "untraced":
        times = c.timed_steps(w.step, steps)
    else:
        with tracer.trace(w.model, w.optimizer, path=path, capture_ops=mode == "ops"):
            times = c.timed_steps(w.step, steps)
    block: dict[str, Any] = {"times": times[1:] if steps >= 3 else times}
    if mode != "untraced":
        df = tracer.load(path, columns=["step", "kind"])
        block["op_rows"] = int((df.kind == "op").sum()) / max(df.step.nunique(), 1)
        shutil.rmtree(path)
    return block


def bench_workload(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    c.setup_torch()
    w = WORKLOADS[name]()
    c.timed_steps(w.step, args.warmup)
    for mode in MODES[1:]:
        run_block(w, mode, 2, tmp, -1)  # imports, writer thread, first files
    blocks: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES[r % 3 :] + MODES[: r % 3]:
            blocks[mode].append(run_block(w, mode, args.steps, tmp, r))
    med = {m: c.median([t for b in bs for t in b["times"]]) for m, bs in blocks.items()}
    result = {
        "workload": name,
        "description": w.description,
        "ms": {m: med[m] * 1e3 for m in MODES},
        "ops_to_untraced": med["ops"] / med["untraced"],
        "ops_to_traced": med["ops"] / med["traced"],
        "traced_to_untraced": med["traced"] / med["untraced"],
        "op_rows_per_step": blocks["ops"][0]["op_rows"],
    }
    print(
        f"  {name}: untraced {result['ms']['untraced']:.1f} ms, traced {result['ms']['traced']:.1f} ms, "
        f"capture_ops {result['ms']['ops']:.1f} ms ({result['ops_to_untraced']:.2f}× untraced, "
        f"{result['ops_to_traced']:.2f}× traced)",
        file=sys.stderr,
    )
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [c.header("capture_ops (benchmarks/ops.py" + (" --quick)" if args.quick else ")"))]
    out.append(
        f"{args.rounds} rounds of one block of {args.steps} steps per mode (untraced, traced with "
        "`capture_ops=False`, traced with `capture_ops=True`; default `max_values`), in one process, "
        "the order rotating; ms = median wall time per step, the first step of each block dropped.\n"
    )
    rows = [
        [
            r["workload"],
            f"{r['ms']['untraced']:.1f}",
            f"{r['ms']['traced']:.1f} ({r['traced_to_untraced']:.2f}×)",
            f"{r['ms']['ops']:.1f}",
            f"{r['ops_to_untraced']:.2f}×",
            f"{r['ops_to_traced']:.2f}×",
            f"{r['op_rows_per_step']:.0f}",
        ]
        for r in results
    ]
    headers = ["workload", "untraced ms", "traced ms (×)", "capture_ops ms", "÷ untraced", "÷ traced", "op rows/step"]
    out.append(c.table(headers, rows))
    out.append("\n" + "\n".join(f"- {r['workload']}: {r['description']}" for r in results))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few rounds and steps")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    args.rounds, args.steps, args.warmup = (2, 3, 1) if args.quick else (6, 10, 5)
    tmp = Path(tempfile.mkdtemp(prefix="tracer-ops-"))
    try:
        results = [bench_workload(name, args, tmp) for name in args.workloads]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(results, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
