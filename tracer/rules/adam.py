"""Rule for `torch.optim.Adam` and `torch.optim.AdamW` (AdamW is Adam with decoupled weight decay)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ._base import Line, Rule, ema, flag, item
from ._shared import (
    DECAY,
    MAXIMIZE,
    MOMENT1,
    MOMENT2,
    decayed,
    hparam,
    hparam_pair,
    read,
    scalar_dtype,
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
    """Replay `_single_tensor_adam` for one tensor: its plain branch, or with ``capturable``
    or ``differentiable`` its tensor branch (``step`` and the bias corrections 0-d tensors of
    the scalar state's dtype). A tensor ``lr`` or ``betas`` computes in its own dtype."""
    lr = hparam(hparams, "lr")
    beta1, beta2 = hparam_pair(hparams, "betas")
    step = step_of(state) + 1
    parts: dict = {"beta1": item(beta1), "beta2": item(beta2), "t": int(step)}
    param, g = decayed(param, grad, hparams, parts)
    exp_avg = parts["m"] = read(parts, state, "exp_avg", param).lerp(g, 1 - item(beta1))
    exp_avg_sq = parts["v"] = read(parts, state, "exp_avg_sq", param).mul(beta2).addcmul(g, g, value=item(1 - beta2))
    if flag(hparams, "amsgrad"):
        exp_avg_sq = parts["v_max"] = torch.maximum(read(parts, state, "max_exp_avg_sq", param), exp_avg_sq)
    tensor_branch = flag(hparams, "capturable") or flag(hparams, "differentiable")
    t = torch.tensor(step, dtype=scalar_dtype(hparams)) if tensor_branch else step
    bias_correction1, bias_correction2 = 1 - beta1**t, 1 - beta2**t
    parts["m_hat"] = lambda: exp_avg / bias_correction1  # for explain only: torch folds them into the step
    parts["v_hat"] = lambda: exp_avg_sq / bias_correction2
    step_size = lr / bias_correction1
    eps = value(hparams, "eps")
    if tensor_branch:
        step_size_neg = torch.as_tensor(step_size).neg()
        bias_correction2_sqrt = torch.as_tensor(bias_correction2).sqrt()
        denom = (exp_avg_sq.sqrt() / (bias_correction2_sqrt * step_size_neg)).add(eps / step_size_neg)
        parts["param"] = param.addcdiv(exp_avg, denom)
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add(eps)
        parts["param"] = param.addcdiv(exp_avg, denom, value=-item(step_size))
    return parts


RULE = Rule(
    optimizer="Adam",
    lines=LINES,
    compute=compute,
    result="{label}: {theta} − {lr} · {m_hat} / (√{v_hat} + {eps}) = {new!n}",
    symbols={"lr": "γ", "betas": "β₁, β₂", "eps": "ε", "weight_decay": "λ"},
)
ADAMW_RULE = dataclasses.replace(RULE, optimizer="AdamW")
