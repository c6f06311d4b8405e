"""An optimizer's step staged by its plan (tracer._step_plan): the same rows as the step
staged afresh and as one tensor at a time, and a fresh staging whenever the plan is stale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tracer
from tracer import _staged_steps
from tracer._row_template import FIELDS, Template, take_seqs

KEY = ["step", "kind", "name", "call", "part"]
Scenario = Callable[[nn.Module, torch.optim.Optimizer, int], None]


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2)
        self.c = nn.Linear(2, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))).double())


def _run(path: Path, monkeypatch, how: str, before_step: Scenario | None = None, steps: int = 6, **options):
    """Train ``steps`` Adam steps traced; ``how``: "planned" (as shipped), "afresh" (no plan
    ever used) or "alone" (nothing staged). Returns the rows and how often a step was
    staged afresh."""
    torch.manual_seed(0)
    model = _Small()
    opt = torch.optim.Adam([{"params": [*model.a.parameters(), *model.b.parameters()]},
                            {"params": model.c.parameters(), "lr": 1e-2}], lr=1e-3)  # fmt: skip
    x, y = torch.randn(4, 3), torch.randn(4, 1, dtype=torch.float64)
    afresh = []
    real = _staged_steps.StagedSteps._stage_afresh

    def counted(self, *args):
        afresh.append(self.step)
        return real(self, *args)

    with monkeypatch.context() as m:
        m.setattr(_staged_steps.StagedSteps, "_stage_afresh", counted)
        if how == "afresh":
            m.setattr(_staged_steps, "plan_of", lambda *args: None)
        if how == "alone":
            m.setattr(_staged_steps, "FLOATS", {})
            m.setattr(_staged_steps, "small_float", lambda t: False)
        with tracer.trace(model, opt, path=path, **options) as run:
            for i in range(steps):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                if before_step is not None:
                    before_step(model, opt, i)
                opt.step()
    rows = tracer.load(run.path).sort_values(KEY).reset_index(drop=True)
    return rows, afresh


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b) > 0
    for column in [*KEY, "dtype", "numel", "optimizer", "param_group", "hparams"]:
        assert a[column].tolist() == b[column].tolist(), column
    assert [tuple(s) for s in a["shape"]] == [tuple(s) for s in b["shape"]]
    for x, y in zip(a["values"], b["values"]):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)  # the same numbers exactly
    exact = ~((a["kind"] == "update") & a["values"].isna())  # see test_staging: float32 differences
    stats = ["mean", "std", "min", "max", "norm"]
    np.testing.assert_allclose(a.loc[exact, stats], b.loc[exact, stats], rtol=1e-12, atol=1e-300)
    assert a["seq"].is_unique


@pytest.mark.parametrize("max_values", [1024, 0])
def test_a_planned_step_makes_the_rows_of_a_step_staged_afresh_and_of_one_tensor_at_a_time(
    tmp_path, monkeypatch, max_values
):
    planned, afresh = _run(tmp_path / "p", monkeypatch, "planned", max_values=max_values)
    assert afresh == [0, 1]  # step 0 has no Adam state yet; from step 2 on, the plan
    fresh, every = _run(tmp_path / "f", monkeypatch, "afresh", max_values=max_values)
    assert every == list(range(6))
    alone, _ = _run(tmp_path / "a", monkeypatch, "alone", max_values=max_values)
    _same_rows(planned, fresh)
    _same_rows(planned, alone)
    assert {"grad", "param", "update", "state"} <= set(planned["kind"])


def _drop_grad(model, opt, i):
    if i == 3:
        model.b.bias.grad = None  # Adam skips it this step: no rows, no update


def _new_lr(model, opt, i):
    if i == 3:
        opt.param_groups[0]["lr"] = 0.5


def _new_state(model, opt, i):
    if i == 3:
        state = opt.state[model.a.weight]
        state["exp_avg"] = torch.full_like(state["exp_avg"], 0.25)  # a new tensor, not written in place


def _replaced_param(model, opt, i):
    if i == 3:  # a parameter of the same shape in the place of another, in the same group list
        spare = nn.Parameter(model.a.bias.detach() + 1)
        spare.grad = torch.full_like(spare, 0.5)
        opt.param_groups[0]["params"][1] = spare


def _new_group(model, opt, i):
    if i == 3:
        extra = nn.Parameter(torch.ones(2))
        model.register_parameter("extra", extra)
        extra.grad = torch.full((2,), 0.5)
        opt.add_param_group({"params": [extra], "lr": 0.1})


@pytest.mark.parametrize(
    "change, afresh_at",
    [
        (_drop_grad, [0, 1, 3, 4]),
        (_new_lr, [0, 1]),
        (_new_state, [0, 1, 3]),
        (_new_group, [0, 1, 3]),
        (_replaced_param, [0, 1, 3]),
    ],
    ids=[
        "a-gradient-goes",
        "lr-changes",
        "a-state-tensor-is-replaced",
        "a-param-group-is-added",
        "a-parameter-is-replaced",
    ],
)
def test_a_stale_plan_stages_the_step_afresh(tmp_path, monkeypatch, change, afresh_at):
    planned, afresh = _run(tmp_path / "p", monkeypatch, "planned", change)
    assert afresh == afresh_at
    alone, _ = _run(tmp_path / "a", monkeypatch, "alone", change)
    _same_rows(planned, alone)


def test_the_rows_show_what_changed(tmp_path, monkeypatch):
    rows, _ = _run(tmp_path / "g", monkeypatch, "planned", _drop_grad)
    bias = rows[(rows["name"] == "b.bias") & (rows["kind"] == "update")]
    assert bias["step"].tolist() == [0, 1, 2, 4, 5]  # no update at step 3
    rows, _ = _run(tmp_path / "s", monkeypatch, "planned", _new_state)
    avg = rows[(rows["name"] == "a.weight") & (rows["kind"] == "state") & (rows["part"] == "exp_avg")]
    assert np.all(avg.loc[avg["step"] == 3, "values"].iloc[0] == 0.25)
    rows, _ = _run(tmp_path / "l", monkeypatch, "planned", _new_lr)
    lrs = rows[(rows["name"] == "a.weight") & (rows["kind"] == "grad")]["hparams"]
    assert ['"lr": 0.001' in h for h in lrs] == [True] * 3 + [False] * 3
    assert all('"lr": 0.5' in h for h in lrs.iloc[3:])


def test_a_template_keeps_the_fixed_columns_and_takes_the_rest_per_step():
    rows = [
        (0, 10, "grad", "w", 0, "", "Linear", (2,), "float32", 2, True, None, "SGD", 0, "old", 0, 0),
        (0, 11, "param", "w", 0, "", "Linear", (2,), "float32", 2, False, None, "SGD", 1, "old", 1, 0),
    ]
    template = Template(rows)
    assert template.n == 2 and template.grads == 1
    assert template.groups([7, 9]).tolist() == [7, 9] and template.keep.tolist() == [True, False]
    columns: dict[str, list] = {name: [] for name in FIELDS if name not in ("group", "slot")}
    template.add_to(columns, step=5, seqs=[40, 41], hparams=["g0", "g1"])
    assert columns["step"] == [5, 5] and columns["seq"] == [40, 41] and columns["hparams"] == ["g0", "g1"]
    assert columns["kind"] == ["grad", "param"] and columns["param_group"] == [0, 1]
    assert template.arrow()["shape"].to_pylist() == [[2], [2]]


def test_sequence_numbers_are_taken_at_once_in_order():
    import itertools

    counter = itertools.count(3)
    assert take_seqs(counter, 4) == [3, 4, 5, 6] and next(counter) == 7
