"""Rule for `torch.optim.Adamax` (Adam with an infinity-norm second moment)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import (
    MINUS,
    Rule,
    arg,
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
    """The Adamax rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append("g ← g + λ·θ")
    lines += [
        "m ← β₁·m + (1 − β₁)·g",
        "u ← max(β₂·u, |g| + ε)",
        "θ ← θ − γ·m / ((1 − β₁ᵗ)·u)",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The Adamax rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append(r"g_t \leftarrow g_t + \lambda \theta_{t-1}")
    lines += [
        r"m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t",
        r"u_t \leftarrow \max(\beta_2 u_{t-1}, |g_t| + \epsilon)",
        r"\theta_t \leftarrow \theta_{t-1} - \frac{\gamma m_t}{(1 - \beta_1^t) u_t}",
    ]
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_adamax` (non-capturable branch) for one tensor."""
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
        g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    exp_avg = parts["m"] = state_or(state, "exp_avg", param).lerp(g, 1 - beta1)
    exp_inf = parts["u"] = torch.maximum(state_or(state, "exp_inf", param).mul(beta2), g.abs().add(eps))
    clr = lr / (1 - beta1**step)
    parts["param"] = param.addcdiv(exp_avg, exp_inf, value=-clr)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one Adamax step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's Adamax step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    lr = value(hparams, "lr")
    beta1, beta2 = pair(hparams, "betas")
    eps = value(hparams, "eps")
    step = int(step_of(state)) + 1
    lines = grad_lines(grad, parts, value(hparams, "weight_decay"), param)
    g_used = item(parts.get("g_wd", parts.get("g_max", g)))
    lines.append(ema_line("m", beta1, state.get("exp_avg", 0.0), g_used, parts["m"]))
    u_old = state.get("exp_inf", 0.0)
    lines.append(f"u: max({arg(beta2)} · {arg(u_old)}, |{arg(g_used)}| + {arg(eps)}) = {num(item(parts['u']))}")
    arithmetic = (
        f"{arg(param)} {MINUS} {arg(lr)} · {arg(item(parts['m']))}"
        f" / ((1 {MINUS} {arg(beta1)}^{step}) · {arg(item(parts['u']))})"
    )
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="Adamax", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
