"""Trace a Lightning ``Trainer.fit`` with one callback: an MNIST-like task on synthetic data.

Ten classes of 28×28 "digits" (a fixed random template per class, plus noise), a small
MLP, Adam with a cosine schedule, gradient accumulation over 2 batches, gradient clipping
by the trainer and a validation pass each epoch. Nothing is downloaded.

The trace's ``step`` is the optimizer step (``trainer.global_step``); the two batches of a
step are ``call`` 0 and 1; the ``grad`` rows are the clipped gradients Adam consumed; the
validation batches are forward-only rows (``grad_enabled`` False). The report then checks
every update against Adam's rule.

Run:  pip install 'torch-tracer[lightning]'
      python examples/lightning_mnist_like.py [TRACE_DIR]   (default: traces/lightning_mnist_like)
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from torch import nn

import tracer
from tracer.integrations.lightning import TraceCallback


class DigitsLike(torch.utils.data.Dataset):
    """``n`` noisy 1×28×28 images of 10 classes; the same data for the same ``seed``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(0)
        templates = torch.rand(10, 1, 28, 28, generator=g)  # one "digit" per class, shared by all splits
        g.manual_seed(seed)
        self.y = torch.randint(0, 10, (n,), generator=g)
        self.x = templates[self.y] + 0.5 * torch.randn(n, 1, 28, 28, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Classifier(L.LightningModule):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(path: Path, epochs: int = 2) -> tracer.Report:
    L.seed_everything(0, verbose=False)
    train = torch.utils.data.DataLoader(DigitsLike(512, seed=1), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(DigitsLike(128, seed=2), batch_size=64)
    steps = epochs * len(train) // 2

    # every=4: trace steps 0, 4, 8, …, each with every value (the report needs them to check
    # the 784×64 weight; by default a tensor over 1024 elements keeps statistics only), but
    # not the images themselves: no `input` rows, and not the output of the Flatten
    trace = TraceCallback(
        path=path, overwrite=True, every=4, max_values=None, capture=tracer.ALL - {"input"}, exclude="net.0"
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        callbacks=[trace],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    trainer.fit(Classifier(steps), train, val)

    df = tracer.load(trace.path)
    report = tracer.report(trace.path)
    table = report.to_frame()
    print(f"Trace written to {trace.path}: {len(df)} rows, {trainer.global_step} optimizer steps")
    grads = df[df.kind == "grad"].pivot(index="step", columns="name", values="norm")
    print("\nGradient L2 norm per traced step (clipped by the trainer to a total of 1.0):")
    print(grads.round(4).to_string())
    validation = df[df.grad_enabled.fillna(True).eq(False)]
    print(f"\nValidation: {len(validation)} forward-only rows at steps {sorted(set(validation.step))}")
    print(f"Report: {report.counts['matched']} of {len(table)} updates follow Adam's rule")
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("traces") / "lightning_mnist_like")
