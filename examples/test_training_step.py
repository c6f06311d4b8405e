"""Pin down what training does, in CI: copy this file into your test suite and adapt `make`.

Three kinds of checks, on the reference example (a ``Linear(2, 1)`` in float64, one
sample, MSE loss, SGD with lr=0.01):

1. exact numbers for one step: the loss, a gradient, an update;
2. every update follows the optimizer's rule (no silent clipping, scaling, frozen params);
3. the first steps match a golden trace kept in the repository, so a refactor that
   changes training fails the test.

Run it::

    pytest examples/test_training_step.py

After a change that is meant to alter training, rewrite the golden trace, review it and
commit it::

    pytest examples/test_training_step.py --tracer-update-golden

The ``traced`` fixture comes with tracer (a pytest plugin): it traces into the test's
temporary directory and hands back the ``run``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import tracer.testing as tt

GOLDEN = Path(__file__).parent / "golden" / "reference_steps"


def make() -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimizer under test, in a known state."""
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.bias.zero_()
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """The training loop under test (here: the same batch every step)."""
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[8.0]], dtype=torch.float64)
    loss_fn = nn.MSELoss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def test_one_step_is_pinned(traced):
    model, optimizer = make()
    with traced(model, optimizer) as run:
        train(model, optimizer, steps=1)
    # model(x) = 1·1 + 1·2 + 0 = 3; loss = (3 − 8)² = 25; dloss/dout = 2·(3 − 8) = −10
    tt.assert_activation(run, "", [[3.0]])
    tt.assert_loss(run, 25.0)
    tt.assert_grad(run, "weight", [[-10.0, -20.0]])
    tt.assert_grad(run, "bias", [-10.0])
    # SGD: θ ← θ − 0.01·g, so the update is −0.01·g
    tt.assert_update(run, "weight", [[0.1, 0.2]])
    tt.assert_update(run, "bias", [0.1])


def test_every_update_follows_its_rule(traced):
    model, optimizer = make()
    with traced(model, optimizer) as run:
        train(model, optimizer, steps=3)
    tt.assert_updates_follow_rule(run)


def test_first_steps_match_golden(traced):
    model, optimizer = make()
    with traced(model, optimizer) as run:
        train(model, optimizer, steps=3)
    tt.assert_matches_golden(run, GOLDEN, kinds=["loss", "grad", "update"])
