"""Rule for `torch.optim.RMSprop` (centered, momentum, weight decay, smoothing constant α)."""

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

SYMBOLS = {"lr": "γ", "alpha": "α", "eps": "ε", "weight_decay": "λ", "momentum": "μ"}


def text(hparams: dict) -> str:
    """The RMSprop rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append("g ← g + λ·θ")
    lines.append("v ← α·v + (1 − α)·g²")
    if flag(hparams, "centered"):
        lines += ["gᵃᵛᵉ ← α·gᵃᵛᵉ + (1 − α)·g", "ṽ ← v − (gᵃᵛᵉ)²"]
        root = "√ṽ"
    else:
        root = "√v"
    if value(hparams, "momentum") > 0:
        lines += [f"b ← μ·b + g / ({root} + ε)", "θ ← θ − γ·b"]
    else:
        lines.append(f"θ ← θ − γ·g / ({root} + ε)")
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The RMSprop rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append(r"g_t \leftarrow g_t + \lambda \theta_{t-1}")
    lines.append(r"v_t \leftarrow \alpha v_{t-1} + (1 - \alpha) g_t^2")
    if flag(hparams, "centered"):
        lines += [
            r"g^{ave}_t \leftarrow \alpha g^{ave}_{t-1} + (1 - \alpha) g_t",
            r"\tilde{v_t} \leftarrow v_t - \big(g^{ave}_t\big)^2",
        ]
        root = r"\sqrt{\tilde{v_t}}"
    else:
        root = r"\sqrt{v_t}"
    if value(hparams, "momentum") > 0:
        lines += [
            rf"b_t \leftarrow \mu b_{{t-1}} + g_t / \big({root} + \epsilon\big)",
            r"\theta_t \leftarrow \theta_{t-1} - \gamma b_t",
        ]
    else:
        lines.append(rf"\theta_t \leftarrow \theta_{{t-1}} - \gamma g_t / \big({root} + \epsilon\big)")
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_rmsprop` for one tensor."""
    lr = value(hparams, "lr")
    alpha = value(hparams, "alpha")
    eps = value(hparams, "eps")
    weight_decay = value(hparams, "weight_decay")
    momentum = value(hparams, "momentum")
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    if weight_decay != 0:
        g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    square_avg = parts["v"] = state_or(state, "square_avg", param).mul(alpha).addcmul(g, g, value=1 - alpha)
    if flag(hparams, "centered"):
        grad_avg = parts["g_ave"] = state_or(state, "grad_avg", param).lerp(g, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt()
    else:
        avg = square_avg.sqrt()
    avg = parts["denom"] = avg.add(eps)
    if momentum > 0:
        buf = parts["b"] = state_or(state, "momentum_buffer", param).mul(momentum).addcdiv(g, avg)
        parts["param"] = param.add(buf, alpha=-lr)
    else:
        parts["param"] = param.addcdiv(g, avg, value=-lr)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one RMSprop step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's RMSprop step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    lr = value(hparams, "lr")
    alpha = value(hparams, "alpha")
    momentum = value(hparams, "momentum")
    lines = grad_lines(grad, parts, value(hparams, "weight_decay"), param)
    g_used = item(parts.get("g_wd", parts.get("g_max", g)))
    lines.append(ema_line("v", alpha, state.get("square_avg", 0.0), g_used, parts["v"], square=True))
    v = item(parts["v"])
    if "g_ave" in parts:
        g_ave = item(parts["g_ave"])
        lines.append(ema_line("gᵃᵛᵉ", alpha, state.get("grad_avg", 0.0), g_used, parts["g_ave"]))
        lines.append(f"√ṽ + ε: √({arg(v)} {MINUS} {arg(g_ave)}²) + ε = {num(item(parts['denom']))}")
    else:
        lines.append(f"√v + ε: √{arg(v)} + ε = {num(item(parts['denom']))}")
    denom = item(parts["denom"])
    if "b" in parts:
        old = state.get("momentum_buffer", 0.0)
        lines.append(f"b: {arg(momentum)} · {arg(old)} + {arg(g_used)} / {arg(denom)} = {num(item(parts['b']))}")
        arithmetic = f"{arg(param)} {MINUS} {arg(lr)} · {arg(item(parts['b']))}"
    else:
        arithmetic = f"{arg(param)} {MINUS} {arg(lr)} · {arg(g_used)} / {arg(denom)}"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="RMSprop", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
