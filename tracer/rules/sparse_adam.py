"""Rule for `torch.optim.SparseAdam` (Adam on the entries a sparse gradient holds).

torch only updates the entries present in the sparse gradient; the caller
hands predict the gradient densified, so which entries were present is
inferred. Assumption: for a parameter of two or more dimensions, a slice along
dim 0 (a row, e.g. one embedding vector of ``nn.Embedding(sparse=True)``) was
present when any of its entries is nonzero; for a 1-D parameter, an entry was
present when it is nonzero. A looked-up row whose gradient is exactly zero
everywhere cannot be told from an absent one (torch would still decay its
moments and move it), and a fully sparse COO gradient (``sparse_dim`` equal to
the parameter's ``dim``) with zeros inside a row is read as the whole row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import (
    MINUS,
    Rule,
    arg,
    ema_line,
    final_line,
    flag,
    item,
    latex_lines,
    no_grad_line,
    num,
    pair,
    scalars,
    state_or,
    step_of,
    text_lines,
    value,
)

SYMBOLS = {"lr": "γ", "betas": "β₁, β₂", "eps": "ε"}

NOTE = (
    "Only the entries present in the sparse gradient change. From the densified gradient, "
    "a row (slice along dim 0) counts as present when any entry is nonzero; a looked-up row "
    "whose gradient is exactly zero is mispredicted as untouched."
)


def text(hparams: dict) -> str:
    """The SparseAdam rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    lines += [
        "for the rows present in the sparse g only:",
        "m ← β₁·m + (1 − β₁)·g",
        "v ← β₂·v + (1 − β₂)·g²",
        "θ ← θ − γ·√(1 − β₂ᵗ)/(1 − β₁ᵗ)·m / (√v + ε)",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The SparseAdam rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    lines += [
        r"\text{for the rows present in the sparse } g_t \text{ only:}",
        r"m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t",
        r"v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2",
        r"\theta_t \leftarrow \theta_{t-1} - \gamma \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}"
        r" \frac{m_t}{\sqrt{v_t} + \epsilon}",
    ]
    return latex_lines(lines)


def present(grad: Tensor) -> Tensor:
    """Which entries the sparse gradient held: whole rows (dim 0) with any nonzero entry."""
    nonzero = grad != 0
    if grad.dim() < 2:
        return nonzero
    rows = nonzero.flatten(1).any(dim=1)
    return rows.view(-1, *([1] * (grad.dim() - 1))).expand_as(grad)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict, mask: Tensor) -> dict[str, Tensor]:
    """Replay `torch.optim._functional.sparse_adam` on the entries in ``mask``."""
    lr = value(hparams, "lr")
    beta1, beta2 = pair(hparams, "betas")
    eps = value(hparams, "eps")
    step = step_of(state) + 1
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    old_exp_avg = state_or(state, "exp_avg", param)
    old_exp_avg_sq = state_or(state, "exp_avg_sq", param)
    numer = g.sub(old_exp_avg).mul(1 - beta1).add(old_exp_avg)
    second = g.pow(2).sub(old_exp_avg_sq).mul(1 - beta2).add(old_exp_avg_sq)
    parts["m"], parts["v"] = numer, second
    denom = second.sqrt().add(eps)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    parts["step_size"] = param.new_tensor(step_size)
    parts["param"] = torch.where(mask, param.add(-step_size * numer.div(denom)), param)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one SparseAdam step (``grad`` densified; see the module note)."""
    if grad is None:
        return param.clone()
    mask = present(grad)
    if not bool(mask.any()):
        return param.clone()
    return _compute(param, grad, state, hparams, mask)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's SparseAdam step as hand arithmetic (a zero gradient reads as absent)."""
    if grad is None:
        return no_grad_line(label, param)
    if grad == 0:
        return [f"{label}: not in the sparse gradient, unchanged = {num(param)}"]
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams, torch.tensor(True))
    beta1, beta2 = pair(hparams, "betas")
    step = int(step_of(state)) + 1
    g_used = item(parts.get("g_max", g))
    lines = [f"g: {MINUS}{arg(grad)} = {num(g_used)}"] if "g_max" in parts else []
    lines.append(ema_line("m", beta1, state.get("exp_avg", 0.0), g_used, parts["m"]))
    lines.append(ema_line("v", beta2, state.get("exp_avg_sq", 0.0), g_used, parts["v"], square=True))
    lr = value(hparams, "lr")
    step_size = item(parts["step_size"])
    lines.append(f"γ·√(1 − β₂ᵗ)/(1 − β₁ᵗ): {arg(lr)} · √(1 {MINUS} {arg(beta2)}^{step}) / (1 {MINUS} {arg(beta1)}^{step}) = {num(step_size)}")
    arithmetic = f"{arg(param)} {MINUS} {arg(step_size)} · {arg(item(parts['m']))} / (√{arg(item(parts['v']))} + ε)"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(
    optimizer="SparseAdam", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS, note=NOTE
)
