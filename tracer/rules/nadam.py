"""Rule for `torch.optim.NAdam` (Nesterov Adam, momentum decay, optional decoupled weight decay).

NAdam keeps ``mu_product`` (the running product of the momentum schedule
μ₁·…·μₜ) in a scalar state tensor whose dtype is float32 unless the training
process's default dtype was float64; predict rounds it the same way, in the
dtype the trace recorded (see `_shared.scalar_dtype`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Line, Rule, flag, item
from ._shared import (
    DECAY,
    MAXIMIZE,
    MOMENT1,
    MOMENT2,
    decayed,
    hparam,
    pair,
    read,
    scalar_dtype,
    step_of,
    value,
)

LINES = (
    MAXIMIZE,
    *DECAY,
    Line(
        "μₜ ← β₁·(1 − ½·0.96^(t·ψ)),  μₜ₊₁ ← β₁·(1 − ½·0.96^((t+1)·ψ))",
        r"\mu_t \leftarrow \beta_1 \big(1 - \frac{1}{2} 0.96^{t \psi}\big), \;"
        r" \mu_{t+1} \leftarrow \beta_1 \big(1 - \frac{1}{2} 0.96^{(t+1) \psi}\big)",
        explain="μₜ: {mu!n},  μₜ₊₁: {mu_next!n},  Πμ: {mu_product_old} · {mu} = {mu_product!n}",
    ),
    MOMENT1,
    MOMENT2,
    Line(
        "v̂ ← v / (1 − β₂ᵗ)",
        r"\widehat{v_t} \leftarrow v_t / (1 - \beta_2^t)",
        explain="√v̂ + ε: √({v} / (1 − {beta2}^{t})) + ε = {denom!n}",
    ),
    Line(
        "θ ← θ − γ·(1 − μₜ)/(1 − Πᵢ₌₁ᵗ μᵢ)·g / (√v̂ + ε) − γ·μₜ₊₁/(1 − Πᵢ₌₁ᵗ⁺¹ μᵢ)·m / (√v̂ + ε)",
        r"\theta_t \leftarrow \theta_{t-1} - \gamma \frac{1 - \mu_t}{1 - \prod_{i=1}^{t} \mu_i}"
        r" \frac{g_t}{\sqrt{\widehat{v_t}} + \epsilon} - \gamma \frac{\mu_{t+1}}{1 - \prod_{i=1}^{t+1} \mu_i}"
        r" \frac{m_t}{\sqrt{\widehat{v_t}} + \epsilon}",
    ),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_nadam` for one tensor: its plain branch, or with ``differentiable``
    (or ``capturable``) its tensor branch, where μ's product and both step factors stay 0-d
    tensors of the scalar state's dtype."""
    lr, momentum_decay = hparam(hparams, "lr"), value(hparams, "momentum_decay")
    beta1, beta2 = pair(hparams, "betas")
    step = step_of(state) + 1
    parts: dict = {"beta1": beta1, "beta2": beta2, "t": int(step)}
    param, g = decayed(param, grad, hparams, parts)
    dtype = scalar_dtype(hparams)
    t = torch.tensor(step, dtype=dtype) if flag(hparams, "capturable") else step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((t + 1) * momentum_decay)))
    parts["mu"], parts["mu_next"] = item(mu), item(mu_next)
    old_product = state.get("mu_product")
    product = parts["mu_product_old"] = 1.0 if old_product is None else item(old_product)
    product_t = torch.tensor(product, dtype=dtype)
    product_t *= mu  # in the scalar state's dtype, as torch does
    mu_product = parts["mu_product"] = product_t.item()
    exp_avg = parts["m"] = read(parts, state, "exp_avg", param).lerp(g, 1 - beta1)
    exp_avg_sq = parts["v"] = read(parts, state, "exp_avg_sq", param).mul(beta2).addcmul(g, g, value=1 - beta2)
    denom = parts["denom"] = exp_avg_sq.div(1 - beta2**t).sqrt().add(value(hparams, "eps"))
    if flag(hparams, "differentiable") or flag(hparams, "capturable"):
        c1 = lr * (1.0 - mu) / (1.0 - product_t)
        c2 = lr * mu_next / (1.0 - product_t * mu_next)
        parts["c1"], parts["c2"] = item(c1), item(c2)
        parts["param"] = param.addcdiv(g * -c1, denom).addcdiv(exp_avg * -c2, denom)
        return parts
    c1 = parts["c1"] = lr * (1.0 - mu) / (1.0 - mu_product)
    c2 = parts["c2"] = lr * mu_next / (1.0 - mu_product * mu_next)
    parts["param"] = param.addcdiv(g, denom, value=-item(c1)).addcdiv(exp_avg, denom, value=-item(c2))
    return parts


RULE = Rule(
    optimizer="NAdam",
    lines=LINES,
    compute=compute,
    result="{label}: {theta} − {c1} · {g} / {denom} − {c2} · {m} / {denom} = {new!n}",
    symbols={"lr": "γ", "betas": "β₁, β₂", "eps": "ε", "weight_decay": "λ", "momentum_decay": "ψ"},
)
