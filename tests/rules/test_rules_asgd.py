"""ASGD's rule against the real `torch.optim.ASGD` (eta, mu and ax state)."""

import pytest
import torch

from tracer.rules import asgd

FLAGS = [
    {},
    {"lambd": 0.1, "alpha": 0.5},
    {"t0": 2},
    {"weight_decay": 0.1},
    {"lambd": 0.05, "alpha": 1.0, "t0": 1, "weight_decay": 0.1, "maximize": True},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(asgd.RULE, lambda p: torch.optim.ASGD(p, lr=0.05, foreach=foreach, **flags), dtype)


def test_eta_and_mu_follow_the_state(check_rule):
    records = check_rule(asgd.RULE, lambda p: torch.optim.ASGD(p, lr=0.05, lambd=0.1, t0=2), steps=5)
    mus = [rec.state["mu"].item() for rec in records if rec.name == "lin.bias" and rec.state]
    assert [1.0, 1.0, 1.0, 0.5] == mus  # averaging starts after t0 steps


def test_predict_matches_the_state_update():
    # the new eta/mu computed by compute must be what torch stores next
    model = torch.nn.Linear(2, 1, dtype=torch.float64)
    optimizer = torch.optim.ASGD(model.parameters(), lr=0.05, lambd=0.1, alpha=0.75, t0=1)
    model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    optimizer.step()
    state = optimizer.state[model.weight]
    parts = asgd.compute(model.weight.detach(), model.weight.grad, {}, optimizer.param_groups[0])
    assert state["eta"].item() == parts["eta_next"]
    assert state["mu"].item() == parts["mu_next"]


def test_explain_matches_predict(check_explain):
    check_explain(asgd.RULE, lambda p: torch.optim.ASGD(p, lr=0.05, lambd=0.1, t0=1, weight_decay=0.1), steps=4)
