"""Two gloo ranks on CPU train an FSDP2 (``fully_shard``) model under ``tracer.trace``; rank 0
also trains the same model unsharded on the whole batch, and writes what to compare.

Run by tests/test_fsdp2.py:  python _fsdp2_traced.py OUT_DIR OPTIMIZER [fsdp|block|tp|mixed]
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
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tracer

STEPS, MICRO = 3, 2  # optimizer steps, micro-batches per step (gradient accumulation)


def make_model(parallel: str) -> nn.Module:
    """An MLP (7 hidden units shard unevenly under FSDP2; tensor parallelism needs an even 8),
    or a Transformer block."""
    torch.manual_seed(0)
    if parallel == "block":
        return nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()
    hidden = 8 if parallel == "tp" else 7
    mlp = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    return mlp if parallel == "mixed" else mlp.double()  # mixed: float32 parameters, bf16 compute


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)


def batches(parallel: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x_shape, y_shape = ((4, 3, 8), (4, 3, 8)) if parallel == "block" else ((4, 5), (4, 3))
    dtype = torch.float32 if parallel == "mixed" else torch.float64
    return [(torch.randn(x_shape, generator=g, dtype=dtype), torch.randn(y_shape, generator=g, dtype=dtype))
            for _ in range(STEPS * MICRO)]  # fmt: skip


def train(
    model: nn.Module, opt: torch.optim.Optimizer, rank: int | None, world: int, parallel: str, sharded: bool
) -> None:
    data = batches(parallel)
    split = parallel != "tp"  # FSDP2: each rank a half of the batch; tensor parallelism: all of it
    for step in range(STEPS):
        opt.zero_grad()
        for micro in range(MICRO):
            x, y = data[step * MICRO + micro]
            total = y.numel() * MICRO
            if rank is not None and split:  # this rank's half of the global batch (FSDP2)
                x, y = x.chunk(world)[rank], y.chunk(world)[rank]
            if sharded:
                model.set_requires_gradient_sync(micro == MICRO - 1)
            # the mean over the global batch and the micro-batches; FSDP2 averages the ranks'
            # gradients, so each rank's loss is scaled by the number of ranks
            scale = (world if rank is not None and split else 1) / total
            loss = nn.functional.mse_loss(model(x), y, reduction="sum") * scale
            loss.backward()
        opt.step()


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().clone()
    return out


def shard(model: nn.Module, parallel: str, world: int) -> nn.Module:
    """FSDP2 on every Linear and the root, or tensor parallelism (Colwise then Rowwise)."""
    if parallel == "tp":
        mesh = init_device_mesh("cpu", (world,))
        return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16) if parallel == "mixed" else MixedPrecisionPolicy()
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and not isinstance(layer, nn.modules.linear.NonDynamicallyQuantizableLinear):
            fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def worker(rank: int, world: int, init: str, out: str, optimizer: str, parallel: str) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))  # fmt: skip
        fsdp = parallel != "tp"
        results = {}
        for traced in (True, False):
            model = shard(make_model(parallel), parallel, world)
            opt = make_optimizer(optimizer, model.parameters())
            if traced:
                with tracer.trace(model, opt, path=Path(out) / "traced", verify=True):
                    train(model, opt, rank, world, parallel, sharded=fsdp)
            else:
                train(model, opt, rank, world, parallel, sharded=fsdp)
            results["traced" if traced else "plain"] = full_params(model)
        for key, params in results.items():
            torch.save(params, Path(out) / f"params-{rank}-{key}.pt")
        if rank == 0:  # the same model, unsharded, on the whole batch: what the assembled rows must equal
            single = make_model(parallel)
            opt = make_optimizer(optimizer, single.parameters())
            with tracer.trace(single, opt, path=Path(out) / "single"):
                train(single, opt, None, world, parallel, sharded=False)
            torch.save(full_params(single), Path(out) / "params-single.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        Path(out, f"error-{rank}.txt").write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        parallel = sys.argv[3] if len(sys.argv) > 3 else "fsdp"
        mp.start_processes(worker, args=(2, os.path.join(tmp, "init"), sys.argv[1], sys.argv[2], parallel), nprocs=2,
                           start_method="fork")  # fmt: skip
