"""One small model, three optimizers: SGD with momentum, Adam, and AdamW with a schedule.

Each run is traced and its report printed: the rule of the optimizer with the numbers of
each step substituted, checked against what really happened.

Run:  python examples/optimizers.py [TRACE_ROOT]   (default: traces/optimizers)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import tracer


def train(root: Path, label: str, make_optimizer, schedule=None, steps: int = 3) -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    optimizer = make_optimizer(model.parameters())
    scheduler = schedule(optimizer) if schedule else None
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[8.0]], dtype=torch.float64)
    with tracer.trace(model, optimizer, path=root / label, overwrite=True) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            if scheduler:
                scheduler.step()
    report = tracer.report(run)
    print(f"\n{'#' * 80}\n# {label}\n{'#' * 80}")
    print(report)
    frame = report.to_frame()
    print(f"every update checked: {bool(frame.matches.eq(True).all())}")


def main(root: Path) -> None:
    train(root, "sgd-momentum", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    train(root, "adam", lambda p: torch.optim.Adam(p, lr=0.1))
    train(
        root,
        "adamw-steplr",
        lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.01),
        schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("traces") / "optimizers")
