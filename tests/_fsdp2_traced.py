"""Two gloo ranks on CPU train an FSDP2 (``fully_shard``) model under ``tracer.trace``; rank 0
also trains the same model unsharded on the whole batch, and writes what to compare.

Run by tests/test_fsdp2.py:  python _fsdp2_traced.py OUT_DIR OPTIMIZER
Each rank writes OUT_DIR/params-<rank>-{traced,plain}.pt (the full parameters after training),
or OUT_DIR/error-<rank>.txt. The traces are OUT_DIR/traced (FSDP2, verify=True) and
OUT_DIR/single (one process, the same global batch).
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tracer

STEPS, MICRO = 3, 2  # optimizer steps, micro-batches per step (gradient accumulation)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64))
            for _ in range(STEPS * MICRO)]  # fmt: skip


def train(model: nn.Module, opt: torch.optim.Optimizer, rank: int | None, world: int, sharded: bool) -> None:
    data = batches()
    for step in range(STEPS):
        opt.zero_grad()
        for micro in range(MICRO):
            x, y = data[step * MICRO + micro]
            if rank is not None:  # this rank's half of the global batch
                x, y = x.chunk(world)[rank], y.chunk(world)[rank]
            if sharded:
                model.set_requires_gradient_sync(micro == MICRO - 1)
            # the mean over the global batch and the micro-batches; FSDP2 averages the ranks'
            # gradients, so each rank's loss is scaled by the number of ranks
            scale = (world if rank is not None else 1) / (4 * 3 * MICRO)
            loss = nn.functional.mse_loss(model(x), y, reduction="sum") * scale
            loss.backward()
        opt.step()


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().clone()
    return out


def worker(rank: int, world: int, init: str, out: str, optimizer: str) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))  # fmt: skip
        results = {}
        for traced in (True, False):
            model = make_model()
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = make_optimizer(optimizer, model.parameters())
            if traced:
                with tracer.trace(model, opt, path=Path(out) / "traced", verify=True):
                    train(model, opt, rank, world, sharded=True)
            else:
                train(model, opt, rank, world, sharded=True)
            results["traced" if traced else "plain"] = full_params(model)
        for key, params in results.items():
            torch.save(params, Path(out) / f"params-{rank}-{key}.pt")
        if rank == 0:  # the same model, unsharded, on the whole batch: what the assembled rows must equal
            single = make_model()
            opt = make_optimizer(optimizer, single.parameters())
            with tracer.trace(single, opt, path=Path(out) / "single"):
                train(single, opt, None, world, sharded=False)
            torch.save(full_params(single), Path(out) / "params-single.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        Path(out, f"error-{rank}.txt").write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(worker, args=(2, os.path.join(tmp, "init"), sys.argv[1], sys.argv[2]), nprocs=2,
                           start_method="fork")  # fmt: skip
