"""The reference example: one Linear neuron, one SGD step, traced and explained.

The tutorial's own code (an unbatched example): w = [[1, 1]], b = 0, x = [1, 2], y = 8, MSE
loss, SGD lr = 0.01 (float64): prediction 3, loss 25, gradients −10, −20, −10, new
parameters 1.1, 1.2, 0.1. It prints the report's walkthrough (forward pass, loss, chain
rule, update) and writes the same report as an HTML page next to the trace.

Run:  python examples/walkthrough.py [TRACE_DIR]   (default: traces/walkthrough, replaced each
      run; the page: TRACE_DIR.html, e.g. traces/walkthrough.html)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import tracer


def main(path: Path) -> None:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)  # one example with two features
    y = torch.tensor([8.0], dtype=torch.float64)  # its target
    model = nn.Linear(2, 1).double()
    model.weight.data = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # w₁ = w₂ = 1 (2-D: [[1, 1]])
    model.bias.data = torch.tensor([0.0], dtype=torch.float64)  # b = 0
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    with tracer.trace(model, optimizer, path=path, overwrite=True) as run:
        pred = model(x)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()

    df = tracer.load(run.path)

    def value(kind: str, name: str) -> list[float]:
        row = df[(df.kind == kind) & (df.name == name)].iloc[0]
        return row["values"].tolist()

    print(f"Trace written to {run.path} ({len(df)} rows)\n")
    print("What the trace holds, read back with pandas:")
    print(f"  prediction   ŷ = {value('activation', '')[0]:g}")
    print(f"  loss         L = {value('loss', 'loss')[0]:g}")
    print(f"  ∂L/∂ŷ          = {value('activation_grad', '')[0]:g}")
    w_grad, b_grad = value("grad", "weight"), value("grad", "bias")
    print(f"  gradients    ∂L/∂w₁ = {w_grad[0]:g}, ∂L/∂w₂ = {w_grad[1]:g}, ∂L/∂b = {b_grad[0]:g}")
    old = value("param", "weight") + value("param", "bias")
    upd = value("update", "weight") + value("update", "bias")
    grads = w_grad + b_grad
    print("\n  parameter | old value | gradient | new value")
    for label, o, g, u in zip(["w₁", "w₂", "b"], old, grads, upd):
        print(f"  {label:<9} | {o:>9g} | {g:>8g} | {o + u:>9g}")
    print("\nThe report explains the whole step, and checks every number against the trace:\n")
    report = tracer.report(run)
    print(report)
    page = path.with_name(path.name + ".html")
    page.write_text(report.to_html(), encoding="utf-8")
    print(f"The same report as an HTML page: {page}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("traces") / "walkthrough")
