"""Rule for `torch.optim.Rprop` (sign-based steps grown by η₊ and shrunk by η₋)."""

from __future__ import annotations

from torch import Tensor

from ._base import Line, Rule
from ._shared import MAXIMIZE, gradient, pair, read, value

LINES = (
    MAXIMIZE,
    Line(
        "η ← η₊ if g·gₚᵣₑᵥ > 0,  η₋ if g·gₚᵣₑᵥ < 0,  1 otherwise   (step size s starts at γ)",
        r"\eta_t \leftarrow \eta_+ \text{ if } g_t g_{t-1} > 0, \; \eta_- \text{ if } g_t g_{t-1} < 0,"
        r" \; 1 \text{ otherwise} \quad (\eta_0 = \gamma)",
        explain="η: sign({g} · {prev}) gives {eta!n}",
    ),
    Line(
        "s ← clamp(η·s, Γₘᵢₙ, Γₘₐₓ)",
        r"s_t \leftarrow \mathrm{clamp}(\eta_t s_{t-1}, \Gamma_{min}, \Gamma_{max})",
        explain="s: clamp({eta} · {step_size}, {step_size_min}, {step_size_max}) = {s!n}",
    ),
    Line(
        "g ← 0 where η = η₋",
        r"g_t \leftarrow 0 \text{ where } \eta_t = \eta_-",
        explain=lambda v: "g: 0 (the sign flipped, so this step does not move)" if v["g_kept"] != v["g"] else None,
    ),
    Line("θ ← θ − s·sign(g),  gₚᵣₑᵥ ← g", r"\theta_t \leftarrow \theta_{t-1} - s_t \,\mathrm{sign}(g_t)"),
)


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_rprop` (non-capturable branch) for one tensor."""
    etaminus, etaplus = pair(hparams, "etas")
    step_size_min, step_size_max = pair(hparams, "step_sizes")
    parts: dict = {"step_size_min": step_size_min, "step_size_max": step_size_max}
    g = gradient(param, grad, hparams, parts)
    prev = read(parts, state, "prev", param)
    step_size = read(parts, state, "step_size", param, fill=value(hparams, "lr"))
    sign = g.mul(prev).sign()
    sign[sign.gt(0)] = etaplus
    sign[sign.lt(0)] = etaminus
    sign[sign.eq(0)] = 1
    parts["eta"] = sign
    step_size = parts["s"] = step_size.mul(sign).clamp(step_size_min, step_size_max)
    g = parts["g_kept"] = g.clone()
    g[sign.eq(etaminus)] = 0
    parts["param"] = param.addcmul(g.sign(), step_size, value=-1)
    return parts


RULE = Rule(
    optimizer="Rprop",
    lines=LINES,
    compute=compute,
    result="{label}: {param} − {s} · sign({g_kept}) = {new!n}",
    symbols={"lr": "γ", "etas": "η₋, η₊", "step_sizes": "Γₘᵢₙ, Γₘₐₓ"},
)
