"""The step walkthrough of small models: forward, loss and chain rule, checked (✓) by the trace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tracer


def _walk(tmp_path, model, x, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        loss_fn(model(x)).backward()
        opt.step()
    text = str(tracer.report(run))
    return text.split("Updates.")[0].split("could not be checked.")[1]


def _linear(n_in, n_out, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).double()


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Sigmoid, nn.Tanh])
def test_sequential_chain_every_number_checks(tmp_path, activation):
    model = nn.Sequential(_linear(2, 3), activation(), _linear(3, 1, seed=1))
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    y = torch.tensor([[2.0]], dtype=torch.float64)
    walk = _walk(tmp_path, model, x, lambda out: nn.functional.mse_loss(out, y))
    assert "Forward pass" in walk and "chain rule" in walk
    assert walk.count("✓") >= 3 + 3 + 1 + 4 + 3  # forward units, loss, grads of the last layer...
    assert "✗" not in walk
    assert f"= {activation.__name__}:" in walk
    assert "∂L/∂0.weight[2,1]" in walk  # down to the first layer's gradients


def test_l1_loss_is_explained(tmp_path):
    walk = _walk(tmp_path, _linear(2, 1), torch.tensor([[1.0, 2.0]], dtype=torch.float64),
                 lambda out: nn.functional.l1_loss(out, torch.tensor([[8.0]], dtype=torch.float64)))  # fmt: skip
    assert "Mean absolute error" in walk and "✗" not in walk


def test_binary_cross_entropy_recovers_the_target(tmp_path):
    model = nn.Sequential(_linear(2, 1), nn.Sigmoid())
    y = torch.tensor([[1.0]], dtype=torch.float64)
    walk = _walk(tmp_path, model, torch.tensor([[1.0, 2.0]], dtype=torch.float64),
                 lambda out: nn.functional.binary_cross_entropy(out, y))  # fmt: skip
    assert "The target is y = 1 " in walk
    assert "Binary cross-entropy" in walk and "✗" not in walk


def test_cross_entropy_recovers_the_class(tmp_path):
    walk = _walk(tmp_path, _linear(2, 3), torch.tensor([[1.0, 2.0]], dtype=torch.float64),
                 lambda out: nn.functional.cross_entropy(out, torch.tensor([2])))  # fmt: skip
    assert "The target class is 2" in walk
    assert "Cross-entropy" in walk and "✗" not in walk


def test_models_not_covered_get_no_walkthrough(tmp_path):
    model = nn.Sequential(_linear(2, 2), nn.GELU(), _linear(2, 1))
    walk = _walk(tmp_path, model, torch.tensor([[1.0, 2.0]], dtype=torch.float64), lambda out: out.sum())
    assert "Forward pass" not in walk  # no half story: GELU is not worked by hand
