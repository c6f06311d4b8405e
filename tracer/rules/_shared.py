"""The lines and compute steps several optimizers share, and how a compute reads hparams and state."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor

from ._base import Line, ema, flag, item

MAXIMIZE = Line("g ← −g", r"g_t \leftarrow -g_t", when="maximize", explain="g: −{grad} = {g_max!n}")
L2 = Line(
    "g ← g + λ·θ",
    r"g_t \leftarrow g_t + \lambda \theta_{t-1}",
    when="weight_decay",
    explain="g: {g_max} + {weight_decay} · {param} = {g_wd!n}",
)
# the Adam family: decoupled (AdamW-style) weight decay shrinks θ, otherwise L2 joins g
DECAY = (
    dataclasses.replace(L2, when="weight_decay and not decoupled_weight_decay"),
    Line(
        "θ ← θ − γ·λ·θ",
        r"\theta_{t-1} \leftarrow \theta_{t-1} - \gamma \lambda \theta_{t-1}",
        when="weight_decay and decoupled_weight_decay",
        explain="θ: {param} · (1 − {lr} · {weight_decay}) = {theta!n}",
    ),
)

# the Adam family's moments
MOMENT1 = Line(
    "m ← β₁·m + (1 − β₁)·g",
    r"m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t",
    explain=ema("m", "beta1", "exp_avg", "g", "m"),
)
MOMENT2 = Line(
    "v ← β₂·v + (1 − β₂)·g²",
    r"v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2",
    explain=ema("v", "beta2", "exp_avg_sq", "g", "v", square=True),
)


def gradient(param: Tensor, grad: Tensor, hparams: Mapping, parts: dict, l2: bool = True) -> Tensor:
    """torch's first lines: ``g ← −g`` under maximize, then ``g ← g + λ·θ`` (L2 weight decay)."""
    g = parts["g_max"] = -grad if flag(hparams, "maximize") else grad
    weight_decay = value(hparams, "weight_decay")
    if l2 and weight_decay != 0:
        g = parts["g_wd"] = g.add(param, alpha=weight_decay)
    parts["g"] = g
    return g


def decayed(param: Tensor, grad: Tensor, hparams: Mapping, parts: dict) -> tuple[Tensor, Tensor]:
    """The Adam family's first lines: maximize, then decoupled decay of θ or L2 decay of g."""
    weight_decay, decoupled = value(hparams, "weight_decay"), flag(hparams, "decoupled_weight_decay")
    if decoupled and weight_decay != 0:
        param = param.mul(1 - value(hparams, "lr") * weight_decay)
    parts["theta"] = param
    return param, gradient(param, grad, hparams, parts, l2=not decoupled)


def read(parts: dict, state: Mapping[str, Tensor], key: str, like: Tensor, fill: float = 0.0) -> Tensor:
    """The float64 state tensor ``key`` (a fresh one filled with ``fill``), kept in ``parts[key]``."""
    parts[key] = state_or(state, key, like, fill)
    return parts[key]


# -- hyper-parameters and state ---------------------------------------------


def value(hparams: Mapping, key: str, default: float = 0.0) -> float:
    """A numeric hparam as float (a Tensor lr is accepted too)."""
    got = hparams.get(key, default)
    return default if got is None else item(got)


def pair(hparams: Mapping, key: str) -> tuple[float, float]:
    """A two-number hparam such as ``betas`` (a list once JSON-decoded)."""
    first, second = hparams[key]
    return item(first), item(second)


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives scalar state (``step``, ``mu_product``, ``eta``).

    Mirrors ``torch.optim.optimizer._get_scalar_dtype``: float64 when the
    default dtype is float64, else float32.
    """
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def as_scalar_state(x: float) -> float:
    """Round ``x`` the way storing it in a scalar state tensor would."""
    return torch.tensor(x, dtype=scalar_dtype()).item()


def step_of(state: Mapping[str, Tensor | float]) -> float:
    """The ``step`` count stored in the state before this update (0 if fresh)."""
    step = state.get("step")
    return 0.0 if step is None else item(step)


def state_or(state: Mapping[str, Tensor], key: str, like: Tensor, fill: float = 0.0) -> Tensor:
    """The float64 state tensor ``key``, or a fresh one filled with ``fill``."""
    got = state.get(key)
    if got is None:
        return torch.full_like(like, fill, dtype=torch.float64)
    return got.to(torch.float64)


def looks_float32(*tensors: Tensor) -> bool:
    """Whether every value is exactly a float32 (the caller's cast hides the dtype)."""
    return all(torch.equal(t, t.to(torch.float32).to(t.dtype)) for t in tensors)
