"""Rule for `torch.optim.Adagrad` (lr decay, weight decay, initial accumulator value, ε).

Sparse gradients need no special case: with the densified gradient the dense
formula leaves absent entries unchanged (the sum gains 0, θ moves by 0), which
is what torch's sparse branch does.
"""

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
    state_or,
    step_of,
    text_lines,
    value,
)

SYMBOLS = {
    "lr": "γ",
    "lr_decay": "η",
    "weight_decay": "λ",
    "initial_accumulator_value": "s₀",
    "eps": "ε",
}


def text(hparams: dict) -> str:
    """The Adagrad rule in plain text for these hparams."""
    lines = ["g ← −g"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append("g ← g + λ·θ")
    rate = "γ̃ ← γ / (1 + (t − 1)·η),  " if value(hparams, "lr_decay") else ""
    lr = "γ̃" if rate else "γ"
    start = " (s starts at s₀)" if value(hparams, "initial_accumulator_value") else ""
    lines += [f"{rate}s ← s + g²{start}", f"θ ← θ − {lr}·g / (√s + ε)"]
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The Adagrad rule in LaTeX for these hparams."""
    lines = [r"g_t \leftarrow -g_t"] if flag(hparams, "maximize") else []
    if value(hparams, "weight_decay"):
        lines.append(r"g_t \leftarrow g_t + \lambda \theta_{t-1}")
    if value(hparams, "lr_decay"):
        lines.append(r"\tilde{\gamma} \leftarrow \gamma / (1 + (t - 1) \eta)")
        lr = r"\tilde{\gamma}"
    else:
        lr = r"\gamma"
    start = r" \quad (\text{state\_sum}_0 = s_0)" if value(hparams, "initial_accumulator_value") else ""
    lines += [
        rf"\text{{state\_sum}}_t \leftarrow \text{{state\_sum}}_{{t-1}} + g_t^2{start}",
        rf"\theta_t \leftarrow \theta_{{t-1}} - {lr} \frac{{g_t}}{{\sqrt{{\text{{state\_sum}}_t}} + \epsilon}}",
    ]
    return latex_lines(lines)


def _compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """Replay `_single_tensor_adagrad` (dense branch) for one tensor."""
    lr = value(hparams, "lr")
    weight_decay = value(hparams, "weight_decay")
    lr_decay = value(hparams, "lr_decay")
    eps = value(hparams, "eps")
    step = step_of(state) + 1
    parts: dict[str, Tensor] = {}
    g = grad
    if flag(hparams, "maximize"):
        g = parts["g_max"] = -grad
    if weight_decay != 0:
        g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    parts["clr"] = param.new_tensor(clr)
    initial = value(hparams, "initial_accumulator_value")
    state_sum = parts["sum"] = state_or(state, "sum", param, fill=initial).addcmul(g, g, value=1)
    std = parts["std"] = state_sum.sqrt().add(eps)
    parts["param"] = param.addcdiv(g, std, value=-clr)
    return parts


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one Adagrad step."""
    if grad is None:
        return param.clone()
    return _compute(param, grad, state, hparams)["param"]


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's Adagrad step as hand arithmetic."""
    if grad is None:
        return no_grad_line(label, param)
    p, g, s = scalars(param, grad, state)
    parts = _compute(p, g, s, hparams)
    lr = value(hparams, "lr")
    lr_decay = value(hparams, "lr_decay")
    step = int(step_of(state)) + 1
    lines = grad_lines(grad, parts, value(hparams, "weight_decay"), param)
    g_used = item(parts.get("g_wd", parts.get("g_max", g)))
    clr = item(parts["clr"])
    if lr_decay:
        lines.append(f"γ̃: {arg(lr)} / (1 + ({step} {MINUS} 1) · {arg(lr_decay)}) = {num(clr)}")
    old = state.get("sum", value(hparams, "initial_accumulator_value"))
    lines.append(f"s: {arg(old)} + {arg(g_used)}² = {num(item(parts['sum']))}")
    arithmetic = f"{arg(param)} {MINUS} {arg(clr)} · {arg(g_used)} / (√{arg(item(parts['sum']))} + ε)"
    lines.append(final_line(label, arithmetic, parts["param"]))
    return lines


RULE = Rule(optimizer="Adagrad", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS)
