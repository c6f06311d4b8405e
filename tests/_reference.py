"""The reference example (one Linear neuron, one SGD step), shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


def make_reference():
    """The walkthrough's model, data, loss and optimizer, in float64."""
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[8.0]], dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, x, y, nn.MSELoss(), optimizer


def train_reference(model, x, y, loss_fn, optimizer, steps: int = 1) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()


def trace_reference(path, steps: int = 1):
    """``steps`` SGD steps of the reference example traced into ``path``; returns ``path``."""
    import tracer

    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=path):
        train_reference(model, x, y, loss_fn, optimizer, steps=steps)
    return path
