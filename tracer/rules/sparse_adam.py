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
explain reads an element with a zero gradient as absent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import Line, Rule, num
from ._shared import MAXIMIZE, MOMENT1, MOMENT2, gradient, hparam, pair, read, step_of, value

LINES = (
    MAXIMIZE,
    Line("for the rows present in the sparse g only:", r"\text{for the rows present in the sparse } g_t \text{ only:}"),
    MOMENT1,
    MOMENT2,
    Line(
        "θ ← θ − γ·√(1 − β₂ᵗ)/(1 − β₁ᵗ)·m / (√v + ε)",
        r"\theta_t \leftarrow \theta_{t-1} - \gamma \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t}"
        r" \frac{m_t}{\sqrt{v_t} + \epsilon}",
        explain="γ·√(1 − β₂ᵗ)/(1 − β₁ᵗ): {lr} · √(1 − {beta2}^{t}) / (1 − {beta1}^{t}) = {step_size!n}",
    ),
)


def present(grad: Tensor) -> Tensor:
    """Which entries the sparse gradient held: whole rows (dim 0) with any nonzero entry."""
    nonzero = grad != 0
    if grad.dim() < 2:
        return nonzero
    rows = nonzero.flatten(1).any(dim=1)
    return rows.view(-1, *([1] * (grad.dim() - 1))).expand_as(grad)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `torch.optim._functional.sparse_adam` on the entries `present` finds."""
    beta1, beta2 = pair(hparams, "betas")
    step = step_of(state) + 1
    parts: dict = {"beta1": beta1, "beta2": beta2, "t": int(step)}
    g = gradient(param, grad, hparams, parts)
    old_exp_avg = read(parts, state, "exp_avg", param)
    old_exp_avg_sq = read(parts, state, "exp_avg_sq", param)
    numer = parts["m"] = g.sub(old_exp_avg).mul(1 - beta1).add(old_exp_avg)
    second = parts["v"] = g.pow(2).sub(old_exp_avg_sq).mul(1 - beta2).add(old_exp_avg_sq)
    denom = second.sqrt().add(value(hparams, "eps"))
    step_size = parts["step_size"] = hparam(hparams, "lr") * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    parts["param"] = torch.where(present(grad), param.add(-step_size * numer.div(denom)), param)
    return parts


class _SparseAdamRule(Rule):
    """An element whose gradient is zero was not in the sparse gradient: it does not move."""

    def explain(
        self, label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict
    ) -> list[str]:
        if grad == 0:
            return [f"{label}: not in the sparse gradient, unchanged = {num(param)}"]
        return super().explain(label, param, grad, state, hparams)


RULE = _SparseAdamRule(
    optimizer="SparseAdam",
    lines=LINES,
    compute=compute,
    result="{label}: {param} − {step_size} · {m} / (√{v} + ε) = {new!n}",
    symbols={"lr": "γ", "betas": "β₁, β₂", "eps": "ε"},
    note=(
        "Only the entries present in the sparse gradient change. From the densified gradient, "
        "a row (slice along dim 0) counts as present when any entry is nonzero; a looked-up row "
        "whose gradient is exactly zero is mispredicted as untouched."
    ),
)
