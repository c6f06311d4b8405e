"""Rule for `torch.optim.SGD` (momentum, dampening, Nesterov, weight decay, maximize)."""

from __future__ import annotations

from torch import Tensor

from ._base import Line, Pick, Rule, flag
from ._shared import L2, MAXIMIZE, gradient, value

LINES = (
    MAXIMIZE,
    L2,
    Line(
        ("b ← μ·b + ", Pick("dampening", "(1 − τ)·g", "g"), "   (b ← g at t = 1)"),
        (r"b_t \leftarrow \mu b_{t-1} + ", Pick("dampening", r"(1 - \tau) g_t", "g_t"), r" \quad (b_1 \leftarrow g_1)"),
        when="momentum",
        explain=lambda v: (
            "b: g = {b!n}"
            if v.fresh("momentum_buffer")
            else "b: {momentum} · {momentum_buffer} + {1-dampening} · {g} = {b!n}"
        ),
    ),
    Line(
        "g ← g + μ·b",
        r"g_t \leftarrow g_t + \mu b_t",
        when="momentum and nesterov",
        explain="g: {g} + {momentum} · {b} = {d!n}",
    ),
    Line("g ← b", r"g_t \leftarrow b_t", when="momentum and not nesterov"),
    Line("θ ← θ − γ·g", r"\theta_t \leftarrow \theta_{t-1} - \gamma g_t"),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_sgd` for one tensor; returns the named intermediates."""
    momentum, dampening = value(hparams, "momentum"), value(hparams, "dampening")
    parts: dict = {}
    g = gradient(param, grad, hparams, parts)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        buf = parts["b"] = g.clone() if buf is None else buf.mul(momentum).add(g, alpha=1 - dampening)
        g = g.add(buf, alpha=momentum) if flag(hparams, "nesterov") else buf
    parts["d"] = g
    parts["param"] = param.add(g, alpha=-value(hparams, "lr"))
    return parts


RULE = Rule(
    optimizer="SGD",
    lines=LINES,
    compute=compute,
    result="{label}: {param} − {lr} · {d} = {new!n}",
    symbols={"lr": "γ", "momentum": "μ", "dampening": "τ", "weight_decay": "λ"},
)
