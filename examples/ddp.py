"""DistributedDataParallel, traced: each rank writes its own files into one trace directory.

Two CPU processes on the gloo backend, started with torch.multiprocessing.spawn. Trace the
DDP-wrapped model as it is: names have no ``module.`` prefix, ``grad`` rows hold the
all-reduced gradient every rank's optimizer used, ``input`` rows differ per rank, and
``tracer.load`` merges the ranks (column ``rank``).

Run:  python examples/ddp.py [TRACE_DIR]
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

import tracer


def worker(rank: int, world_size: int, init_file: str, path: str, accumulate: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # same initial weights on every rank
        model = torch.nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(100 + rank)  # different data on every rank
        with tracer.trace(model, opt, path=path, max_values=None, overwrite=True):
            for _ in range(3):
                opt.zero_grad()
                for micro in range(accumulate):
                    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
                    if micro < accumulate - 1:
                        with model.no_sync():  # accumulate locally, all-reduce on the last one
                            nn.functional.mse_loss(model(x), y).backward()
                    else:
                        nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    finally:
        dist.destroy_process_group()


def main(path: Path, world_size: int = 2, accumulate: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(worker, args=(world_size, init_file, str(path), accumulate), nprocs=world_size, join=True)
    df = tracer.load(path, kind="grad")
    print(f"Trace in {path}: ranks {sorted(set(df['rank']))}, parameters {sorted(set(df.name))}")
    print(df.groupby(["step", "name", "rank"])["norm"].first().unstack("rank"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("traces") / "ddp")
