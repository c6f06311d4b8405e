"""Rule for `torch.optim.RMSprop` (centered, momentum, weight decay, smoothing constant α)."""

from __future__ import annotations

from torch import Tensor

from ._base import Line, Pick, Rule, ema, flag
from ._shared import L2, MAXIMIZE, gradient, read, value

ROOT = Pick("centered", "√ṽ", "√v")
ROOT_TEX = Pick("centered", r"\sqrt{\tilde{v_t}}", r"\sqrt{v_t}")

LINES = (
    MAXIMIZE,
    L2,
    Line(
        "v ← α·v + (1 − α)·g²",
        r"v_t \leftarrow \alpha v_{t-1} + (1 - \alpha) g_t^2",
        explain=ema("v", "alpha", "square_avg", "g", "v", square=True),
    ),
    Line(None, None, when="not centered", explain="√v + ε: √{v} + ε = {denom!n}"),  # the text has no line for √v
    Line(
        "gᵃᵛᵉ ← α·gᵃᵛᵉ + (1 − α)·g",
        r"g^{ave}_t \leftarrow \alpha g^{ave}_{t-1} + (1 - \alpha) g_t",
        when="centered",
        explain=ema("gᵃᵛᵉ", "alpha", "grad_avg", "g", "g_ave"),
    ),
    Line(
        "ṽ ← v − (gᵃᵛᵉ)²",
        r"\tilde{v_t} \leftarrow v_t - \big(g^{ave}_t\big)^2",
        when="centered",
        explain="√ṽ + ε: √({v} − {g_ave}²) + ε = {denom!n}",
    ),
    Line(
        ("b ← μ·b + g / (", ROOT, " + ε)"),
        (r"b_t \leftarrow \mu b_{t-1} + g_t / \big(", ROOT_TEX, r" + \epsilon\big)"),
        when="momentum",
        explain="b: {momentum} · {momentum_buffer} + {g} / {denom} = {b!n}",
    ),
    Line("θ ← θ − γ·b", r"\theta_t \leftarrow \theta_{t-1} - \gamma b_t", when="momentum"),
    Line(
        ("θ ← θ − γ·g / (", ROOT, " + ε)"),
        (r"\theta_t \leftarrow \theta_{t-1} - \gamma g_t / \big(", ROOT_TEX, r" + \epsilon\big)"),
        when="not momentum",
    ),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_rmsprop` for one tensor."""
    lr, alpha, momentum = value(hparams, "lr"), value(hparams, "alpha"), value(hparams, "momentum")
    parts: dict = {}
    g = gradient(param, grad, hparams, parts)
    square_avg = parts["v"] = read(parts, state, "square_avg", param).mul(alpha).addcmul(g, g, value=1 - alpha)
    if flag(hparams, "centered"):
        grad_avg = parts["g_ave"] = read(parts, state, "grad_avg", param).lerp(g, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt()
    else:
        avg = square_avg.sqrt()
    avg = parts["denom"] = avg.add(value(hparams, "eps"))
    if momentum > 0:
        buf = parts["b"] = read(parts, state, "momentum_buffer", param).mul(momentum).addcdiv(g, avg)
        parts["param"] = param.add(buf, alpha=-lr)
    else:
        parts["param"] = param.addcdiv(g, avg, value=-lr)
    return parts


RULE = Rule(
    optimizer="RMSprop",
    lines=LINES,
    compute=compute,
    result=lambda v: (
        "{label}: {param} − {lr} · {b} = {new!n}"
        if v.on("momentum")
        else "{label}: {param} − {lr} · {g} / {denom} = {new!n}"
    ),
    symbols={"lr": "γ", "alpha": "α", "eps": "ε", "weight_decay": "λ", "momentum": "μ"},
)
