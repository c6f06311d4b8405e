"""FSDP2 (``fully_shard``), traced: each rank records its shard, ``assemble=True`` reads whole tensors.

Two CPU processes on the gloo backend. Every ``grad``, ``param``, ``update`` and ``state``
row of a sharded parameter holds the rank's shard, with ``global_shape``, ``shard_offset``
and ``placements`` saying where it sits; ``tracer.load(path, assemble=True)`` places the
shards into the whole tensors and combines their statistics exactly, and the report checks
every update on the whole tensors. ``verify=True`` also checks each shard's update while
training.

Run:  python examples/fsdp.py [TRACE_DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

import tracer

MICRO_BATCHES = 2


def worker(rank: int, world_size: int, init_file: str, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank, then sharded
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        torch.manual_seed(100 + rank)  # different data on every rank
        with tracer.trace(model, opt, path=path, max_values=None, overwrite=True, verify=True):
            for _ in range(3):
                opt.zero_grad()
                for micro in range(MICRO_BATCHES):
                    model.set_requires_gradient_sync(micro == MICRO_BATCHES - 1)  # reduce on the last
                    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
                    nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    finally:
        dist.destroy_process_group()


def main(path: Path, world_size: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(world_size, init_file, str(path)), nprocs=world_size, join=True)
    shards = tracer.load(path, kind="grad", step=0)
    print(f"Trace in {path}: one grad row per rank and parameter at step 0:")
    print(shards[["name", "rank", "shape", "global_shape", "shard_offset", "placements"]].to_string(index=False))
    whole = tracer.load(path, kind="grad", assemble=True)
    print("\nAssembled: the whole gradients' norms per step")
    print(whole.pivot(index="step", columns="name", values="norm"))
    print("\n" + tracer.report(path).summary())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("traces") / "fsdp")
