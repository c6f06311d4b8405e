"""Rule for `torch.optim.Adam` and `torch.optim.AdamW` (AdamW is Adam with decoupled weight decay)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ._base import (
    MINUS,
    Rule,
    arg,
    decay_lines,
    ema_line,
    final_line,
    flag,
    grad_lines,
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

SYMBOLS = {"lr": "γ", "betas": "β₁, β₂", "eps": "ε", "weight_decay": "λ"}


def text(hparams: dict) -> str:
    """The Adam/AdamW rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    lines += decay_lines(hparams, text=True)
    lines += [
        "m ← β₁·m + (1 − β₁)·g",
        "v ← β₂·v + (1 − β₂)·g²",
        "m̂ ← m / (1 − β₁ᵗ)",
    ]
    if flag(hparams, "amsgrad"):
        lines += ["vₘₐₓ ← max(vₘₐₓ, v)", "v̂ ← vₘₐₓ / (1 − β₂ᵗ)"]
    else:
        lines.append("v̂ ← v / (1 − β₂ᵗ)")
    lines.append("θ ← θ − γ·m̂ / (√v̂ + ε)")
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The Adam/AdamW rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    lines += decay_lines(hparams, text=False)
    lines += [
        r"m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t",
        r"v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2",
        r"\widehat{m_t} \leftarrow m_t / (1 - \beta_1^t)",
    ]
    if flag(hparams, "amsgrad"):
        lines += [
            r"v_t^{max} \leftarrow \max(v_{t-1}^{max}, v_t)",
            r"\widehat{v_t} \leftarrow v_t^{max} / (1 - \beta_2^t)",
        ]
    else:
        lines.append(r"\widehat{v_t} \leftarrow v_t / (1 - \beta_2^t)")
    lines.append(r"\theta_t \leftarrow \theta_{t-1} - \gamma \widehat{m_t} / (\sqrt{\widehat{v_t}} + \epsilon)")
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_adam` (non-capturable branch) for one tensor."""
    lr = value(hparams, "lr")
    beta1, beta2 = pair(hparams, "betas")
    eps = value(hparams, "eps")
    weight_decay = value(hparams, "weight_decay")
    step = step_of(state) + 1
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    if weight_decay != 0:
        if flag(hparams, "decoupled_weight_decay"):
            param = parts["param_wd"] = param.mul(1 - lr * weight_decay)
        else:
            g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    exp_avg = parts["m"] = state_or(state, "exp_avg", param).lerp(g, 1 - beta1)
    exp_avg_sq = parts["v"] = state_or(state, "exp_avg_sq", param).mul(beta2).addcmul(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    if flag(hparams, "amsgrad"):
        exp_avg_sq = parts["v_max"] = torch.maximum(state_or(state, "max_exp_avg_sq", param), exp_avg_sq)
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add(eps)
    parts["param"] = param.addcdiv(exp_avg, denom, value=-step_size)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one Adam/AdamW step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's Adam/AdamW step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    lr = value(hparams, "lr")
    beta1, beta2 = pair(hparams, "betas")
    weight_decay = value(hparams, "weight_decay")
    step = int(step_of(state)) + 1
    lines = grad_lines(grad, parts, weight_decay, param)
    if "param_wd" in parts:
        lines.append(f"θ: {arg(param)} · (1 {MINUS} {arg(lr)} · {arg(weight_decay)}) = {num(item(parts['param_wd']))}")
    g_used = item(parts.get("g_wd", parts.get("g_max", g)))
    m, v = item(parts["m"]), item(parts["v"])
    lines.append(ema_line("m", beta1, state.get("exp_avg", 0.0), g_used, parts["m"]))
    lines.append(ema_line("v", beta2, state.get("exp_avg_sq", 0.0), g_used, parts["v"], square=True))
    if "v_max" in parts:
        lines.append(f"vₘₐₓ: max({arg(state.get('max_exp_avg_sq', 0.0))}, {arg(v)}) = {num(item(parts['v_max']))}")
        v = item(parts["v_max"])
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    lines.append(f"m̂: {arg(m)} / (1 {MINUS} {arg(beta1)}^{step}) = {num(m_hat)}")
    lines.append(f"v̂: {arg(v)} / (1 {MINUS} {arg(beta2)}^{step}) = {num(v_hat)}")
    theta = item(parts.get("param_wd", p))
    eps = value(hparams, "eps")
    arithmetic = f"{arg(theta)} {MINUS} {arg(lr)} · {arg(m_hat)} / (√{arg(v_hat)} + {arg(eps)})"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="Adam", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
ADAMW_RULE = dataclasses.replace(RULE, optimizer="AdamW")
