"""Two gloo ranks on CPU: every DTensor of FSDP2 and tensor-parallel training, read by
tracer._sharded and assembled by tracer._assemble, equals the full tensor.

Run by tests/test_fsdp2.py:  python _fsdp2_worker.py OUT_DIR
Each rank writes OUT_DIR/checked-<rank>.json (what it checked) or OUT_DIR/error-<rank>.txt.
The ranks are forked from this process after torch.distributed is imported once (on a
busy machine importing torch takes most of the run).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracer._assemble import assemble
from tracer._sharded import module_type, original_name, shard_of
from tracer._stats import _numpy_stats
from tracer._tensors import capture, finish


class Ops(TorchDispatchMode):
    """The ops dispatched inside the block (a collective would show up as c10d)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.seen.add(str(func.namespace))
        return func(*args, **(kwargs or {}))


def row_of(kind: str, name: str, part: str, tensor: torch.Tensor, max_values: int | None) -> dict:
    """The row tracer would write for ``tensor`` (its local shard where it is a DTensor)."""
    s = shard_of(tensor)
    assert s is not None, f"{kind} {name} is not a DTensor"
    assert type(s.local) is torch.Tensor
    c = capture(s.local, max_values)
    (mean, std, lo, hi, norm, nonfinite), values = finish(c)
    return dict(
        step=0, seq=0, kind=kind, name=original_name(name), call=0, part=part, shape=list(c.shape),
        dtype=c.dtype, numel=c.numel, mean=mean, std=std, min=lo, max=hi, norm=norm, nonfinite=nonfinite,
        values=None if values is None else np.asarray(values, dtype=np.float64), rank=dist.get_rank(),
        global_shape=list(s.global_shape), shard_offset=None if s.shard_offset is None else list(s.shard_offset),
        placements=s.placements,
    )  # fmt: skip


def tensors(model: nn.Module, opt: torch.optim.Optimizer):
    """(kind, name, part, tensor) of every param, grad and DTensor optimizer state."""
    for name, p in model.named_parameters():
        yield "param", name, "", p
        yield "grad", name, "", p.grad
        for key, value in opt.state[p].items():
            if isinstance(value, DTensor):
                yield "state", name, key, value


def check(model: nn.Module, opt: torch.optim.Optimizer, label: str, out: dict) -> None:
    """Every DTensor placed from all ranks' shards equals its full_tensor(); assembled rows too."""
    items = list(tensors(model, opt))
    with Ops() as ops:  # reading shards: no collective, on one rank alone
        records = [row_of(k, n, part, t, None) for k, n, part, t in items]
        stats_only = [row_of(k, n, part, t, 0) for k, n, part, t in items]
    assert not {"c10d", "_c10d_functional", "c10d_functional"} & ops.seen, ops.seen
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (records, stats_only))
    full = {(k, n, part): t.full_tensor().detach().double() for k, n, part, t in items}  # collectives
    for (k, n, part), expected in full.items():  # placed by hand: each shard once, nothing left out
        placed = torch.zeros(expected.shape, dtype=torch.float64)
        count = torch.zeros(expected.shape, dtype=torch.int64)
        seen = set()
        for recs, _ in everyone:
            r = next(r for r in recs if (r["kind"], r["name"], r["part"]) == (k, n, part))
            assert r["global_shape"] == list(expected.shape)
            key = (tuple(r["shard_offset"]), tuple(r["shape"]))
            if key in seen:
                continue
            seen.add(key)
            box = tuple(slice(o, o + s) for o, s in zip(r["shard_offset"], r["shape"]))
            placed[box] += torch.as_tensor(r["values"]).reshape(r["shape"])
            count[box] += 1
        assert bool((count == 1).all()), (label, k, n, part, count)
        assert torch.equal(placed, expected), (label, k, n, part)
    for which in (0, 1):  # with values, then statistics only
        frame = pd.DataFrame([r for rank in everyone for r in rank[which]])
        frame["nonfinite"] = frame["nonfinite"].astype("Int64")
        whole = assemble(frame)
        assert len(whole) == len(full), (len(whole), len(full))
        for row in whole.itertuples():
            expected = full[(row.kind, row.name, row.part)].reshape(-1).numpy()
            assert pd.isna(row.rank) and list(row.shape) == list(full[(row.kind, row.name, row.part)].shape)
            if which == 0:
                assert np.array_equal(expected, row.values), (label, row.kind, row.name)
            else:
                assert row.values is None
            mean, std, lo, hi, norm, nonfinite = _numpy_stats(expected)
            got = (row.mean, row.std, row.min, row.max, row.norm, row.nonfinite)
            scale = 1e-12 * max(abs(lo), abs(hi))  # a mean near 0 is a sum that cancels: absolute rounding
            assert np.allclose(got, (mean, std, lo, hi, norm, nonfinite), rtol=1e-12, atol=scale), (
                label, row.kind, row.name, got, (mean, std, lo, hi, norm, nonfinite),
            )  # fmt: skip
    padded = [t for *_, t in items if t._local_tensor.untyped_storage().nbytes() > shard_of(t).local.nbytes]
    out[label] = dict(
        tensors=len(full), empty_shards=sum(1 for r in records if 0 in r["shape"]), padded=len(padded),
        placements=sorted({r["placements"] for r in records}),
    )  # fmt: skip


def train(model: nn.Module, opt: torch.optim.Optimizer, make_input, steps: int = 2, accumulate: int = 1) -> None:
    for _ in range(steps):
        opt.zero_grad()
        for i in range(accumulate):
            if hasattr(model, "set_requires_gradient_sync"):
                model.set_requires_gradient_sync(i == accumulate - 1)
            model(make_input()).square().mean().backward()
            if i < accumulate - 1 and hasattr(model, "set_requires_gradient_sync"):
                # FSDP2 keeps unsharded gradients until the syncing pass: no sharded grad yet
                assert all(p.grad is None for p in model.parameters())
        opt.step()


def worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    checked: dict = {}
    try:
        torch.set_num_threads(1)
        mesh = init_device_mesh("cpu", (world_size,))
        torch.manual_seed(0)  # the same initial model on every rank
        seq = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
        names = [n for n, _ in seq.named_parameters()]
        for layer in (seq[0], seq[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(seq, mesh=mesh)
        assert names == [n for n, _ in seq.named_parameters()]  # FSDP2 changes no names
        assert "FSDPSequential" == type(seq).__name__  # but the classes: module_type undoes that
        assert ["Sequential", "Linear", "Tanh", "Linear"] == [module_type(m) for m in seq.modules()]
        opt = torch.optim.AdamW(seq.parameters(), lr=0.1)
        torch.manual_seed(1 + rank)  # each rank its own batch
        train(seq, opt, lambda: torch.randn(4, 3, dtype=torch.float64), accumulate=2)
        check(seq, opt, "fsdp2 Sequential AdamW", checked)

        torch.manual_seed(0)
        block = nn.TransformerEncoderLayer(6, 2, dim_feedforward=7, dropout=0.0, batch_first=True).double()
        fully_shard(block, mesh=mesh)
        opt = torch.optim.SGD(block.parameters(), lr=0.05, momentum=0.9)
        torch.manual_seed(1 + rank)
        train(block, opt, lambda: torch.randn(2, 3, 6, dtype=torch.float64))
        check(block, opt, "fsdp2 TransformerEncoderLayer SGD momentum", checked)

        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4)).double()
        parallelize_module(mlp, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        opt = torch.optim.Adam(mlp.parameters(), lr=0.01)
        torch.manual_seed(0)  # tensor parallel: the same batch on every rank
        train(mlp, opt, lambda: torch.randn(3, 4, dtype=torch.float64))
        check(mlp, opt, "tensor parallel MLP Adam", checked)

        torch.manual_seed(0)  # mixed precision: what a forward hook and the optimizer see
        half = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        dtypes: dict = {}
        half[0].register_forward_hook(lambda m, i, o: dtypes.update(input=str(i[0].dtype), output=str(o.dtype)))
        fully_shard(half, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16))
        opt = torch.optim.SGD(half.parameters(), lr=0.1)
        train(half, opt, lambda: torch.randn(2, 3), steps=1)
        p = half[0].weight
        dtypes.update(param=str(shard_of(p).local.dtype), grad=str(shard_of(p.grad).local.dtype))
        checked["mixed precision bf16"] = dtypes
        (Path(out) / f"checked-{rank}.json").write_text(json.dumps(checked))
    except BaseException:
        (Path(out) / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.start_processes(worker, args=(2, os.path.join(tmp, "init"), sys.argv[1]), nprocs=2, start_method="fork")
