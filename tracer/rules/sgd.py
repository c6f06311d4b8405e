"""Rule for `torch.optim.SGD` (momentum, dampening, Nesterov, weight decay, maximize)."""

from __future__ import annotations

from torch import Tensor

from ._base import (
    MINUS,
    Rule,
    arg,
    final_line,
    flag,
    grad_lines,
    item,
    latex_lines,
    no_grad_line,
    num,
    scalars,
    text_lines,
    value,
)

SYMBOLS = {"lr": "γ", "momentum": "μ", "dampening": "τ", "weight_decay": "λ"}


def text(hparams: dict) -> str:
    """The SGD rule in plain text for these hparams."""
    lines = []
    if flag(hparams, "maximize"):
        lines.append("g ← −g")
    if value(hparams, "weight_decay"):
        lines.append("g ← g + λ·θ")
    if value(hparams, "momentum"):
        damped = "(1 − τ)·g" if value(hparams, "dampening") else "g"
        lines.append(f"b ← μ·b + {damped}   (b ← g at t = 1)")
        lines.append("g ← g + μ·b" if flag(hparams, "nesterov") else "g ← b")
    lines.append("θ ← θ − γ·g")
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The SGD rule in LaTeX for these hparams."""
    lines = []
    if flag(hparams, "maximize"):
        lines.append(r"g_t \leftarrow -g_t")
    if value(hparams, "weight_decay"):
        lines.append(r"g_t \leftarrow g_t + \lambda \theta_{t-1}")
    if value(hparams, "momentum"):
        damped = r"(1 - \tau) g_t" if value(hparams, "dampening") else "g_t"
        lines.append(rf"b_t \leftarrow \mu b_{{t-1}} + {damped} \quad (b_1 \leftarrow g_1)")
        lines.append(r"g_t \leftarrow g_t + \mu b_t" if flag(hparams, "nesterov") else r"g_t \leftarrow b_t")
    lines.append(r"\theta_t \leftarrow \theta_{t-1} - \gamma g_t")
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_sgd` for one tensor; returns the named intermediates."""
    lr = value(hparams, "lr")
    weight_decay = value(hparams, "weight_decay")
    momentum = value(hparams, "momentum")
    dampening = value(hparams, "dampening")
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    if weight_decay != 0:
        g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = g.clone()
        else:
            buf = buf.mul(momentum).add(g, alpha=1 - dampening)
        parts["b"] = buf
        if flag(hparams, "nesterov"):
            g = parts["g_nesterov"] = g.add(buf, alpha=momentum)
        else:
            g = buf
    parts["g"] = g
    parts["param"] = param.add(g, alpha=-lr)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one SGD step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's SGD step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    lines = grad_lines(grad, parts, value(hparams, "weight_decay"), param)
    momentum = value(hparams, "momentum")
    g_in = item(parts.get("g_wd", parts.get("g_max", g)))
    if momentum != 0:
        if state.get("momentum_buffer") is None:
            lines.append(f"b: g = {num(item(parts['b']))}")
        else:
            old = state["momentum_buffer"]
            damp = 1 - value(hparams, "dampening")
            lines.append(f"b: {arg(momentum)} · {arg(old)} + {arg(damp)} · {arg(g_in)} = {num(item(parts['b']))}")
        if "g_nesterov" in parts:
            lines.append(
                f"g: {arg(g_in)} + {arg(momentum)} · {arg(item(parts['b']))} = {num(item(parts['g_nesterov']))}"
            )
    lr = value(hparams, "lr")
    arithmetic = f"{arg(param)} {MINUS} {arg(lr)} · {arg(item(parts['g']))}"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="SGD", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
