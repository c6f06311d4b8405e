"""Rule for `torch.optim.RAdam` (rectified Adam: plain momentum SGD until ρₜ > 5)."""

from __future__ import annotations

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
    """The RAdam rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    lines += decay_lines(hparams, text=True)
    lines += [
        "m ← β₁·m + (1 − β₁)·g",
        "v ← β₂·v + (1 − β₂)·g²",
        "m̂ ← m / (1 − β₁ᵗ)",
        "ρ∞ ← 2/(1 − β₂) − 1,  ρₜ ← ρ∞ − 2·t·β₂ᵗ/(1 − β₂ᵗ)",
        "if ρₜ > 5:  r ← √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ)),  θ ← θ − γ·m̂·r·√(1 − β₂ᵗ)/(√v + ε)",
        "else:  θ ← θ − γ·m̂",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The RAdam rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    lines += decay_lines(hparams, text=False)
    lines += [
        r"m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t",
        r"v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2",
        r"\widehat{m_t} \leftarrow m_t / (1 - \beta_1^t)",
        r"\rho_\infty \leftarrow 2/(1 - \beta_2) - 1, \; \rho_t \leftarrow \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)",
        r"\text{if } \rho_t > 5: \; r_t \leftarrow \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}"
        r"{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}, \;"
        r" \theta_t \leftarrow \theta_{t-1} - \gamma \widehat{m_t} r_t \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}",
        r"\text{else}: \; \theta_t \leftarrow \theta_{t-1} - \gamma \widehat{m_t}",
    ]
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_radam` (non-capturable branch) for one tensor."""
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
    bias_corrected_exp_avg = parts["m_hat"] = exp_avg / bias_correction1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    parts["rho_t"] = param.new_tensor(rho_t)
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive_lr = parts["adaptive_lr"] = (bias_correction2**0.5) / exp_avg_sq.sqrt().add(eps)
        parts["rect"] = param.new_tensor(rect)
        parts["param"] = param.add(bias_corrected_exp_avg * lr * adaptive_lr * rect, alpha=-1.0)
    else:
        parts["param"] = param.add(bias_corrected_exp_avg * lr, alpha=-1.0)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one RAdam step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's RAdam step as hand arithmetic."""
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
    lines.append(ema_line("m", beta1, state.get("exp_avg", 0.0), g_used, parts["m"]))
    lines.append(ema_line("v", beta2, state.get("exp_avg_sq", 0.0), g_used, parts["v"], square=True))
    m_hat = item(parts["m_hat"])
    lines.append(f"m̂: {arg(item(parts['m']))} / (1 {MINUS} {arg(beta1)}^{step}) = {num(m_hat)}")
    theta = item(parts.get("param_wd", p))
    rho_t = item(parts["rho_t"])
    if "rect" in parts:
        lines.append(f"ρₜ: {num(rho_t)} > 5, so rectified: r = {num(item(parts['rect']))}")
        adaptive = item(parts["adaptive_lr"])
        lines.append(
            f"√(1 − β₂ᵗ)/(√v + ε): √(1 {MINUS} {arg(beta2)}^{step}) / (√{arg(item(parts['v']))} + ε) = {num(adaptive)}"
        )
        arithmetic = f"{arg(theta)} {MINUS} {arg(m_hat)} · {arg(lr)} · {arg(adaptive)} · {arg(item(parts['rect']))}"
    else:
        lines.append(f"ρₜ: {num(rho_t)} ≤ 5, so not rectified")
        arithmetic = f"{arg(theta)} {MINUS} {arg(m_hat)} · {arg(lr)}"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="RAdam", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
