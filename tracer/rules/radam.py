"""Rule for `torch.optim.RAdam` (rectified Adam: plain momentum SGD until ρₜ > 5)."""

from __future__ import annotations

from torch import Tensor

from ._base import Line, Rule
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

RECTIFIED = (
    "ρₜ: {rho_t!n} > 5, so rectified: r = {rect!n}",
    "√(1 − β₂ᵗ)/(√v + ε): √(1 − {beta2}^{t}) / (√{v} + ε) = {adaptive_lr!n}",
)

LINES = (
    MAXIMIZE,
    *DECAY,
    MOMENT1,
    MOMENT2,
    Line(
        "m̂ ← m / (1 − β₁ᵗ)",
        r"\widehat{m_t} \leftarrow m_t / (1 - \beta_1^t)",
        explain="m̂: {m} / (1 − {beta1}^{t}) = {m_hat!n}",
    ),
    Line(
        "ρ∞ ← 2/(1 − β₂) − 1,  ρₜ ← ρ∞ − 2·t·β₂ᵗ/(1 − β₂ᵗ)",
        r"\rho_\infty \leftarrow 2/(1 - \beta_2) - 1, \;"
        r" \rho_t \leftarrow \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)",
    ),
    Line(
        "if ρₜ > 5:  r ← √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ)),  θ ← θ − γ·m̂·r·√(1 − β₂ᵗ)/(√v + ε)",
        r"\text{if } \rho_t > 5: \; r_t \leftarrow \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}"
        r"{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}, \;"
        r" \theta_t \leftarrow \theta_{t-1} - \gamma \widehat{m_t} r_t"
        r" \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}",
        explain=lambda v: RECTIFIED if v["rectified"] else None,
    ),
    Line(
        "else:  θ ← θ − γ·m̂",
        r"\text{else}: \; \theta_t \leftarrow \theta_{t-1} - \gamma \widehat{m_t}",
        explain=lambda v: None if v["rectified"] else "ρₜ: {rho_t!n} ≤ 5, so not rectified",
    ),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_radam` (non-capturable branch) for one tensor."""
    lr = value(hparams, "lr")
    beta1, beta2 = pair(hparams, "betas")
    step = step_of(state) + 1
    parts: dict = {"beta1": beta1, "beta2": beta2, "t": int(step)}
    param, g = decayed(param, grad, hparams, parts)
    exp_avg = parts["m"] = read(parts, state, "exp_avg", param).lerp(g, 1 - beta1)
    exp_avg_sq = parts["v"] = read(parts, state, "exp_avg_sq", param).mul(beta2).addcmul(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    bias_corrected_exp_avg = parts["m_hat"] = exp_avg / bias_correction1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = parts["rho_t"] = rho_inf - 2 * step * (beta2**step) / bias_correction2
    parts["rectified"] = rho_t > 5.0
    if rho_t > 5.0:
        rect = parts["rect"] = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive_lr = parts["adaptive_lr"] = (bias_correction2**0.5) / exp_avg_sq.sqrt().add(value(hparams, "eps"))
        parts["param"] = param.add(bias_corrected_exp_avg * lr * adaptive_lr * rect, alpha=-1.0)
    else:
        parts["param"] = param.add(bias_corrected_exp_avg * lr, alpha=-1.0)
    return parts


RULE = Rule(
    optimizer="RAdam",
    lines=LINES,
    compute=compute,
    result=lambda v: (
        "{label}: {theta} − {m_hat} · {lr} · {adaptive_lr} · {rect} = {new!n}"
        if v["rectified"]
        else "{label}: {theta} − {m_hat} · {lr} = {new!n}"
    ),
    symbols={"lr": "γ", "betas": "β₁, β₂", "eps": "ε", "weight_decay": "λ"},
)
