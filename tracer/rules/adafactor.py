"""Rule for `torch.optim.Adafactor` (factored second moment for ≥2-D parameters).

With ``eps=(None, ε₂)`` torch uses ``torch.finfo(param.dtype).eps`` for ε₁:
predict takes the eps of the dtype the trace recorded for the parameter
(float64 where none is known). ε₁ only matters once the second-moment
estimates fall near ε₁² (or their row mean near ε₁).

Its lines and compute follow the common pattern, its explain does not: α (from
the RMS of the whole parameter), the clipping by RMS(U) and, for a matrix, the
row and column factors are statistics of the whole tensor, which one element's
values cannot reproduce; explain shows the element's share and names the rest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import MINUS, Line, Rule, arg, flag, item, no_grad_line, num
from ._shared import gradient, param_dtype, state_or, step_of, value

LINES = (
    Line("G ← −G", r"G_t \leftarrow -G_t", when="maximize"),
    Line(
        "β̂₂ ← 1 − t^τ,  ρ ← min(γ, 1/√t),  α ← max(ε₂, RMS(θ))·ρ",
        r"\widehat{\beta}_{2_t} \leftarrow 1 - t^{\tau}, \; \rho_t \leftarrow \min(\gamma, 1/\sqrt{t}), \;"
        r" \alpha_t \leftarrow \max(\epsilon_2, \text{RMS}(\theta_{t-1})) \rho_t",
    ),
    Line("θ ← θ − γ·λ·θ", r"\theta_t \leftarrow \theta_{t-1} - \gamma \lambda \theta_{t-1}", when="weight_decay"),
    Line("if θ has 2 or more dims (factored over the last two):", None),
    Line("    R ← β̂₂·R + (1 − β̂₂)·(row means of G²),  C ← β̂₂·C + (1 − β̂₂)·(column means of G²)", None),
    Line(
        "    V̂ ← R·C / max(mean(R), ε₁)",
        r"\text{if } \dim(G_t) > 1: \; R_t \leftarrow \widehat{\beta}_{2_t} R_{t-1} + (1 - \widehat{\beta}_{2_t})"
        r" (G_t \odot G_t) \cdot 1_m, \; C_t \leftarrow \widehat{\beta}_{2_t} C_{t-1} + (1 - \widehat{\beta}_{2_t})"
        r" 1^\top_n \cdot (G_t \odot G_t), \;"
        r" \widehat{V}_t \leftarrow \frac{R_t \cdot C_t}{\max(1^\top_n \cdot R_t, \epsilon_1)}",
    ),
    Line(
        "else:  V̂ ← β̂₂·V̂ + (1 − β̂₂)·G²",
        r"\text{else}: \; \widehat{V}_t \leftarrow \widehat{\beta}_{2_t} \widehat{V}_{t-1}"
        r" + (1 - \widehat{\beta}_{2_t}) (G_t \odot G_t)",
    ),
    Line(
        "U ← G / max(√V̂, ε₁),  Û ← U / max(1, RMS(U)/d)",
        r"U_t \leftarrow \frac{G_t}{\max(\sqrt{\widehat{V}_t}, \epsilon_1)}, \;"
        r" \widehat{U}_t \leftarrow \frac{U_t}{\max(1, \text{RMS}(U_t)/d)}",
    ),
    Line("θ ← θ − α·Û", r"\theta_t \leftarrow \theta_t - \alpha_t \widehat{U}_t"),
)


def _eps1(hparams: dict) -> float:
    """ε₁: the group's value, or the machine epsilon of the parameter's recorded dtype."""
    eps1 = hparams["eps"][0]
    if eps1 is not None:
        return item(eps1)
    return torch.finfo(param_dtype(hparams)).eps


def _factor(state: dict, key: str, shape: list[int]) -> Tensor:
    """A row or column factor from the state, or zeros of its reduced shape."""
    got = state.get(key)
    return torch.zeros(shape, dtype=torch.float64) if got is None else got.to(torch.float64)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_adafactor` for one tensor."""
    lr, weight_decay = value(hparams, "lr"), value(hparams, "weight_decay")
    eps1, eps2 = _eps1(hparams), item(hparams["eps"][1])
    step = step_of(state) + 1
    parts: dict = {}
    g = gradient(param, grad, hparams, parts, l2=False)  # its weight decay is decoupled, below
    one_minus_beta2_t = step ** value(hparams, "beta2_decay")
    rho_t = min(lr, 1 / (step**0.5))
    alpha = parts["alpha"] = max(eps2, param.norm(2).item() / (param.numel() ** 0.5)) * rho_t
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
    denom = parts["clip"] = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * value(hparams, "d")))
    parts["param"] = param.add(update, alpha=-alpha / denom)
    return parts


class _AdafactorRule(Rule):
    """Adafactor's explain: the element's share of the step; α and the clipping need the whole tensor."""

    def explain(
        self, label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict
    ) -> list[str]:
        """``state`` may hold ``variance`` (vectors) or ``row_var``/``col_var`` (this
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
            old = state["variance"]
            v_hat = beta2_hat * old + one_minus * g * g
            lines.append(f"V̂: {arg(beta2_hat)} · {arg(old)} + {arg(one_minus)} · {arg(g)}² = {num(v_hat)}")
            u = g / max(v_hat**0.5, _eps1(hparams))
            lines.append(f"U: {arg(g)} / √{arg(v_hat)} = {num(u)}")
        elif "row_var" in state or "col_var" in state:
            for name, key, along in (("R", "row_var", "row"), ("C", "col_var", "column")):
                before = arg(state.get(key, 0.0))
                lines.append(f"{name}: {arg(beta2_hat)} · {before} + {arg(one_minus)} · mean(G²) over this {along}")
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


RULE = _AdafactorRule(
    optimizer="Adafactor",
    lines=LINES,
    compute=compute,
    symbols={"lr": "γ", "beta2_decay": "τ", "eps": "ε₁, ε₂", "d": "d", "weight_decay": "λ"},
    note=(
        "explain shows one element's arithmetic; α (from the RMS of the whole parameter), "
        "the clipping by RMS(U) and, for matrices, the mean of the row factor need the whole tensor."
    ),
)
