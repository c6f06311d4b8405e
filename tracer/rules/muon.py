"""Rule for `torch.optim.Muon` (momentum orthogonalised by a Newton–Schulz iteration; 2-D only).

The orthogonalisation is a port of ``torch.optim._muon._zeropower_via_newtonschulz``:
it runs in bfloat16, as torch's does, so predict reproduces the same rounding.
It mixes the whole matrix, so explain runs only the element's own part of the
step (`local`: the momentum and the decay) and names O; the learning-rate
adjustment is chosen by ``adjust_lr_fn``, a name rather than a flag, so its
lines' conditions are functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import CannotPredict, Line, Rule, ema, flag, item
from ._shared import hparam, read, value

LINES = (
    Line(
        "B ← μ·B + (1 − μ)·g",
        r"B_t \leftarrow \mu B_{t-1} + (1 - \mu) g_t",
        explain=ema("B", "momentum", "momentum_buffer", "grad", "b"),
    ),
    Line(
        "B̃ ← g + μ·(B − g)",
        r"\widetilde{B}_t \leftarrow g_t + \mu (B_t - g_t)",
        when="nesterov",
        explain="B̃: {grad} + {momentum} · ({b} − {grad}) = {update!n}",
    ),
    Line("B̃ ← B", r"\widetilde{B}_t \leftarrow B_t", when="not nesterov"),
    Line(
        "X ← B̃ / max(‖B̃‖, ε);  k times: X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X;  O ← X   (Newton–Schulz, in bfloat16)",
        r"O_t \leftarrow \mathrm{NS}^{(a,b,c)}_{k}\big(\widetilde{B}_t; \epsilon\big)",
        explain="O: Newton–Schulz over the whole matrix (bfloat16)",
    ),
    Line(
        "γ' ← γ·√max(1, m/n)   (θ is m×n)",
        r"\gamma' \leftarrow \gamma \sqrt{\max(1, m/n)}",
        when=lambda h: h.get("adjust_lr_fn") in (None, "original"),
    ),
    Line(
        "γ' ← 0.2·γ·√max(m, n)   (θ is m×n)",
        r"\gamma' \leftarrow 0.2 \gamma \sqrt{\max(m, n)}",
        when=lambda h: h.get("adjust_lr_fn") == "match_rms_adamw",
    ),
    Line(  # any other name leaves γ as it is, as torch's _adjust_lr does
        "γ' ← γ",
        r"\gamma' \leftarrow \gamma",
        when=lambda h: h.get("adjust_lr_fn") not in (None, "original", "match_rms_adamw"),
    ),
    Line(
        "θ ← θ·(1 − γ·λ) − γ'·O",
        r"\theta_t \leftarrow \theta_{t-1} (1 - \gamma \lambda) - \gamma' O_t",
        when="weight_decay",
    ),
    Line("θ ← θ − γ'·O", r"\theta_t \leftarrow \theta_{t-1} - \gamma' O_t", when="not weight_decay"),
)


def zeropower_via_newtonschulz(
    grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> Tensor:
    """Orthogonalise a matrix with torch's quintic Newton–Schulz iteration (in bfloat16)."""
    a, b, c = ns_coefficients
    ortho_grad = grad.bfloat16()
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


def adjusted_lr(lr: float | Tensor, adjust_lr_fn: str | None, shape: torch.Size) -> float | Tensor:
    """γ rescaled for the matrix shape, as ``torch.optim._muon._adjust_lr``."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    return lr * ratio


def local(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """The element's own part of the step: the momentum buffer, the (Nesterov) update, the decayed θ."""
    momentum = value(hparams, "momentum")
    parts: dict = {}
    buf = parts["b"] = read(parts, state, "momentum_buffer", grad).lerp(grad, 1 - momentum)
    parts["update"] = grad.lerp(buf, momentum) if flag(hparams, "nesterov") else buf
    parts["theta"] = param.mul(1 - hparam(hparams, "lr") * value(hparams, "weight_decay"))
    return parts


def compute(param: Tensor, grad: Tensor, state: dict, hparams: dict) -> dict:
    """Replay `_single_tensor_muon` for one matrix."""
    if grad.dim() != 2:
        raise CannotPredict(f"Muon updates 2-D parameters only (got a {grad.dim()}-D gradient)")
    parts = local(param, grad, state, hparams)
    a, b, c = (item(x) for x in hparams["ns_coefficients"])
    ortho = parts["O"] = zeropower_via_newtonschulz(
        parts["update"], (a, b, c), int(hparams["ns_steps"]), value(hparams, "eps")
    )
    scaled_lr = adjusted_lr(hparam(hparams, "lr"), hparams.get("adjust_lr_fn"), param.shape)
    parts["param"] = parts["theta"].add(ortho, alpha=-scaled_lr)
    return parts


RULE = Rule(
    optimizer="Muon",
    lines=LINES,
    compute=compute,
    local=local,
    result="{label}: {param} · (1 − {lr} · {weight_decay}) − γ'·O = {theta!n} − γ'·O",
    symbols={
        "lr": "γ",
        "weight_decay": "λ",
        "momentum": "μ",
        "ns_coefficients": "(a, b, c)",
        "eps": "ε",
        "ns_steps": "k",
    },
    note=(
        "The Newton–Schulz orthogonalisation mixes the whole matrix (in bfloat16), so explain shows "
        "the element's momentum and decay arithmetic but not O's value."
    ),
)
