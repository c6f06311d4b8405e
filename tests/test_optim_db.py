"""Every update of PyTorch's own optimizer test matrix is checked, and follows its rule.

``torch.testing._internal.common_optimizers.optim_db`` lists every ``torch.optim`` optimizer
with the inputs PyTorch tests it with. Each input, crossed with the implementations the
optimizer declares (foreach off and on, ``differentiable=True``, ``fused=True`` where it runs
on the CPU), trains a small model for 6 steps in float64 and in float32; the trace (with
``max_values=None``) must have every update checked by its rule and matching. A copy of
each float64 trace with every update scaled by 1 + 1e-6 must be flagged at every update.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tracer
from tracer._checks import check_updates

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (in the test extras)")
from torch.testing._internal.common_optimizers import (
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

# importing torch.testing._internal freezes torch.backends' flags for the whole process
# (torch.backends.disable_global_flags()): the other test modules (Lightning's Trainer sets
# cudnn.benchmark) run in this process too, so unfreeze them again
torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True

pytestmark = pytest.mark.slow

STEPS = 6
CAPTURE = ("grad", "param", "update", "state")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
INFOS = {info.optim_cls.__name__: info for info in optim_db}


def variants(info, dtype):
    """Every input of ``info`` with each implementation it declares: torch's own list (the
    base config, differentiable, fused on the CPU), plus foreach=True, which torch leaves
    out on the CPU although it runs there."""
    inputs = _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, info)
    if "foreach" in info.supported_impls:
        for plain in [i for i in inputs if not any(i.kwargs.get(f) for f in ("differentiable", "fused"))]:
            kwargs = {**copy.deepcopy(plain.kwargs), "foreach": True}
            inputs.append(type(plain)(params=None, kwargs=kwargs, desc=f"{plain.desc} & foreach"))
    return inputs


class Model(nn.Module):
    """Two layers; matrices only for Muon, a sparse embedding for SparseAdam; complex on request."""

    def __init__(self, optimizer: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.sparse = optimizer == "SparseAdam"
        if self.sparse:
            self.emb = nn.Embedding(6, 3, sparse=True, dtype=dtype)
            return
        bias = optimizer != "Muon"
        self.a = nn.Linear(3, 4, bias=bias, dtype=dtype)
        self.b = nn.Linear(4, 2, bias=bias, dtype=dtype)

    def loss(self, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(step)
        dtype = next(self.parameters()).dtype
        if self.sparse:
            idx = torch.randint(0, 6, (4,), generator=gen)
            return self.emb(idx).pow(2).sum() + self.emb(idx).sum()
        real = dtype.to_real()
        x = torch.randn(5, 3, generator=gen, dtype=real).to(dtype)
        out = self.b(torch.tanh(self.a(x)))
        return (out.abs() ** 2).mean() if dtype.is_complex else (out - 1).pow(2).mean()


def step(optimizer: torch.optim.Optimizer, model: Model, i: int, kwargs: dict) -> None:
    """One training step; a differentiable optimizer steps leaves that do not require grad
    (as torch's own tests step clones), a closure optimizer (LBFGS) gets its closure."""

    def closure():
        optimizer.zero_grad()
        loss = model.loss(i)
        loss.backward()
        return loss

    closure()
    if type(optimizer).__name__ == "LBFGS":
        optimizer.step(closure)
    elif kwargs.get("differentiable"):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for p in params:
            p.requires_grad_(False)
        optimizer.step()
        for p in params:
            p.requires_grad_(True)
    else:
        optimizer.step()


def train(path, name: str, kwargs: dict, dtype: torch.dtype, steps: int = STEPS, schedule=None, **trace_kw):
    torch.manual_seed(0)
    model = Model(name, dtype)
    optimizer = INFOS[name].optim_cls(model.parameters(), **copy.deepcopy(kwargs))
    scheduler = schedule(optimizer) if schedule else None
    with tracer.trace(model, optimizer, path=path, max_values=None, capture=CAPTURE, **trace_kw) as run:
        for i in range(steps):
            step(optimizer, model, i, kwargs)
            if scheduler is not None:
                scheduler.step()
    return run


def scaled(frame, factor: float):
    """``frame`` with every traced update multiplied by ``factor``: what no rule gives."""
    frame = frame.copy()
    rows = frame.index[frame.kind == "update"]
    scaled = [np.asarray(v) * factor for v in frame.loc[rows, "values"]]
    frame.loc[rows, "values"] = pd.Series(scaled, index=rows, dtype=object)
    return frame


def problems(checks, expected: int) -> list[str]:
    """What is wrong with ``checks``: too few, unchecked or mismatched updates."""
    out = [] if len(checks) == expected else [f"{len(checks)} updates checked, {expected} expected"]
    for c in checks:
        if c.matches is not True:
            why = c.reason if c.matches is None else f"max abs error {c.max_abs_error:.3g} (by {c.check})"
            out.append(f"step {c.step} {c.name}: {why}")
    return out


def expected_updates(run) -> int:
    return int((tracer.load(run.path, kind="update", columns=["kind"]).kind == "update").sum())


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", sorted(INFOS))
def test_every_update_of_every_optim_db_config_is_checked_and_matches(tmp_path, name, dtype):
    failed, configs = {}, variants(INFOS[name], DTYPES[dtype])
    for n, config in enumerate(configs):
        run = train(tmp_path / f"c{n}", name, config.kwargs, DTYPES[dtype])
        checks = check_updates(run.path)
        bad = problems(checks, expected_updates(run)) or ([] if checks else ["no updates"])
        if dtype == "float64" and not bad:  # the negative control: every update is flagged
            tampered = check_updates(scaled(tracer.load(run.path), 1 + 1e-6))
            bad = [f"step {c.step} {c.name}: not flagged when scaled" for c in tampered if c.matches is not False]
        if bad:
            failed[f"{config.desc} {config.kwargs}"] = bad[:3]
    assert {} == failed, f"{len(failed)} of {len(configs)} {name} configs fail"
