"""Two gloo ranks trace into one fresh directory, several times in a row, without overwrite.

Run by tests/test_distributed_destination.py:  python _ddp_destination.py OUT_DIR ROUNDS
Each round uses a new directory (given, and then the default path); a rank that raised
writes its error to OUT_DIR/error-<rank>.txt.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tracer


def worker(rank: int, world_size: int, init_file: str, out: str, rounds: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        os.chdir(out)  # the default path, traces/<Model>-<time>, lands under OUT_DIR
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(nn.Linear(3, 1).double())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        paths = [Path(out) / f"round{i}" for i in range(rounds)] + [None]
        for path in paths:
            with tracer.trace(model, opt, path=path) as run:
                for _ in range(2):
                    opt.zero_grad()
                    model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
                    opt.step()
            (Path(out) / f"path-{rank}-{len(os.listdir(out))}.txt").write_text(str(Path(run.path).resolve()))
        # a directory per rank: nothing to coordinate, each rank prepares its own
        with tracer.trace(model, opt, path=Path(out) / f"own{rank}"):
            opt.zero_grad()
            model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
            opt.step()
        # the same path again without overwrite: every rank is refused, none hangs
        try:
            tracer.trace(model, opt, path=paths[0])
        except FileExistsError as exc:
            (Path(out) / f"refused-{rank}.txt").write_text(str(exc))
        dist.barrier()
    except BaseException:
        (Path(out) / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    out, rounds = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "init"), out, rounds), nprocs=2, join=True)
