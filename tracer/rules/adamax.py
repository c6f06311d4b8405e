"""Rule for `torch.optim.Adamax` (Adam with an infinity-norm second moment)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Line, Rule
from ._shared import L2, MAXIMIZE, MOMENT1, gradient, hparam, pair, read, step_of, value

LINES = (
    MAXIMIZE,
    L2,
    MOMENT1,
    Line(
        "u ← max(β₂·u, |g| + ε)",
        r"u_t \leftarrow \max(\beta_2 u_{t-1}, |g_t| + \epsilon)",
        explain="u: max({beta2} · {exp_inf}, |{g}| + {eps}) = {u!n}",
    ),
    Line(
        "θ ← θ − γ·m / ((1 − β₁ᵗ)·u)",
        r"\theta_t \leftarrow \theta_{t-1} - \frac{\gamma m_t}{(1 - \beta_1^t) u_t}",
    ),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_adamax` (non-capturable branch) for one tensor."""
    beta1, beta2 = pair(hparams, "betas")
    step = step_of(state) + 1
    parts: dict = {"beta1": beta1, "beta2": beta2, "t": int(step)}
    g = gradient(param, grad, hparams, parts)
    exp_avg = parts["m"] = read(parts, state, "exp_avg", param).lerp(g, 1 - beta1)
    norm_buf = g.abs().add(value(hparams, "eps"))
    exp_inf = parts["u"] = torch.maximum(read(parts, state, "exp_inf", param).mul(beta2), norm_buf)
    clr = hparam(hparams, "lr") / (1 - beta1**step)
    parts["param"] = param.addcdiv(exp_avg, exp_inf, value=-clr)
    return parts


RULE = Rule(
    optimizer="Adamax",
    lines=LINES,
    compute=compute,
    result="{label}: {param} − {lr} · {m} / ((1 − {beta1}^{t}) · {u}) = {new!n}",
    symbols={"lr": "γ", "betas": "β₁, β₂", "eps": "ε", "weight_decay": "λ"},
)
