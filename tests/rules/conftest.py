"""Shared fixtures for the rule tests: run a real optimizer and replay every step through a rule.

The replay snapshots what the tracer would record before each ``step()``: the
parameter, the gradient the optimizer consumes, ``optimizer.state[p]`` and the
param group (JSON round-tripped, as the report module reads it), all as
float64; after the step it compares ``rule.predict`` with the real new value.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from tracer._hparams import hparams_json


@dataclasses.dataclass
class Record:
    """One parameter's inputs to one step, and the value torch produced."""

    name: str
    step: int
    param: Tensor
    grad: Tensor | None
    state: dict[str, Tensor]
    hparams: dict
    actual: Tensor | None = None


def snapshot_state(state: dict) -> dict[str, Tensor]:
    """``optimizer.state[p]`` as float64 tensors: scalars become 0-d, lists of tensors are stacked."""
    out: dict[str, Tensor] = {}
    for key, val in state.items():
        if isinstance(val, Tensor):
            out[key] = val.detach().to(torch.float64).clone()
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            out[key] = torch.tensor(float(val), dtype=torch.float64)
        elif isinstance(val, list) and all(isinstance(v, Tensor) for v in val):
            out[key] = (
                torch.stack([v.detach().to(torch.float64) for v in val]) if val else torch.zeros(0, dtype=torch.float64)
            )
    return out


def snapshot_hparams(group: dict) -> dict:
    """The param group without ``params``, as the trace's JSON gives it back (with the
    dtypes of tensor hyper-parameters under ``_tensors``)."""
    return json.loads(hparams_json(group))


def rule_hparams(group: dict, p: Tensor, state: dict) -> dict:
    """What a rule sees for ``p``, as ``tracer._checks`` gives it: the group's hyper-parameters
    and the dtypes the trace records (the parameter's, its state's)."""
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items() if isinstance(v, Tensor)}
    return {**snapshot_hparams(group), "_dtype": str(p.dtype).removeprefix("torch."), "_state_dtypes": dtypes}


def snapshot_grad(p: Tensor) -> Tensor | None:
    """``p.grad`` densified, as float64."""
    if p.grad is None:
        return None
    grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
    return grad.detach().to(torch.float64).clone()


def replay_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], Tensor],
    steps: int = 5,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    closure: bool = False,
) -> list[Record]:
    """Train ``steps`` steps with the real optimizer; one Record per parameter per step."""
    names = {id(p): n for n, p in model.named_parameters()}
    records: list[Record] = []
    for step in range(steps):
        optimizer.zero_grad()
        loss_fn().backward()
        current = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                rec = Record(
                    name=names[id(p)],
                    step=step,
                    param=p.detach().to(torch.float64).clone(),
                    grad=snapshot_grad(p),
                    state=snapshot_state(optimizer.state.get(p, {})),
                    hparams=rule_hparams(group, p, optimizer.state.get(p, {})),
                )
                current.append((p, rec))
        if closure:

            def closure_fn():
                optimizer.zero_grad()
                loss = loss_fn()
                loss.backward()
                return loss

            optimizer.step(closure_fn)
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for p, rec in current:
            rec.actual = p.detach().to(torch.float64).clone()
            records.append(rec)
    return records


def tolerance(dtype: torch.dtype, rec: Record) -> dict[str, float]:
    """assert_close tolerances for a parameter of ``dtype``.

    float64: predict replays torch's own float64 operations, so only the odd
    last-bit difference (foreach kernels reorder a few operations) is allowed.

    float32: predict computes in float64 from the same float32 inputs (the
    state is re-read from the real optimizer every step, so nothing
    accumulates). torch rounds each intermediate to float32 (unit roundoff
    6e-8): the new value may differ by a few float32 ulps of the parameter
    (rtol 1e-6) and by a few roundoffs of the step itself; atol = 1e-5 of the
    largest step, so any wrong term of the formula (which changes the step by
    a large fraction of itself) still fails.
    """
    if dtype == torch.float64:
        return {"rtol": 1e-12, "atol": 1e-14}
    step = (rec.actual - rec.param).abs().max().item() if rec.param.numel() else 0.0
    return {"rtol": 1e-6, "atol": 1e-5 * step + 1e-9}


def assert_replay(records: list[Record], rule, dtype: torch.dtype) -> None:
    """Require ``rule.predict`` to give torch's new value for every record."""
    if not records:
        raise AssertionError("no steps were replayed")
    for rec in records:
        predicted = rule.predict(rec.param, rec.grad, rec.state, rec.hparams)
        expected_dtype = torch.float64
        assert expected_dtype == predicted.dtype
        torch.testing.assert_close(
            predicted,
            rec.actual,
            **tolerance(dtype, rec),
            msg=lambda m, rec=rec: f"{rec.name} step {rec.step}: {m}",
        )


class TinyNet(torch.nn.Module):
    """A 2-D weight and a 1-D bias: ``Linear(3, 2)`` with a seeded init."""

    def __init__(self, dtype: torch.dtype, bias: bool = True) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2, bias=bias, dtype=dtype)


def tiny_problem(dtype: torch.dtype, seed: int = 0, bias: bool = True, fixed_batch: bool = False):
    """A seeded TinyNet and its mean-squared loss; each call takes the next of 8 batches.

    ``fixed_batch`` keeps the first batch (a closure optimizer such as LBFGS
    must see the same loss the snapshot saw).
    """
    gen = torch.Generator().manual_seed(seed)
    model = TinyNet(dtype, bias=bias)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    xs = torch.randn(8, 4, 3, generator=gen, dtype=dtype)
    ys = torch.randn(8, 4, 2, generator=gen, dtype=dtype)
    calls = [0]

    def loss_fn() -> Tensor:
        i = 0 if fixed_batch else calls[0] % len(xs)
        calls[0] += 1
        return torch.nn.functional.mse_loss(model.lin(xs[i]), ys[i])

    return model, loss_fn


@pytest.fixture
def check_rule():
    """``check_rule(rule, make_optimizer, dtype, ...)``: train a TinyNet and replay it through ``rule``.

    ``make_optimizer(params) -> Optimizer``; extra keywords go to replay_steps.
    Returns the records so a test can make further checks.
    """

    def check(rule, make_optimizer, dtype=torch.float64, steps=5, seed=0, bias=True, scheduler=None, closure=False):
        model, loss_fn = tiny_problem(dtype, seed=seed, bias=bias, fixed_batch=closure)
        optimizer = make_optimizer(model.parameters())
        sched = scheduler(optimizer) if scheduler is not None else None
        records = replay_steps(model, optimizer, loss_fn, steps=steps, scheduler=sched, closure=closure)
        assert_replay(records, rule, dtype)
        return records

    return check


def element_state(state: dict[str, Tensor], param: Tensor, index: tuple[int, ...]) -> dict[str, float]:
    """One element's view of a state snapshot: same-shape tensors indexed, 0-d tensors as floats."""
    out = {}
    for key, val in state.items():
        if val.dim() == 0:
            out[key] = val.item()
        elif val.shape == param.shape:
            out[key] = val[index].item()
    return out


def final_number(line: str) -> float:
    """The number after the last ``=`` of an explain line (Unicode minus accepted)."""
    return float(line.rsplit("=", 1)[1].strip().replace("\u2212", "-"))


@pytest.fixture
def helpers():
    """Plain helper functions, handed over as a namespace (tests must not import conftest)."""
    return _Helpers


class _Helpers:
    """Namespace of the module-level helpers above."""

    replay_steps = staticmethod(replay_steps)
    assert_replay = staticmethod(assert_replay)
    tiny_problem = staticmethod(tiny_problem)
    element_state = staticmethod(element_state)
    final_number = staticmethod(final_number)
    snapshot_state = staticmethod(snapshot_state)
    snapshot_hparams = staticmethod(snapshot_hparams)
    snapshot_grad = staticmethod(snapshot_grad)
    Record = Record


@pytest.fixture
def check_explain():
    """``check_explain(rule, make_optimizer, dtype, steps)``: explain's last number equals predict.

    Trains a TinyNet, and at every step explains element ``[0, 1]`` of the
    weight and ``[0]`` of the bias; the number closing the last line must be
    predict's value for that element, to the 6 significant digits shown.
    """

    def check(rule, make_optimizer, dtype=torch.float64, steps=3, **kwargs):
        model, loss_fn = tiny_problem(dtype)
        optimizer = make_optimizer(model.parameters())
        records = replay_steps(model, optimizer, loss_fn, steps=steps, **kwargs)
        for rec in records:
            index = (0, 1) if rec.param.dim() == 2 else (0,)
            label = f"{rec.name}{list(index)}"
            lines = rule.explain(
                label,
                rec.param[index].item(),
                None if rec.grad is None else rec.grad[index].item(),
                element_state(rec.state, rec.param, index),
                rec.hparams,
            )
            assert [] != lines
            assert lines[-1].startswith(f"{label}: ")
            predicted = rule.predict(rec.param, rec.grad, rec.state, rec.hparams)[index].item()
            assert pytest.approx(predicted, rel=6e-6, abs=1e-300) == final_number(lines[-1])
        return records

    return check
