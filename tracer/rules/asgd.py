"""Rule for `torch.optim.ASGD` (averaged SGD: decay λ, power α, averaging start t₀).

The step size η and averaging weight μ live in scalar state tensors
(``eta``, ``mu``) of the scalar dtype (float32 unless the training process's
default dtype was float64; the dtype the trace recorded); the parameter update reads ``eta`` from the state, and a fresh state
starts with η = lr rounded to that dtype, as torch does.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ._base import Line, Rule, item
from ._shared import L2, MAXIMIZE, as_scalar_state, gradient, hparam, read, step_of, value

LINES = (
    MAXIMIZE,
    dataclasses.replace(L2, text="g ← g + w·θ", latex=r"g_t \leftarrow g_t + w \theta_{t-1}"),
    Line(
        "θ ← θ·(1 − λ·η) − η·g   (η ← γ at t = 1)",
        r"\theta_t \leftarrow \theta_{t-1} (1 - \lambda \eta_t) - \eta_t g_t \quad (\eta_1 = \gamma)",
        explain=lambda v: "η: {eta!n}" + (" (η starts at γ)" if v.fresh("eta") else "") + ",  μ: {mu!n}",
    ),
    Line(
        "ax ← ax + μ·(θ − ax)   (ax ← θ while μ = 1)",
        r"ax_t \leftarrow ax_{t-1} + \mu_t (\theta_t - ax_{t-1})",
        explain=lambda v: "ax: {ax} + {mu} · ({new} − {ax}) = {ax_t!n}" if v["mu"] != 1 else "ax: θ = {ax_t!n}",
    ),
    Line(
        "η ← γ / (1 + λ·γ·t)^α,  μ ← 1 / max(1, t − t₀)",
        r"\eta_{t+1} \leftarrow \gamma / (1 + \lambda \gamma t)^\alpha, \; \mu_{t+1} \leftarrow 1 / \max(1, t - t_0)",
    ),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_asgd` (non-capturable branch) for one tensor."""
    lr, lambd, alpha = hparam(hparams, "lr"), value(hparams, "lambd"), value(hparams, "alpha")
    step = step_of(state) + 1
    parts: dict = {}
    g = gradient(param, grad, hparams, parts)
    eta = parts["eta"] = item(state["eta"]) if "eta" in state else as_scalar_state(lr, hparams)
    mu = parts["mu"] = item(state["mu"]) if "mu" in state else 1.0
    param = parts["param"] = param.mul(1 - lambd * eta).add(g, alpha=-eta)
    if mu != 1:
        ax = read(parts, state, "ax", param)
        parts["ax_t"] = ax.add(param.sub(ax).mul(mu))
    else:
        parts["ax_t"] = param.clone()
    parts["eta_next"] = as_scalar_state(lr / ((1 + lambd * lr * step) ** alpha), hparams)
    parts["mu_next"] = as_scalar_state(1 / max(1, step - value(hparams, "t0")), hparams)
    return parts


RULE = Rule(
    optimizer="ASGD",
    lines=LINES,
    compute=compute,
    result="{label}: {param} · (1 − {lambd} · {eta}) − {eta} · {g} = {new!n}",
    symbols={"lr": "γ", "lambd": "λ", "alpha": "α", "t0": "t₀", "weight_decay": "w"},
)
