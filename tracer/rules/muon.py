"""Rule for `torch.optim.Muon` (momentum orthogonalised by a Newton–Schulz iteration; 2-D only).

The orthogonalisation is a port of ``torch.optim._muon._zeropower_via_newtonschulz``:
it runs in bfloat16, as torch's does, so predict reproduces the same rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import (
    MINUS,
    CannotPredict,
    Rule,
    arg,
    ema_line,
    flag,
    item,
    latex_lines,
    no_grad_line,
    num,
    scalars,
    state_or,
    text_lines,
    value,
)

SYMBOLS = {
    "lr": "γ",
    "weight_decay": "λ",
    "momentum": "μ",
    "ns_coefficients": "(a, b, c)",
    "eps": "ε",
    "ns_steps": "k",
}

NOTE = (
    "The Newton–Schulz orthogonalisation mixes the whole matrix (in bfloat16), so explain shows "
    "the element's momentum and decay arithmetic but not O's value."
)


def _adjust_text(hparams: dict) -> str:
    """How γ is rescaled for the matrix shape m×n."""
    if hparams.get("adjust_lr_fn") == "match_rms_adamw":
        return "γ' ← 0.2·γ·√max(m, n)   (θ is m×n)"
    if hparams.get("adjust_lr_fn") in (None, "original"):
        return "γ' ← γ·√max(1, m/n)   (θ is m×n)"
    return "γ' ← γ"


def text(hparams: dict) -> str:
    """The Muon rule in plain text for these hparams."""
    lines = ["B ← μ·B + (1 − μ)·g"]
    lines.append("B̃ ← g + μ·(B − g)" if flag(hparams, "nesterov") else "B̃ ← B")
    lines += [
        "X ← B̃ / max(‖B̃‖, ε);  k times: X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X;  O ← X   (Newton–Schulz, in bfloat16)",
        _adjust_text(hparams),
    ]
    lines.append("θ ← θ·(1 − γ·λ) − γ'·O" if value(hparams, "weight_decay") else "θ ← θ − γ'·O")
    return text_lines(lines)


def latex(hparams: dict) -> str:
    """The Muon rule in LaTeX for these hparams."""
    adjust = {
        "match_rms_adamw": r"\gamma' \leftarrow 0.2 \gamma \sqrt{\max(m, n)}",
        None: r"\gamma' \leftarrow \gamma \sqrt{\max(1, m/n)}",
        "original": r"\gamma' \leftarrow \gamma \sqrt{\max(1, m/n)}",
    }.get(hparams.get("adjust_lr_fn"), r"\gamma' \leftarrow \gamma")
    lines = [
        r"B_t \leftarrow \mu B_{t-1} + (1 - \mu) g_t",
        r"\widetilde{B}_t \leftarrow g_t + \mu (B_t - g_t)" if flag(hparams, "nesterov") else r"\widetilde{B}_t \leftarrow B_t",
        r"O_t \leftarrow \mathrm{NS}^{(a,b,c)}_{k}\big(\widetilde{B}_t; \epsilon\big)",
        adjust,
    ]
    if value(hparams, "weight_decay"):
        lines.append(r"\theta_t \leftarrow \theta_{t-1} (1 - \gamma \lambda) - \gamma' O_t")
    else:
        lines.append(r"\theta_t \leftarrow \theta_{t-1} - \gamma' O_t")
    return latex_lines(lines)


def zeropower_via_newtonschulz(grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float) -> Tensor:
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


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """γ rescaled for the matrix shape, as ``torch.optim._muon._adjust_lr``."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    return lr * ratio


def _momentum(grad: Tensor, state: dict, hparams: dict) -> dict[str, Tensor]:
    """The momentum buffer and the (Nesterov) update fed to Newton–Schulz."""
    momentum = value(hparams, "momentum")
    buf = state_or(state, "momentum_buffer", grad).lerp(grad, 1 - momentum)
    update = grad.lerp(buf, momentum) if flag(hparams, "nesterov") else buf
    return {"b": buf, "update": update}


def predict(param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
    """The parameter after one Muon step (``_single_tensor_muon``)."""
    if grad is None:
        return param.clone()
    if grad.dim() != 2:
        raise CannotPredict(f"Muon updates 2-D parameters only (got a {grad.dim()}-D gradient)")
    lr = value(hparams, "lr")
    update = _momentum(grad, state, hparams)["update"]
    ortho = zeropower_via_newtonschulz(
        update, tuple(item(x) for x in hparams["ns_coefficients"]), int(hparams["ns_steps"]), value(hparams, "eps")
    )
    scaled_lr = adjusted_lr(lr, hparams.get("adjust_lr_fn"), param.shape)
    return param.mul(1 - lr * value(hparams, "weight_decay")).add(ortho, alpha=-scaled_lr)


def explain(label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict) -> list[str]:
    """One element's share of a Muon step; O comes from the whole matrix."""
    if grad is None:
        return no_grad_line(label, param)
    _, g, s = scalars(param, grad, state)
    parts = _momentum(g, s, hparams)
    momentum = value(hparams, "momentum")
    lines = [ema_line("B", momentum, state.get("momentum_buffer", 0.0), grad, parts["b"])]
    if flag(hparams, "nesterov"):
        b = item(parts["b"])
        lines.append(f"B̃: {arg(grad)} + {arg(momentum)} · ({arg(b)} {MINUS} {arg(grad)}) = {num(item(parts['update']))}")
    lines.append("O: Newton–Schulz over the whole matrix (bfloat16)")
    lr = value(hparams, "lr")
    decay = value(hparams, "weight_decay")
    theta = param * (1 - lr * decay)
    lines.append(f"{label}: {arg(param)} · (1 {MINUS} {arg(lr)} · {arg(decay)}) {MINUS} γ'·O = {num(theta)} {MINUS} γ'·O")
    return lines


RULE = Rule(optimizer="Muon", text=text, latex=latex, predict=predict, explain=explain, symbols=SYMBOLS, note=NOTE)
