"""NaN hunt: a model made to blow up, traced, and ``tracer.diagnose`` pointing at where it started.

A small float32 MLP is trained with a learning rate far too high. The loss grows step by
step until, at some step, a value overflows and NaN/Inf spreads through everything after
it. Looking at the last loss says only "NaN"; the trace says where the first non-finite
value appeared, in training order (forward, loss, backward, update), and what the numbers
were just before.

Run:  python examples/nan_hunt.py [TRACE_DIR]   (default: traces/nan_hunt, replaced each run)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import tracer
from tracer import Findings, diagnose


def main(path: Path) -> Findings:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # far too high: it will diverge
    x = torch.randn(64, 4)
    y = 100 * (x[:, :1] * x[:, 1:2] + torch.sin(x[:, 2:3]))

    with tracer.trace(model, optimizer, path=path, overwrite=True) as run:
        for step in range(40):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            if not torch.isfinite(loss):
                print(f"the loss is {loss.item()} at step {step}: stopping")
                break

    losses = tracer.load(run.path, kind="loss", columns=["step", "mean"])
    print("loss per step:", ", ".join(f"{v:.3g}" for v in losses["mean"]), "\n")

    findings = diagnose(run)
    print(findings)
    first = next(f for f in findings if f.code == "first-nonfinite")
    print(f"→ it started at step {first.step}, in the {first.kind} of {first.name!r}.")
    return findings


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("traces") / "nan_hunt")
