"""Rule for `torch.optim.ASGD` (averaged SGD: decay λ, power α, averaging start t₀).

The step size η and averaging weight μ live in scalar state tensors
(``eta``, ``mu``) of the scalar dtype (float32 unless the default dtype is
float64); the parameter update reads ``eta`` from the state, and a fresh state
starts with η = lr rounded to that dtype, as torch does.
"""

from __future__ import annotations

from torch import Tensor

from ._base import (
    MINUS,
    Rule,
    arg,
    as_scalar_state,
    final_line,
    flag,
    grad_lines,
    item,
    latex_lines,
    no_grad_line,
    num,
    scalars,
    state_or,
    step_of,
    text_lines,
    value,
)

SYMBOLS = {"lr": "γ", "lambd": "λ", "alpha": "α", "t0": "t₀", "weight_decay": "w"}


def text(hparams: dict) -> str:
    """The ASGD rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append("g ← g + w·θ")
    lines += [
        "θ ← θ·(1 − λ·η) − η·g   (η ← γ at t = 1)",
        "ax ← ax + μ·(θ − ax)   (ax ← θ while μ = 1)",
        "η ← γ / (1 + λ·γ·t)^α,  μ ← 1 / max(1, t − t₀)",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The ASGD rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append(r"g_t \leftarrow g_t + w \theta_{t-1}")
    lines += [
        r"\theta_t \leftarrow \theta_{t-1} (1 - \lambda \eta_t) - \eta_t g_t \quad (\eta_1 = \gamma)",
        r"ax_t \leftarrow ax_{t-1} + \mu_t (\theta_t - ax_{t-1})",
        r"\eta_{t+1} \leftarrow \gamma / (1 + \lambda \gamma t)^\alpha, \;"
        r" \mu_{t+1} \leftarrow 1 / \max(1, t - t_0)",
    ]
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_asgd` (non-capturable branch) for one tensor."""
    lr = value(hparams, "lr")
    lambd = value(hparams, "lambd")
    alpha = value(hparams, "alpha")
    t0 = value(hparams, "t0")
    weight_decay = value(hparams, "weight_decay")
    step = step_of(state) + 1
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    if weight_decay != 0:
        g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    eta = item(state["eta"]) if "eta" in state else as_scalar_state(lr)
    mu = item(state["mu"]) if "mu" in state else 1.0
    parts["eta"], parts["mu"] = param.new_tensor(eta), param.new_tensor(mu)
    param = parts["param_decay"] = param.mul(1 - lambd * eta)
    param = parts["param"] = param.add(g, alpha=-eta)
    if mu != 1:
        ax = state_or(state, "ax", param)
        parts["ax"] = ax.add(param.sub(ax).mul(mu))
    else:
        parts["ax"] = param.clone()
    parts["eta_next"] = param.new_tensor(as_scalar_state(lr / ((1 + lambd * lr * step) ** alpha)))
    parts["mu_next"] = param.new_tensor(as_scalar_state(1 / max(1, step - t0)))
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one ASGD step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's ASGD step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    lambd = value(hparams, "lambd")
    lines = grad_lines(grad, parts, value(hparams, "weight_decay"), param)
    g_used = item(parts.get("g_wd", parts.get("g_max", g)))
    eta, mu = item(parts["eta"]), item(parts["mu"])
    source = "" if "eta" in state else " (η starts at γ)"
    lines.append(f"η: {num(eta)}{source},  μ: {num(mu)}")
    if mu != 1:
        ax_old = state.get("ax", 0.0)
        lines.append(
            f"ax: {arg(ax_old)} + {arg(mu)} · ({arg(item(parts['param']))} {MINUS} {arg(ax_old)}) = {num(item(parts['ax']))}"
        )
    else:
        lines.append(f"ax: θ = {num(item(parts['ax']))}")
    arithmetic = f"{arg(param)} · (1 {MINUS} {arg(lambd)} · {arg(eta)}) {MINUS} {arg(eta)} · {arg(g_used)}"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="ASGD", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
