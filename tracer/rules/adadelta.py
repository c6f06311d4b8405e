"""Rule for `torch.optim.Adadelta` (ρ, ε, weight decay, lr scaling of the delta)."""

from __future__ import annotations

from torch import Tensor

from ._base import Line, Rule, ema
from ._shared import L2, MAXIMIZE, gradient, read, value

LINES = (
    MAXIMIZE,
    L2,
    Line(
        "v ← ρ·v + (1 − ρ)·g²",
        r"v_t \leftarrow \rho v_{t-1} + (1 - \rho) g_t^2",
        explain=ema("v", "rho", "square_avg", "g", "v", square=True),
    ),
    Line(
        "Δx ← √(u + ε) / √(v + ε) · g",
        r"\Delta x_t \leftarrow \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t",
        explain="Δx: √({acc_delta} + {eps}) / √({v} + {eps}) · {g} = {delta!n}",
    ),
    Line(
        "u ← ρ·u + (1 − ρ)·Δx²",
        r"u_t \leftarrow \rho u_{t-1} + (1 - \rho) \Delta x_t^2",
        explain=ema("u", "rho", "acc_delta", "delta", "u", square=True),
    ),
    Line("θ ← θ − γ·Δx", r"\theta_t \leftarrow \theta_{t-1} - \gamma \Delta x_t"),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_adadelta` for one tensor."""
    rho, eps = value(hparams, "rho"), value(hparams, "eps")
    parts: dict = {}
    g = gradient(param, grad, hparams, parts)
    square_avg = parts["v"] = read(parts, state, "square_avg", param).mul(rho).addcmul(g, g, value=1 - rho)
    acc_delta = read(parts, state, "acc_delta", param)
    std = square_avg.add(eps).sqrt()
    delta = parts["delta"] = acc_delta.add(eps).sqrt().div(std).mul(g)
    parts["u"] = acc_delta.mul(rho).addcmul(delta, delta, value=1 - rho)
    parts["param"] = param.add(delta, alpha=-value(hparams, "lr"))
    return parts


RULE = Rule(
    optimizer="Adadelta",
    lines=LINES,
    compute=compute,
    result="{label}: {param} − {lr} · {delta} = {new!n}",
    symbols={"lr": "γ", "rho": "ρ", "eps": "ε", "weight_decay": "λ"},
)
