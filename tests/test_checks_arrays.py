"""The update checks on arrays (a parameter's steps at once) give the row-by-row checks' verdicts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import tracer
from tracer import _checks
from tracer._check_judge import Judge
from tracer._check_tolerance import Tolerance

OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adam-tensor-lr": lambda p: torch.optim.Adam(p, lr=torch.tensor(0.01)),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
}
STEPS = 12  # more than MIN_STACK: the later steps are computed as one stack


def train(path, make_optimizer, dtype=torch.float64, steps=STEPS):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    with tracer.trace(model, optimizer, path=path, max_values=None) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            x, y = torch.randn(5, 3, dtype=dtype), torch.randn(5, 2, dtype=dtype)
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    return run


def both(frame, bases):
    """The checks of ``frame`` on arrays, and row by row."""
    arrays = _checks._build(frame, bases, (), None, {}, arrays=True)
    rows = _checks._build(frame, bases, (), None, {}, arrays=False)
    return arrays, rows


def same(a, b) -> bool:
    """Equal, field for field: arrays of the same shape and dtype, NaN equal to NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and (a.shape, a.dtype) == (b.shape, b.dtype)
            and np.array_equal(a, b, equal_nan=True)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def differences(arrays, rows) -> list[tuple[int, str, str]]:
    assert len(arrays) == len(rows)
    return [
        (x.step, x.name, f.name)
        for x, y in zip(arrays, rows)
        for f in dataclasses.fields(x)
        if not same(getattr(x, f.name), getattr(y, f.name))
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_the_array_checks_are_the_row_checks_field_for_field(tmp_path, optimizer, dtype):
    run = train(tmp_path / "t", OPTIMIZERS[optimizer], dtype)
    opened = tracer.open(run)
    arrays, rows = both(opened.updates(), opened.meta.optimizer_bases)
    assert 4 * STEPS == len(arrays)
    assert [] == differences(arrays, rows)
    assert all(c.matches is True for c in arrays), [(c.step, c.name, c.reason) for c in arrays if not c.matches]
    assert [(c.step, c.name) for c in rows] == [(c.step, c.name) for c in arrays]


def test_a_regular_trace_is_checked_without_a_row_by_row_check(tmp_path, monkeypatch):
    run = train(tmp_path / "t", OPTIMIZERS["sgd-momentum"])
    monkeypatch.setattr(Judge, "run", lambda *a: pytest.fail("checked row by row"))
    checks = _checks.check_updates(run)
    assert [True] * 4 * STEPS == [c.matches for c in checks]


def test_a_tampered_update_differs_on_arrays_as_row_by_row(tmp_path):
    run = train(tmp_path / "t", OPTIMIZERS["adam"])
    frame = tracer.load(run.path)
    row = frame.index[(frame.kind == "update") & (frame.step == 9) & (frame.name == "2.weight")][0]
    values = np.array(frame.at[row, "values"], dtype=np.float64)
    values[3] += 1e-9 * max(1.0, np.abs(values).max())
    frame.at[row, "values"] = values
    arrays, rows = both(frame, {})
    assert [] == differences(arrays, rows)
    bad = [(c.step, c.name, c.mismatches, c.first_mismatch) for c in arrays if c.matches is False]
    assert [(9, "2.weight", 1, 3)] == bad


def test_a_parameter_with_an_unstored_value_is_left_to_the_row_checks(tmp_path):
    run = train(tmp_path / "t", OPTIMIZERS["sgd-momentum"])
    frame = tracer.load(run.path)
    row = frame.index[(frame.kind == "grad") & (frame.step == 4) & (frame.name == "0.bias")][0]
    frame.at[row, "values"] = None
    arrays, rows = both(frame, {})
    assert [] == differences(arrays, rows)
    unchecked = [(c.step, c.name) for c in arrays if c.matches is None]
    assert [(4, "0.bias")] == unchecked
    assert "the values of grad were not stored" in next(c.reason for c in arrays if c.matches is None)


def test_rows_out_of_training_order_are_checked_in_training_order(tmp_path):
    run = train(tmp_path / "t", OPTIMIZERS["rmsprop"], steps=9)
    frame = tracer.load(run.path)
    shuffled = frame.sample(frac=1.0, random_state=0).sort_values("step", kind="stable")
    arrays, rows = both(shuffled, {})
    assert [] == differences(arrays, rows)


def test_the_verdicts_of_many_rows_are_the_tolerance_of_each():
    old = np.array([[1.0, 2.0, np.inf], [0.0, 1.0, np.nan]])
    update = np.array([[0.5, 0.0, 0.0], [1e-3, 0.0, 0.0]])
    predicted = np.array([[1.5, 2.0 + 1e-9, np.inf], [1e-3, 1.0, np.nan]])
    worst, counts, first = Tolerance().judge_rows(old, update, predicted, "float64")
    assert [1e-9, 0.0] == pytest.approx(worst, abs=1e-15)
    assert [1, 0] == counts
    assert 1 == first[0]
    worst, counts, _ = Tolerance(atol=1e-8).judge_rows(old, update, predicted, "float64")
    assert [0, 0] == counts
