"""Tracing cost on a model of many small tensors (issue 15, item 1), against the floor.

The model: ``--blocks`` (2,500) ``nn.Linear(4, 4)`` in a ``ModuleList``, applied in
sequence with ``torch.tanh`` between (5,000 parameter tensors of 16 or 4 elements), batch 8,
MSE, ``torch.optim.Adam`` with its defaults; the step is ``zero_grad``, forward, loss,
``backward``, ``step``. Modes: untraced; tracer's default (``max_values=1024``); statistics
only (``max_values=0``); and *floor*: the hook set tracer installs (``tracer/_dispatch.py``:
global module forward pre-/post-hooks, optimizer step pre-/post-hooks, a patched
``torch.autograd.backward``, one tensor hook per module output that requires grad) with
bodies that return at once: what any tracer built on those hooks pays before doing work.

Blocks alternate U T₁ U T₂ U T₃ … in one process as in ``loops.py`` (traced order rotating,
two untimed untraced steps after each traced block, first step of a block dropped); a
block's ratio is its median step ÷ the mean of the two untraced medians around it; the
table gives the median over rounds and the best round. Targets (issue 15): default ≤ 2×
untraced and ≤ 1.5× the floor.

    python benchmarks/small_tensors.py                    # 2,500 blocks, 3 rounds × 3 steps
    python benchmarks/small_tensors.py --blocks 500 --rounds 5
    python benchmarks/small_tensors.py --busy 1           # with a competing CPU load
    python benchmarks/small_tensors.py --profile default  # cProfile of a few traced steps
    python benchmarks/small_tensors.py --quick            # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c
import torch

import tracer
from tracer import _dispatch

MODES = ("default", "stats", "floor")
MAX_VALUES = {"default": tracer.DEFAULT_MAX_VALUES, "stats": 0}
TARGET_UNTRACED, TARGET_FLOOR = 2.0, 1.5


class Chain(torch.nn.Module):
    """``blocks`` × ``Linear(4, 4)`` applied in sequence, ``tanh`` between."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < last:
                x = torch.tanh(x)
        return x


def workload(blocks: int) -> c.Workload:
    if blocks < 1:
        raise ValueError(f"--blocks must be at least 1, got {blocks}")
    model = Chain(blocks)
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(8, 4), torch.randn(8, 4)

    def step() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()

    n = sum(1 for _ in model.parameters())
    return c.Workload("small", f"{blocks:,} × Linear(4, 4) + tanh, {n:,} parameters, b8, Adam, MSE", model, opt, step)


# ----------------------------------------------------------------------------- the floor


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Whatever ``tracer._dispatch`` wraps its hooks with now (``torch.compiler.disable``
    once dynamo is imported), so the floor pays what tracer's hooks pay for it."""
    wrap = getattr(_dispatch, "_eager", None)
    return wrap(fn) if wrap is not None else fn


def _same(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _with_kwargs(modules: list[torch.nn.Module], hook_id: int, on: bool) -> None:
    """As tracer does: the global pre-hook gets the keyword inputs of its model's modules."""
    for m in modules:
        flags = getattr(m, "_forward_pre_hooks_with_kwargs", None)
        if isinstance(flags, dict):
            if on:
                flags[hook_id] = True
            else:
                flags.pop(hook_id, None)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class NoopHooks:
    """Tracer's hook set with bodies that do nothing, installed for a ``with`` block.

    The forward hook does the one thing tracer's must do to see activation gradients: it
    registers a (no-op) tensor hook on each output that requires grad.

    >>> w = workload(3)
    >>> with NoopHooks(w.model):
    ...     w.step()
    """

    def __init__(self, model: torch.nn.Module, wrap: bool = True) -> None:
        self.modules = list(model.modules())
        self.eager = _eager if wrap else _same
        self.handles: list[Any] = []
        self.tensor_handles: list[Any] = []
        self.original: Callable[..., Any] | None = None

    def _forward(self, module: torch.nn.Module, args: tuple, *rest: Any) -> None:
        if len(rest) != 2 or not torch.is_grad_enabled():
            return
        output = rest[1]
        for t in (output,) if isinstance(output, torch.Tensor) else output if isinstance(output, (tuple, list)) else ():
            if isinstance(t, torch.Tensor) and t.requires_grad:
                self.tensor_handles.append(t.register_hook(self.eager(_nothing)))

    def _step_post(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.tensor_handles.clear()  # their tensors are gone with the step's graph

    def __enter__(self) -> NoopHooks:
        from torch.nn.modules import module as nn_hooks
        from torch.optim import optimizer as optim_hooks

        self.handles = [
            nn_hooks.register_module_forward_pre_hook(self.eager(_nothing)),
            nn_hooks.register_module_forward_hook(self.eager(self._forward), with_kwargs=True, always_call=True),
            optim_hooks.register_optimizer_step_pre_hook(_nothing),
            optim_hooks.register_optimizer_step_post_hook(self._step_post),
        ]
        _with_kwargs(self.modules, self.handles[0].id, True)
        original = self.original = torch.autograd.backward

        @functools.wraps(original)
        def backward(*args: Any, **kwargs: Any) -> Any:
            return original(*args, **kwargs)

        torch.autograd.backward = backward
        return self

    def __exit__(self, *exc: Any) -> None:
        _with_kwargs(self.modules, self.handles[0].id, False)
        for h in [*self.tensor_handles, *self.handles]:
            h.remove()
        self.tensor_handles, self.handles = [], []
        if self.original is not None:
            torch.autograd.backward = self.original
            self.original = None


# ----------------------------------------------------------------------------- measuring


def rows_per_step(path: Path) -> float:
    df = tracer.load(path, columns=["step"])
    return len(df) / max(df["step"].nunique(), 1)


def block(w: c.Workload, mode: str, steps: int, tmp: Path, n: int) -> dict[str, Any]:
    """Wall seconds of each step but the first; ``whole``/``cpu``: the ``with`` block's wall
    and process CPU seconds (set-up, every step, the writer draining at exit) ÷ steps."""
    path = tmp / f"{mode}-{n}"
    ctx: Any = contextlib.nullcontext()
    if mode.startswith("floor"):
        ctx = NoopHooks(w.model, wrap=mode == "floor")
    elif mode != "untraced":
        ctx = tracer.trace(w.model, w.optimizer, path=path, max_values=MAX_VALUES[mode])
    t0, p0 = time.perf_counter(), time.process_time()
    with ctx:
        times = c.timed_steps(w.step, steps)[1:]
    out = {"times": times, "whole": (time.perf_counter() - t0) / steps, "cpu": (time.process_time() - p0) / steps}
    if mode in MAX_VALUES:
        out["rows"] = rows_per_step(path)
        shutil.rmtree(path)
    return out


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    c.setup_torch()
    w = workload(args.blocks)
    c.timed_steps(w.step, args.warmup)
    modes = [*MODES, "floor-bare"] if args.bare_floor else list(MODES)
    for mode in modes:
        block(w, mode, 2, tmp, -1)  # imports, writer start, first calls
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    per_round: dict[str, list[float]] = {m: [] for m in modes}
    traced: dict[str, list[float]] = {m: [] for m in modes}
    untraced: list[float] = []
    rows: dict[str, float] = {}
    whole: dict[str, list[float]] = {m: [] for m in ["untraced", *modes]}
    cpu: dict[str, list[float]] = {m: [] for m in ["untraced", *modes]}
    before = c.median(block(w, "untraced", args.steps, tmp, 0)["times"])
    for r in range(args.rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            b = block(w, mode, args.steps, tmp, r)
            if "rows" in b:
                rows[mode] = b["rows"]
            c.timed_steps(w.step, 2)
            u = block(w, "untraced", args.steps, tmp, r)
            after = c.median(u["times"])
            for key, into in (("whole", whole), ("cpu", cpu)):
                into[mode].append(b[key])
                into["untraced"].append(u[key])
            traced[mode].append(c.median(b["times"]))
            ratios[mode].append(traced[mode][-1] / ((before + after) / 2))
            untraced.append(after)
            print(f"  round {r} {mode}: {traced[mode][-1] * 1e3:.0f} ms, ratio {ratios[mode][-1]:.2f}", file=sys.stderr)
            before = after
        for m in modes:
            per_round[m].append(ratios[m][-1] / ratios["floor"][-1])
    return {
        "blocks": args.blocks,
        "description": w.description,
        "parameters": sum(1 for _ in w.model.parameters()),
        "untraced_s": c.median(untraced),
        "whole_s": {m: c.median(v) for m, v in whole.items()},
        "cpu_s": {m: c.median(v) for m, v in cpu.items()},
        "traced_s": {m: c.median(v) for m, v in traced.items()},
        "ratios": ratios,
        "over_floor": per_round,
        "rows_per_step": rows,
        "hooks_wrapped": "torch._dynamo" in sys.modules,
    }


def _x(xs: list[float]) -> str:
    return f"{c.median(xs):.2f}× ({min(xs):.2f}×)"


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    busy = f", {args.busy} busy-loop process(es) running" if args.busy else ""
    out = [c.header(f"Many small tensors (benchmarks/small_tensors.py{' --quick' if args.quick else ''}{busy})")]
    wrapped = "wrapped in `torch.compiler.disable`" if r["hooks_wrapped"] else "not wrapped (dynamo not imported)"
    out.append(
        f"{r['description']}. {args.rounds} rounds × {args.steps} steps per block (first dropped); "
        f"ratio = block median ÷ untraced blocks around it, median over rounds (best round in brackets); "
        f"÷ floor = the ratio ÷ the floor's ratio in the same round. Floor = tracer's hooks doing "
        f"nothing, {wrapped}. Targets: default ≤ {TARGET_UNTRACED:g}× untraced, ≤ {TARGET_FLOOR:g}× the floor.\n"
    )
    d, f = r["ratios"]["default"], r["ratios"]["floor"]
    overhead = (c.median(d) - 1) / max(c.median(f) - 1, 1e-9)
    out.append(
        c.table(
            [
                "untraced ms",
                "default",
                "stats only",
                "floor",
                "default ÷ floor",
                "stats ÷ floor",
                "rows/step",
                f"default ≤ {TARGET_UNTRACED:g}×",
                f"÷ floor ≤ {TARGET_FLOOR:g}×",
            ],
            [
                [
                    f"{r['untraced_s'] * 1e3:.1f}",
                    _x(d),
                    _x(r["ratios"]["stats"]),
                    _x(f),
                    _x(r["over_floor"]["default"]),
                    _x(r["over_floor"]["stats"]),
                    f"{r['rows_per_step'].get('default', 0):,.0f}",
                    c.verdict(c.median(d), TARGET_UNTRACED),
                    c.verdict(c.median(r["over_floor"]["default"]), TARGET_FLOOR),
                ]
            ],
        )  # fmt: skip
    )
    if "floor-bare" in r["ratios"]:
        out.append(f"\nFloor without `torch.compiler.disable` around the hooks: {_x(r['ratios']['floor-bare'])}.")
    wu, cu = r["whole_s"]["untraced"], r["cpu_s"]["untraced"]
    out.append(
        "\nWhole block (set-up, every step, writer drained at exit) ÷ steps, and process CPU "
        "(writer threads included) ÷ steps, medians over rounds:\n"
    )
    out.append(
        c.table(
            ["mode", "whole block ms/step", "× untraced", "CPU ms/step", "× untraced"],
            [
                [
                    m,
                    f"{r['whole_s'][m] * 1e3:.0f}",
                    f"{r['whole_s'][m] / wu:.2f}×",
                    f"{r['cpu_s'][m] * 1e3:.0f}",
                    f"{r['cpu_s'][m] / cu:.2f}×",
                ]
                for m in r["whole_s"]
            ],
        )  # fmt: skip
    )
    ms = " · ".join(f"{m} {s * 1e3:.0f} ms" for m, s in r["traced_s"].items())
    out.append(
        f"\nMedian traced steps: {ms}. Tracer's own time over the floor's own time "
        f"(default − 1) ÷ (floor − 1) = {overhead:.1f}.\n"
    )
    return "\n".join(out)


def profile(args: argparse.Namespace, tmp: Path) -> str:
    """cProfile of a few steps in ``args.profile`` mode: the top functions by own time."""
    c.setup_torch()
    w = workload(args.blocks)
    c.timed_steps(w.step, 1)
    steps = args.steps
    ctx: Any = (
        NoopHooks(w.model, wrap=args.profile == "floor")
        if args.profile.startswith("floor")
        else tracer.trace(w.model, w.optimizer, path=tmp / "prof", max_values=MAX_VALUES[args.profile])
    )
    with ctx:
        c.timed_steps(w.step, 1)
        prof = cProfile.Profile()
        prof.enable()
        c.timed_steps(w.step, steps)
        prof.disable()
    if args.profile_out:
        prof.dump_stats(args.profile_out)
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.profile_top]  # type: ignore[attr-defined]
    lines = [f"cProfile, {w.description}, {args.profile}, {steps} steps: {total / steps:.3f} s own time per step"]
    lines += [
        f"  own {v[2] * 1e3 / steps:8.2f} ms/step  cum {v[3] * 1e3 / steps:8.2f}  {v[1] // steps:7d} calls/step  "
        f"{Path(k[0]).name}:{k[1]} {k[2]}"
        for k, v in top
    ]
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(r"tracer", 15)
    return "\n".join(lines) + "\n\ntracer's functions by cumulative time:\n" + buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=2500, help="Linear(4, 4) blocks (2 parameters each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per block, the first one dropped")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes to run meanwhile")
    parser.add_argument("--quick", action="store_true", help="100 blocks, 1 round × 2 steps: a smoke test")
    parser.add_argument("--bare-floor", action="store_true", help="also the floor without torch.compiler.disable")
    parser.add_argument(
        "--profile", choices=[*MODES, "floor-bare"], help="cProfile --steps steps in this mode (stderr), no table"
    )
    parser.add_argument("--profile-out", metavar="FILE", help="with --profile: also dump the pstats to FILE")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--markdown")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.rounds, args.steps, args.warmup = 100, 1, 2, 1
    if args.steps < 2 or args.rounds < 1:
        parser.error(f"--steps must be ≥ 2 (the first is dropped) and --rounds ≥ 1, got {args.steps}, {args.rounds}")
    c.THREADS = args.threads
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        with tempfile.TemporaryDirectory(prefix="tracer-small-") as tmp:
            if args.profile:
                print(profile(args, Path(tmp)), file=sys.stderr)
                return 0
            t0 = time.perf_counter()
            result = bench(args, Path(tmp))
            print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    md = report(result, args)
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
