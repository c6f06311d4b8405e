"""Rule for `torch.optim.Adadelta` (ρ, ε, weight decay, lr scaling of the delta)."""

from __future__ import annotations

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
    scalars,
    state_or,
    text_lines,
    value,
)

SYMBOLS = {"lr": "γ", "rho": "ρ", "eps": "ε", "weight_decay": "λ"}


def text(hparams: dict) -> str:
    """The Adadelta rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append("g ← g + λ·θ")
    lines += [
        "v ← ρ·v + (1 − ρ)·g²",
        "Δx ← √(u + ε) / √(v + ε) · g",
        "u ← ρ·u + (1 − ρ)·Δx²",
        "θ ← θ − γ·Δx",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The Adadelta rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append(r"g_t \leftarrow g_t + \lambda \theta_{t-1}")
    lines += [
        r"v_t \leftarrow \rho v_{t-1} + (1 - \rho) g_t^2",
        r"\Delta x_t \leftarrow \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t",
        r"u_t \leftarrow \rho u_{t-1} + (1 - \rho) \Delta x_t^2",
        r"\theta_t \leftarrow \theta_{t-1} - \gamma \Delta x_t",
    ]
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_adadelta` for one tensor."""
    lr = value(hparams, "lr")
    rho = value(hparams, "rho")
    eps = value(hparams, "eps")
    weight_decay = value(hparams, "weight_decay")
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    if weight_decay != 0:
        g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    square_avg = parts["v"] = state_or(state, "square_avg", param).mul(rho).addcmul(g, g, value=1 - rho)
    std = square_avg.add(eps).sqrt()
    delta = state_or(state, "acc_delta", param).add(eps).sqrt()
    delta = parts["delta"] = delta.div(std).mul(g)
    parts["u"] = state_or(state, "acc_delta", param).mul(rho).addcmul(delta, delta, value=1 - rho)
    parts["param"] = param.add(delta, alpha=-lr)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one Adadelta step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's Adadelta step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    lr = value(hparams, "lr")
    rho = value(hparams, "rho")
    eps = value(hparams, "eps")
    lines = grad_lines(grad, parts, value(hparams, "weight_decay"), param)
    g_used = item(parts.get("g_wd", parts.get("g_max", g)))
    lines.append(ema_line("v", rho, state.get("square_avg", 0.0), g_used, parts["v"], square=True))
    u_old = state.get("acc_delta", 0.0)
    delta = item(parts["delta"])
    lines.append(
        f"Δx: √({arg(u_old)} + {arg(eps)}) / √({arg(item(parts['v']))} + {arg(eps)}) · {arg(g_used)} = {num(delta)}"
    )
    lines.append(ema_line("u", rho, u_old, delta, parts["u"], square=True))
    lines.append(final_line(label, f"{arg(param)} {MINUS} {arg(lr)} · {arg(delta)}", parts["param"]))
    return lines


RULE = Rule(optimizer="Adadelta", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
