"""Rule for `torch.optim.Adafactor` (factored second moment for ≥2-D parameters).

With ``eps=(None, ε₂)`` torch uses ``torch.finfo(param.dtype).eps`` for ε₁.
The caller's float64 cast hides the dtype, so predict takes float32's eps
when every value of the parameter and gradient is exactly a float32, and
float64's otherwise. ε₁ only matters once the second-moment estimates fall
near ε₁² (or their row mean near ε₁).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import (
    MINUS,
    Rule,
    arg,
    flag,
    item,
    latex_lines,
    looks_float32,
    no_grad_line,
    num,
    scalars,
    state_or,
    step_of,
    text_lines,
    value,
)

SYMBOLS = {"lr": "γ", "beta2_decay": "τ", "eps": "ε₁, ε₂", "d": "d", "weight_decay": "λ"}

NOTE = (
    "explain shows one element's arithmetic; α (from the RMS of the whole parameter), "
    "the clipping by RMS(U) and, for matrices, the mean of the row factor need the whole tensor."
)


def text(hparams: dict) -> str:
    """The Adafactor rule in plain text for these hparams."""
    lines = ["G ← −G"] if flag(hparams, "maximize") else []
    lines += ["β̂₂ ← 1 − t^τ,  ρ ← min(γ, 1/√t),  α ← max(ε₂, RMS(θ))·ρ"]
    if value(hparams, "weight_decay"):
        lines.append("θ ← θ − γ·λ·θ")
    lines += [
        "if θ has 2 or more dims (factored over the last two):",
        "    R ← β̂₂·R + (1 − β̂₂)·(row means of G²),  C ← β̂₂·C + (1 − β̂₂)·(column means of G²)",
        "    V̂ ← R·C / max(mean(R), ε₁)",
        "else:  V̂ ← β̂₂·V̂ + (1 − β̂₂)·G²",
        "U ← G / max(√V̂, ε₁),  Û ← U / max(1, RMS(U)/d)",
        "θ ← θ − α·Û",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The Adafactor rule in LaTeX for these hparams."""
    lines = [r"G_t \leftarrow -G_t"] if flag(hparams, "maximize") else []
    lines += [
        r"\widehat{\beta}_{2_t} \leftarrow 1 - t^{\tau}, \; \rho_t \leftarrow \min(\gamma, 1/\sqrt{t}), \;"
        r" \alpha_t \leftarrow \max(\epsilon_2, \text{RMS}(\theta_{t-1})) \rho_t"
    ]
    if value(hparams, "weight_decay"):
        lines.append(r"\theta_t \leftarrow \theta_{t-1} - \gamma \lambda \theta_{t-1}")
    lines += [
        r"\text{if } \dim(G_t) > 1: \; R_t \leftarrow \widehat{\beta}_{2_t} R_{t-1} + (1 - \widehat{\beta}_{2_t})"
        r" (G_t \odot G_t) \cdot 1_m, \; C_t \leftarrow \widehat{\beta}_{2_t} C_{t-1} + (1 - \widehat{\beta}_{2_t})"
        r" 1^\top_n \cdot (G_t \odot G_t), \; \widehat{V}_t \leftarrow \frac{R_t \cdot C_t}{\max(1^\top_n \cdot R_t, \epsilon_1)}",
        r"\text{else}: \; \widehat{V}_t \leftarrow \widehat{\beta}_{2_t} \widehat{V}_{t-1}"
        r" + (1 - \widehat{\beta}_{2_t}) (G_t \odot G_t)",
        r"U_t \leftarrow \frac{G_t}{\max(\sqrt{\widehat{V}_t}, \epsilon_1)}, \;"
        r" \widehat{U}_t \leftarrow \frac{U_t}{\max(1, \text{RMS}(U_t)/d)}",
        r"\theta_t \leftarrow \theta_t - \alpha_t \widehat{U}_t",
    ]
    return latex_lines(lines)


def _eps1(hparams: dict, param: Tensor, grad: Tensor) -> float:
    """ε₁: the group's value, or the machine epsilon of the parameter's (inferred) dtype."""
    eps1 = hparams["eps"][0]
    if eps1 is not None:
        return item(eps1)
    dtype = torch.float32 if looks_float32(param, grad) else torch.float64
    return torch.finfo(dtype).eps


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_adafactor` for one tensor."""
    lr = value(hparams, "lr")
    beta2_decay = value(hparams, "beta2_decay")
    eps1 = _eps1(hparams, param, grad)
    eps2 = item(hparams["eps"][1])
    d = value(hparams, "d")
    weight_decay = value(hparams, "weight_decay")
    step = step_of(state) + 1
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    one_minus_beta2_t = step**beta2_decay
    rho_t = min(lr, 1 / (step**0.5))
    alpha = max(eps2, param.norm(2).item() / (param.numel() ** 0.5)) * rho_t
    parts["alpha"] = param.new_tensor(alpha)
    if weight_decay != 0:
        param = parts["param_wd"] = param.mul(1 - lr * weight_decay)
    if g.dim() > 1:
        row_shape, col_shape = list(g.shape), list(g.shape)
        row_shape[-1], col_shape[-2] = 1, 1
        row_mean = torch.norm(g, dim=-1, keepdim=True).square().div(g.size(-1))
        row_var = parts["row_var"] = _factor(state, "row_var", row_shape).lerp(row_mean, one_minus_beta2_t)
        col_mean = torch.norm(g, dim=-2, keepdim=True).square().div(g.size(-2))
        col_var = parts["col_var"] = _factor(state, "col_var", col_shape).lerp(col_mean, one_minus_beta2_t)
        var_estimate = row_var @ col_var
        var_estimate = var_estimate.div(row_var.mean(dim=-2, keepdim=True).clamp(min=eps1))
    else:
        variance = parts["variance"] = state_or(state, "variance", g).lerp(g * g, one_minus_beta2_t)
        var_estimate = variance.clone()
    parts["v_hat"] = var_estimate
    update = parts["u"] = var_estimate.clamp(min=eps1 * eps1).rsqrt().mul(g)
    denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * d))
    parts["clip"] = param.new_tensor(denom)
    parts["param"] = param.add(update, alpha=-alpha / denom)
    return parts


def _factor(state: dict, key: str, shape: list[int]) -> Tensor:
    """A row or column factor from the state, or zeros of its reduced shape."""
    got = state.get(key)
    return torch.zeros(shape, dtype=torch.float64) if got is None else got.to(torch.float64)


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one Adafactor step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's share of an Adafactor step; α and the clipping need the whole tensor.

    ``state`` may hold ``variance`` (vectors) or ``row_var``/``col_var`` (this
    element's row and column factors, for matrices); with neither, the
    parameter's shape, and so the branch, is unknown and both are named.
    """
    if grad is None:
        return no_grad_line(label, param)
    g = -grad if flag(hparams, "maximize") else grad
    step = int(step_of(state)) + 1
    lr = value(hparams, "lr")
    one_minus = step ** value(hparams, "beta2_decay")
    beta2_hat = 1 - one_minus
    lines = [f"G: {MINUS}{arg(grad)} = {num(g)}"] if g != grad else []
    lines.append(f"β̂₂: 1 {MINUS} {step}^{arg(value(hparams, 'beta2_decay'))} = {num(beta2_hat)}")
    rho = min(lr, 1 / step**0.5)
    lines.append(f"ρ: min({arg(lr)}, 1/√{step}) = {num(rho)}")
    if "variance" in state:
        p, gt, _ = scalars(param, grad, state)
        old = state["variance"]
        v_hat = beta2_hat * old + one_minus * g * g
        lines.append(f"V̂: {arg(beta2_hat)} · {arg(old)} + {arg(one_minus)} · {arg(g)}² = {num(v_hat)}")
        u = g / max(v_hat**0.5, _eps1(hparams, p, gt))
        lines.append(f"U: {arg(g)} / √{arg(v_hat)} = {num(u)}")
    elif "row_var" in state or "col_var" in state:
        for name, key, along in (("R", "row_var", "row"), ("C", "col_var", "column")):
            lines.append(
                f"{name}: {arg(beta2_hat)} · {arg(state.get(key, 0.0))} + {arg(one_minus)} · mean(G²) over this {along}"
            )
        lines.append("V̂: R·C / max(mean(R), ε₁) needs every row of R")
    else:
        lines.append(
            f"V̂: {arg(beta2_hat)} · V̂ + {arg(one_minus)} · {arg(g)}² for a vector, "
            "R·C / max(mean(R), ε₁) from row and column means of G² for a matrix"
        )
    decay = value(hparams, "weight_decay")
    theta = f"{arg(param)} · (1 {MINUS} {arg(lr)} · {arg(decay)})" if decay else arg(param)
    lines.append(f"{label}: {theta} {MINUS} α · U / max(1, RMS(U)/d), α = max(ε₂, RMS(θ)) · {num(rho)}")
    return lines


RULE = Rule(
    optimizer="Adafactor", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS, note=NOTE
)
