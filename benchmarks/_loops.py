"""Small versions of real training loops, written here, CPU-sized (tens of ms a step):

- ``gpt``: a nanoGPT-style decoder (tied embeddings, pre-LayerNorm blocks, causal
  attention), AdamW with two parameter groups (weight decay on matrices only), gradient
  accumulation over 2 micro-batches, gradient clipping, a cosine learning-rate schedule.
- ``dcgan``: a DCGAN on 32×32 single-channel images: a transposed-conv generator and a conv
  discriminator with BatchNorm, two Adam optimizers (betas 0.5, 0.999), the D step then
  the G step.
- ``makemore``: makemore's character-level Transformer (vocabulary 27, context 16,
  4 layers of 64), AdamW (betas 0.9, 0.99, weight decay 0.01), ``zero_grad(set_to_none)``.

Each is a :class:`_common.Workload`; the step is the user's loop body, unchanged. Data are
random tokens and images drawn once (the cost of a step does not depend on them).
"""

from __future__ import annotations

import math

import _common as c
import torch
from torch import nn
from torch.nn import functional as F


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, block: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads
        self.register_buffer("mask", torch.tril(torch.ones(block, block, dtype=torch.bool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A decoder-only Transformer: token and position embeddings, blocks, tied head."""

    def __init__(self, vocab: int, block: int, layers: int, d: int, heads: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(_Block(d, heads, block) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # weight tying, as nanoGPT and GPT-2

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def gpt() -> c.Workload:
    vocab, block, batch, accumulate = 512, 64, 8, 2
    model = GPT(vocab, block, layers=3, d=128, heads=4)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, 1000) / 1000)))
    data = torch.randint(0, vocab, (accumulate, batch, block + 1))

    def step() -> None:
        for micro in range(accumulate):
            x, y = data[micro, :, :-1], data[micro, :, 1:]
            loss = F.cross_entropy(model(x).view(-1, vocab), y.reshape(-1)) / accumulate
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return c.Workload(
        "gpt", "nanoGPT-style, 3 layers × 128, vocab 512, ctx 64, b8 × 2 accumulated, AdamW 2 groups", model, opt, step
    )


def dcgan() -> c.Workload:
    nz, ngf, ndf, batch = 32, 32, 32, 16
    netg = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False), nn.Tanh(),
    )  # fmt: skip
    netd = nn.Sequential(
        nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False), nn.Flatten(),
    )  # fmt: skip
    model = nn.ModuleDict({"G": netg, "D": netd})
    opt_d = torch.optim.Adam(netd.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(netg.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, 1, 32, 32) * 2 - 1
    noise = torch.randn(batch, nz, 1, 1)
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    bce = nn.BCEWithLogitsLoss()

    def step() -> None:
        netd.zero_grad()
        fake = netg(noise)
        loss_d = bce(netd(real), ones) + bce(netd(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        netg.zero_grad()
        loss_g = bce(netd(fake), ones)
        loss_g.backward()
        opt_g.step()

    w = c.Workload("dcgan", "DCGAN 32×32×1, nz 32, 32 filters, b16, 2 × Adam(0.5, 0.999)", model, opt_d, step)
    return w._replace(optimizer=[opt_d, opt_g])  # type: ignore[arg-type]


def makemore() -> c.Workload:
    vocab, block, batch = 27, 16, 32
    model = GPT(vocab, block, layers=4, d=64, heads=4)
    model.head = nn.Linear(64, vocab, bias=False)  # makemore does not tie
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
    x = torch.randint(0, vocab, (batch, block))
    y = torch.randint(-1, vocab, (batch, block))  # -1: padding past a word's end, ignored

    def step() -> None:
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, vocab), y.view(-1), ignore_index=-1)
        model.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return c.Workload("makemore", "makemore Transformer, 4 layers × 64, vocab 27, ctx 16, b32, AdamW", model, opt, step)


LOOPS = {"gpt": gpt, "dcgan": dcgan, "makemore": makemore}
