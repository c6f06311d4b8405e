"""Rule for `torch.optim.Adagrad` (lr decay, weight decay, initial accumulator value, ε).

Sparse gradients need no special case: with the densified gradient the dense
formula leaves absent entries unchanged (the sum gains 0, θ moves by 0), which
is what torch's sparse branch does. In plain text γ̃ shares the line of s.
"""

from __future__ import annotations

from torch import Tensor

from ._base import Line, Pick, Rule, item
from ._shared import L2, MAXIMIZE, gradient, hparam, read, step_of, value

LINES = (
    MAXIMIZE,
    L2,
    Line(
        None,
        r"\tilde{\gamma} \leftarrow \gamma / (1 + (t - 1) \eta)",
        when="lr_decay",
        explain="γ̃: {lr} / (1 + ({t} − 1) · {lr_decay}) = {clr!n}",
    ),
    Line(
        (
            Pick("lr_decay", "γ̃ ← γ / (1 + (t − 1)·η),  "),
            "s ← s + g²",
            Pick("initial_accumulator_value", " (s starts at s₀)"),
        ),
        (
            r"\text{state\_sum}_t \leftarrow \text{state\_sum}_{t-1} + g_t^2",
            Pick("initial_accumulator_value", r" \quad (\text{state\_sum}_0 = s_0)"),
        ),
        explain="s: {sum} + {g}² = {s!n}",
    ),
    Line(
        ("θ ← θ − ", Pick("lr_decay", "γ̃", "γ"), "·g / (√s + ε)"),
        (
            r"\theta_t \leftarrow \theta_{t-1} - ",
            Pick("lr_decay", r"\tilde{\gamma}", r"\gamma"),
            r" \frac{g_t}{\sqrt{\text{state\_sum}_t} + \epsilon}",
        ),
    ),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_adagrad` (dense branch) for one tensor."""
    step = step_of(state) + 1
    parts: dict = {"t": int(step)}
    g = gradient(param, grad, hparams, parts)
    clr = parts["clr"] = hparam(hparams, "lr") / (1 + (step - 1) * value(hparams, "lr_decay"))
    state_sum = read(parts, state, "sum", param, fill=value(hparams, "initial_accumulator_value"))
    state_sum = parts["s"] = state_sum.addcmul(g, g, value=1)
    std = state_sum.sqrt().add(value(hparams, "eps"))
    parts["param"] = param.addcdiv(g, std, value=-item(clr))
    return parts


RULE = Rule(
    optimizer="Adagrad",
    lines=LINES,
    compute=compute,
    result="{label}: {param} − {clr} · {g} / (√{s} + ε) = {new!n}",
    symbols={"lr": "γ", "lr_decay": "η", "weight_decay": "λ", "initial_accumulator_value": "s₀", "eps": "ε"},
)
