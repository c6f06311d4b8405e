"""Rule for `torch.optim.NAdam` (Nesterov Adam, momentum decay, optional decoupled weight decay).

NAdam keeps ``mu_product`` (the running product of the momentum schedule
μ₁·…·μₜ) in a scalar state tensor whose dtype is float32 unless the default
dtype is float64; predict rounds it the same way (see `_base.scalar_dtype`).
"""

from __future__ import annotations

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
    scalar_dtype,
    scalars,
    state_or,
    step_of,
    text_lines,
    value,
)

SYMBOLS = {"lr": "γ", "betas": "β₁, β₂", "eps": "ε", "weight_decay": "λ", "momentum_decay": "ψ"}


def text(hparams: dict) -> str:
    """The NAdam rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    lines += decay_lines(hparams, text=True)
    lines += [
        "μₜ ← β₁·(1 − ½·0.96^(t·ψ)),  μₜ₊₁ ← β₁·(1 − ½·0.96^((t+1)·ψ))",
        "m ← β₁·m + (1 − β₁)·g",
        "v ← β₂·v + (1 − β₂)·g²",
        "v̂ ← v / (1 − β₂ᵗ)",
        "θ ← θ − γ·(1 − μₜ)/(1 − Πᵢ₌₁ᵗ μᵢ)·g / (√v̂ + ε) − γ·μₜ₊₁/(1 − Πᵢ₌₁ᵗ⁺¹ μᵢ)·m / (√v̂ + ε)",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The NAdam rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    lines += decay_lines(hparams, text=False)
    lines += [
        r"\mu_t \leftarrow \beta_1 \big(1 - \frac{1}{2} 0.96^{t \psi}\big), \;"
        r" \mu_{t+1} \leftarrow \beta_1 \big(1 - \frac{1}{2} 0.96^{(t+1) \psi}\big)",
        r"m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t",
        r"v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2",
        r"\widehat{v_t} \leftarrow v_t / (1 - \beta_2^t)",
        r"\theta_t \leftarrow \theta_{t-1} - \gamma \frac{1 - \mu_t}{1 - \prod_{i=1}^{t} \mu_i}"
        r" \frac{g_t}{\sqrt{\widehat{v_t}} + \epsilon} - \gamma \frac{\mu_{t+1}}{1 - \prod_{i=1}^{t+1} \mu_i}"
        r" \frac{m_t}{\sqrt{\widehat{v_t}} + \epsilon}",
    ]
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_nadam` (non-capturable branch) for one tensor."""
    lr = value(hparams, "lr")
    beta1, beta2 = pair(hparams, "betas")
    eps = value(hparams, "eps")
    weight_decay = value(hparams, "weight_decay")
    momentum_decay = value(hparams, "momentum_decay")
    step = step_of(state) + 1
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    bias_correction2 = 1 - beta2**step
    if weight_decay != 0:
        if flag(hparams, "decoupled_weight_decay"):
            param = parts["param_wd"] = param.mul(1 - lr * weight_decay)
        else:
            g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    old_product = state.get("mu_product")
    mu_product_t = torch.tensor(1.0 if old_product is None else item(old_product), dtype=scalar_dtype())
    mu_product_t *= mu  # in the scalar state's dtype, as torch does
    mu_product = mu_product_t.item()
    parts["mu"], parts["mu_next"], parts["mu_product"] = (torch.tensor(x, dtype=torch.float64) for x in (mu, mu_next, mu_product))
    exp_avg = parts["m"] = state_or(state, "exp_avg", param).lerp(g, 1 - beta1)
    exp_avg_sq = parts["v"] = state_or(state, "exp_avg_sq", param).mul(beta2).addcmul(g, g, value=1 - beta2)
    denom = exp_avg_sq.div(bias_correction2).sqrt()
    mu_product_next = mu_product * mu_next
    denom = parts["denom"] = denom.add(eps)
    param = param.addcdiv(g, denom, value=(-lr * (1.0 - mu) / (1.0 - mu_product)))
    parts["param"] = param.addcdiv(exp_avg, denom, value=(-lr * mu_next) / (1.0 - mu_product_next))
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one NAdam step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's NAdam step as hand arithmetic."""
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
    mu, mu_next, product = item(parts["mu"]), item(parts["mu_next"]), item(parts["mu_product"])
    old_product = state.get("mu_product", 1.0)
    lines.append(f"μₜ: {num(mu)},  μₜ₊₁: {num(mu_next)},  Πμ: {arg(old_product)} · {arg(mu)} = {num(product)}")
    lines.append(ema_line("m", beta1, state.get("exp_avg", 0.0), g_used, parts["m"]))
    lines.append(ema_line("v", beta2, state.get("exp_avg_sq", 0.0), g_used, parts["v"], square=True))
    lines.append(f"√v̂ + ε: √({arg(item(parts['v']))} / (1 {MINUS} {arg(beta2)}^{step})) + ε = {num(item(parts['denom']))}")
    theta = item(parts.get("param_wd", p))
    denom = item(parts["denom"])
    c1 = lr * (1 - mu) / (1 - product)
    c2 = lr * mu_next / (1 - product * mu_next)
    arithmetic = (
        f"{arg(theta)} {MINUS} {arg(c1)} · {arg(g_used)} / {arg(denom)}"
        f" {MINUS} {arg(c2)} · {arg(item(parts['m']))} / {arg(denom)}"
    )
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="NAdam", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
