"""LBFGS: every closure evaluation recorded, each step replayed from them (tracer._lbfgs_replay,
tracer._lbfgs_trace) in the training process (verify=True) and from a trace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import tracer
from tracer._check_tolerance import Tolerance
from tracer._lbfgs_trace import lbfgs_checks
from tracer._replay import CannotReplay, replay
from tracer._trace import Trace
from tracer.rules import lbfgs

# torch's own LBFGS inputs (torch.testing._internal.common_optimizers.optim_db), and more
CONFIGS = {
    "default": {},
    "non-default lr": {"lr": 0.01},
    "tensor lr": {"lr": torch.tensor(0.001)},
    "tolerance_grad": {"tolerance_grad": 1e-6},
    "strong_wolfe": {"line_search_fn": "strong_wolfe"},
    "one iteration": {"lr": 0.5, "max_iter": 1},
    "short history": {"max_iter": 4, "history_size": 2},
    "wolfe, few evaluations": {"line_search_fn": "strong_wolfe", "max_iter": 3, "max_eval": 5},
}


def _problem(dtype: torch.dtype, kwargs: dict, subclass: type = torch.optim.LBFGS):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)
    optimizer = subclass(model.parameters(), **kwargs)
    x, y = torch.randn(16, 4, dtype=dtype), torch.randn(16, 1, dtype=dtype)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return model, optimizer, closure


def _trace(tmp_path, dtype, kwargs, steps=3, subclass=torch.optim.LBFGS, **options):
    model, optimizer, closure = _problem(dtype, kwargs, subclass)
    with tracer.trace(model, optimizer, path=tmp_path / "t", **options) as run:
        for _ in range(steps):
            optimizer.step(closure)
    return run, model


def _replayed(run) -> tuple[dict, list[bool]]:
    """The trace's LBFGS checks, and whether each prediction matches by the tolerance policy."""
    from tracer._checks import UpdateCheck

    trace = Trace.open(run.path)
    updates = trace.updates()
    found = lbfgs_checks(updates, trace.rows(kind="loss"), trace.meta.optimizer_bases)
    checks = []
    for (step, name), got in found.items():
        rows = updates[(updates.step == step) & (updates.name == name) & (updates.call == 0)].set_index("kind")
        param, update = (_real(rows.loc[k, "values"]) for k in ("param", "update"))
        check = UpdateCheck(step, name, "LBFGS", 0, {}, str(rows.loc["param", "dtype"]), param.shape,
                            predicted=got.predicted, param=param, update=update)  # fmt: skip
        checks.append(check)
    Tolerance().judge(checks)
    return found, [c.matches for c in checks]


def _real(values) -> np.ndarray:
    """Traced values as float64, a complex tensor as its real view (as the checks compare it)."""
    array = np.asarray(values)
    return np.ascontiguousarray(array, dtype=np.complex128).view(np.float64) if array.dtype.kind == "c" else array


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_verify_checks_every_lbfgs_step(tmp_path, config, dtype):
    run, _ = _trace(tmp_path, dtype, CONFIGS[config], verify=True, max_values=0)
    updates = tracer.load(run, kind="update")
    assert 12 == len(updates)  # 4 tensors, 3 steps: checked though no values are stored
    assert updates["values"].isna().all()
    assert [True] * 12 == updates["rule_matches"].tolist(), updates[["step", "name", "rule_error"]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_trace_replays_every_lbfgs_step(tmp_path, config, dtype):
    run, _ = _trace(tmp_path, dtype, CONFIGS[config], steps=2, max_values=None)
    found, matches = _replayed(run)
    assert 8 == len(found)
    assert all(c.reason is None and not c.diverged for c in found.values()), [c.reason for c in found.values()]
    assert [True] * 8 == matches


def test_each_closure_evaluation_is_recorded(tmp_path):
    run, model = _trace(tmp_path, torch.float64, {"max_iter": 4}, steps=2, max_values=None)
    df = tracer.load(run)
    at0 = df[df.step == 0]
    assert [0, 1, 2, 3] == at0[(at0.kind == "grad") & (at0.name == "0.weight")].call.tolist()
    assert [0, 1, 2, 3] == at0[(at0.kind == "param") & (at0.name == "0.weight")].call.tolist()
    assert [0, 1, 2, 3] == at0[at0.kind == "loss"].call.tolist()
    assert [0] == at0[(at0.kind == "update") & (at0.name == "0.weight")].call.tolist()
    # every state list is written as parts, on the first parameter only
    parts = set(df[(df.kind == "state") & (df.step == 1)].part)
    assert {"d", "t", "old_dirs.0", "old_stps.0", "ro.0", "prev_flat_grad", "n_iter"} <= parts
    assert {"0.weight"} == set(df[df.kind == "state"].name)


def test_a_perturbed_lbfgs_step_is_flagged(tmp_path):
    class Perturbed(torch.optim.LBFGS):
        def step(self, closure):
            before = [p.detach().clone() for p in self._params]
            loss = super().step(closure)
            with torch.no_grad():
                for p, b in zip(self._params, before):
                    p.copy_(b + (p - b) * (1 + 1e-4))
            return loss

    run, _ = _trace(tmp_path, torch.float64, {"max_iter": 3}, subclass=Perturbed, verify=True, max_values=None)
    assert [False] * 12 == tracer.load(run, kind="update")["rule_matches"].tolist()
    _, matches = _replayed(run)
    assert [False] * 12 == matches


def test_a_missing_evaluation_is_a_divergence(tmp_path):
    run, _ = _trace(tmp_path, torch.float64, {"max_iter": 3}, steps=1, max_values=None)
    trace = Trace.open(run.path)
    updates = trace.updates()
    last = updates[updates.kind == "grad"].call.max()
    cut = updates[~((updates.call == last) & updates.kind.isin(["grad", "param"]))]
    found = lbfgs_checks(cut, trace.rows(kind="loss")[lambda d: d.call != last], trace.meta.optimizer_bases)
    assert all(c.diverged and "2 time(s)" in c.reason for c in found.values()), [c.reason for c in found.values()]


def test_values_not_stored_say_so(tmp_path):
    run, _ = _trace(tmp_path, torch.float64, {"max_iter": 2}, steps=1, max_values=0)
    trace = Trace.open(run.path)
    found = lbfgs_checks(trace.updates(), trace.rows(kind="loss"), trace.meta.optimizer_bases)
    assert 4 == len(found)
    assert all(c.predicted is None and "max_values=None" in c.reason for c in found.values())


def test_the_rule_reassembles_the_state_parts(tmp_path):
    # one tensor, max_iter=1: the rule predicts every step from the state's parts
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=1)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with tracer.trace(model, optimizer, path=tmp_path / "t", max_values=None) as run:
        for _ in range(4):
            optimizer.step(closure)
    df = tracer.load(run)
    for step in range(4):
        rows = df[(df.step == step) & (df.call == 0)]
        value = {
            k: torch.tensor(np.asarray(rows[rows.kind == k]["values"].iloc[0])) for k in ("param", "grad", "update")
        }
        states = rows[rows.kind == "state"]
        state = {part: torch.tensor(np.asarray(v)).reshape(tuple(shape))
                 for part, v, shape in zip(states["part"], states["values"], states["shape"])}  # fmt: skip
        hparams = {**json.loads(rows.hparams.iloc[0]), "params": 1}
        predicted = lbfgs.RULE.predict(value["param"], value["grad"], state, hparams)
        assert torch.allclose(value["param"] + value["update"], predicted, rtol=0, atol=1e-15), step


def test_assemble_puts_the_lists_back():
    state = {"n_iter": torch.tensor(3), "ro.1": torch.tensor(2.0), "ro.0": torch.tensor(1.0), "d": torch.ones(2)}
    got = lbfgs.assemble(state)
    assert [1.0, 2.0] == [float(r) for r in got["ro"]]
    assert [] == got["old_dirs"] and [] == got["old_stps"]  # empty lists write no part
    assert {} == {k: v for k, v in lbfgs.assemble({}).items()}  # the first step: nothing to fill in


def test_a_one_parameter_replay_says_why_lbfgs_cannot_be_replayed():
    with pytest.raises(CannotReplay, match="re-evaluates the loss through its closure"):
        replay(torch.optim.LBFGS, torch.ones(2), torch.ones(2), {}, {"lr": 1.0})


def test_a_step_that_requires_a_closure_says_so():
    class NeedsClosure(torch.optim.SGD):
        def step(self, closure):
            return super().step(closure)

    with pytest.raises(CannotReplay, match=r"NeedsClosure.step\(\) requires a closure"):
        replay(NeedsClosure, torch.ones(2), torch.ones(2), {}, {"lr": 1.0})


def test_complex_parameters_are_replayed(tmp_path):
    torch.manual_seed(0)
    model = _ComplexLinear()
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=3)
    x = torch.randn(4, 3, dtype=torch.complex128)

    def closure():
        optimizer.zero_grad()
        loss = model(x).abs().pow(2).sum()
        loss.backward()
        return loss

    with tracer.trace(model, optimizer, path=tmp_path / "t", verify=True, max_values=None) as run:
        for _ in range(2):
            optimizer.step(closure)
    assert [True] * 2 == tracer.load(run, kind="update")["rule_matches"].tolist()
    found, matches = _replayed(run)
    assert 2 == len(found) and [True] * 2 == matches


class _ComplexLinear(nn.Module):
    """x·wᵀ with a complex weight (nn.Linear(...).to(complex) warns that complex modules are new)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3, dtype=torch.complex128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T
