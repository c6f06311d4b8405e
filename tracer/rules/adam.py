"""Rule for `torch.optim.Adam` and `torch.optim.AdamW` (AdamW is Adam with decoupled weight decay)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ._base import Line, Rule, ema, flag
from ._shared import (
    DECAY,
    MAXIMIZE,
    MOMENT1,
    MOMENT2,
    decayed,
    pair,
    read,
    step_of,
    value,
)

V = ema("v", "beta2", "exp_avg_sq", "g", "v", square=True)
VMAX = "vₘₐₓ: max({max_exp_avg_sq}, {v}) = {v_max!n}"

LINES = (
    MAXIMIZE,
    *DECAY,
    MOMENT1,
    # torch takes vₘₐₓ right after v, before the bias corrections: explained in that order
    dataclasses.replace(MOMENT2, explain=lambda v: (V, VMAX) if v.on("amsgrad") else V),
    Line(
        "m̂ ← m / (1 − β₁ᵗ)",
        r"\widehat{m_t} \leftarrow m_t / (1 - \beta_1^t)",
        explain="m̂: {m} / (1 − {beta1}^{t}) = {m_hat!n}",
    ),
    Line("vₘₐₓ ← max(vₘₐₓ, v)", r"v_t^{max} \leftarrow \max(v_{t-1}^{max}, v_t)", when="amsgrad"),
    Line(
        "v̂ ← vₘₐₓ / (1 − β₂ᵗ)",
        r"\widehat{v_t} \leftarrow v_t^{max} / (1 - \beta_2^t)",
        when="amsgrad",
        explain="v̂: {v_max} / (1 − {beta2}^{t}) = {v_hat!n}",
    ),
    Line(
        "v̂ ← v / (1 − β₂ᵗ)",
        r"\widehat{v_t} \leftarrow v_t / (1 - \beta_2^t)",
        when="not amsgrad",
        explain="v̂: {v} / (1 − {beta2}^{t}) = {v_hat!n}",
    ),
    Line(
        "θ ← θ − γ·m̂ / (√v̂ + ε)",
        r"\theta_t \leftarrow \theta_{t-1} - \gamma \widehat{m_t} / (\sqrt{\widehat{v_t}} + \epsilon)",
    ),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_adam` (non-capturable branch) for one tensor."""
    beta1, beta2 = pair(hparams, "betas")
    step = step_of(state) + 1
    parts: dict = {"beta1": beta1, "beta2": beta2, "t": int(step)}
    param, g = decayed(param, grad, hparams, parts)
    exp_avg = parts["m"] = read(parts, state, "exp_avg", param).lerp(g, 1 - beta1)
    exp_avg_sq = parts["v"] = read(parts, state, "exp_avg_sq", param).mul(beta2).addcmul(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    if flag(hparams, "amsgrad"):
        exp_avg_sq = parts["v_max"] = torch.maximum(read(parts, state, "max_exp_avg_sq", param), exp_avg_sq)
    parts["m_hat"] = lambda: exp_avg / bias_correction1  # for explain only: torch folds them into the step
    parts["v_hat"] = lambda: exp_avg_sq / bias_correction2
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add(value(hparams, "eps"))
    parts["param"] = param.addcdiv(exp_avg, denom, value=-value(hparams, "lr") / bias_correction1)
    return parts


RULE = Rule(
    optimizer="Adam",
    lines=LINES,
    compute=compute,
    result="{label}: {theta} − {lr} · {m_hat} / (√{v_hat} + {eps}) = {new!n}",
    symbols={"lr": "γ", "betas": "β₁, β₂", "eps": "ε", "weight_decay": "λ"},
)
ADAMW_RULE = dataclasses.replace(RULE, optimizer="AdamW")
