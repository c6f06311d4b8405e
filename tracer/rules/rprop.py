"""Rule for `torch.optim.Rprop` (sign-based steps grown by η₊ and shrunk by η₋)."""

from __future__ import annotations

from torch import Tensor

from ._base import (
    MINUS,
    Rule,
    arg,
    final_line,
    flag,
    item,
    latex_lines,
    no_grad_line,
    num,
    pair,
    scalars,
    state_or,
    text_lines,
    value,
)

SYMBOLS = {"lr": "γ", "etas": "η₋, η₊", "step_sizes": "Γₘᵢₙ, Γₘₐₓ"}


def text(hparams: dict) -> str:
    """The Rprop rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    lines += [
        "η ← η₊ if g·gₚᵣₑᵥ > 0,  η₋ if g·gₚᵣₑᵥ < 0,  1 otherwise   (step size s starts at γ)",
        "s ← clamp(η·s, Γₘᵢₙ, Γₘₐₓ)",
        "g ← 0 where η = η₋",
        "θ ← θ − s·sign(g),  gₚᵣₑᵥ ← g",
    ]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The Rprop rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    lines += [
        r"\eta_t \leftarrow \eta_+ \text{ if } g_t g_{t-1} > 0, \; \eta_- \text{ if } g_t g_{t-1} < 0,"
        r" \; 1 \text{ otherwise} \quad (\eta_0 = \gamma)",
        r"s_t \leftarrow \mathrm{clamp}(\eta_t s_{t-1}, \Gamma_{min}, \Gamma_{max})",
        r"g_t \leftarrow 0 \text{ where } \eta_t = \eta_-",
        r"\theta_t \leftarrow \theta_{t-1} - s_t \,\mathrm{sign}(g_t)",
    ]
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_rprop` (non-capturable branch) for one tensor."""
    etaminus, etaplus = pair(hparams, "etas")
    step_size_min, step_size_max = pair(hparams, "step_sizes")
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    prev = state_or(state, "prev", param)
    step_size = state_or(state, "step_size", param, fill=value(hparams, "lr"))
    sign = g.mul(prev).sign()
    sign[sign.gt(0)] = etaplus
    sign[sign.lt(0)] = etaminus
    sign[sign.eq(0)] = 1
    parts["eta"] = sign
    step_size = parts["step_size"] = step_size.mul(sign).clamp(step_size_min, step_size_max)
    g = g.clone()
    g[sign.eq(etaminus)] = 0
    parts["prev"] = g
    parts["param"] = param.addcmul(g.sign(), step_size, value=-1)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one Rprop step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's Rprop step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    step_size_min, step_size_max = pair(hparams, "step_sizes")
    g_used = item(parts.get("g_max", g))
    lines = [f"g: {MINUS}{arg(grad)} = {num(g_used)}"] if "g_max" in parts else []
    prev = state.get("prev", 0.0)
    eta = item(parts["eta"])
    lines.append(f"η: sign({arg(g_used)} · {arg(prev)}) gives {num(eta)}")
    old_size = state.get("step_size", value(hparams, "lr"))
    lines.append(
        f"s: clamp({arg(eta)} · {arg(old_size)}, {arg(step_size_min)}, {arg(step_size_max)})"
        f" = {num(item(parts['step_size']))}"
    )
    kept = item(parts["prev"])
    if kept != g_used:
        lines.append("g: 0 (the sign flipped, so this step does not move)")
    arithmetic = f"{arg(param)} {MINUS} {arg(item(parts['step_size']))} · sign({arg(kept)})"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="Rprop", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
