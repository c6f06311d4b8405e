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
        param = param.mul(1 - hparam(hparams, "lr") * weight_decay)  # a tensor lr: in its dtype
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


# -- what the trace says about dtypes ----------------------------------------
# The hparams a rule sees carry, besides the param group's keys, what the trace recorded
# about dtypes under reserved keys (tracer._checks fills them in):
TENSORS = "_tensors"  # hparam -> {"dtype", "device"} of a tensor value (a list for betas)
DEFAULT_DTYPE = "_default_dtype"  # the training process's default dtype, when not float32
PARAM_DTYPE = "_dtype"  # the parameter's dtype ("float32", "complex64", ...)
STATE_DTYPES = "_state_dtypes"  # state key -> its dtype, for the state the step read


def dtype_named(name: object, default: torch.dtype) -> torch.dtype:
    """``torch.float32`` for ``"float32"``; ``default`` for anything that names no dtype."""
    found = getattr(torch, name, None) if isinstance(name, str) else None
    return found if isinstance(found, torch.dtype) else default


def param_dtype(hparams: Mapping) -> torch.dtype:
    """The dtype the parameter's arithmetic ran in (a complex one's parts); float64 if unknown."""
    dtype = dtype_named(hparams.get(PARAM_DTYPE), torch.float64)
    return dtype.to_real() if dtype.is_complex else dtype


def scalar_dtype(hparams: Mapping) -> torch.dtype:
    """The dtype of the optimizer's scalar state (``step``, ``mu_product``, ``eta``).

    torch makes it with ``torch.optim.optimizer._get_scalar_dtype``: float32 for a fused
    optimizer, else float64 when the default dtype is float64, else float32. The dtype the
    trace recorded for ``step`` wins; before the first step, the fused flag and the training
    process's default dtype (``_default_dtype``) decide, never the reading process's.
    """
    recorded = (hparams.get(STATE_DTYPES) or {}).get("step")
    if recorded is not None and dtype_named(recorded, torch.float32).is_floating_point:
        return dtype_named(recorded, torch.float32)
    if flag(hparams, "fused"):
        return torch.float32
    default = dtype_named(hparams.get(DEFAULT_DTYPE), torch.float32)
    return torch.float64 if default == torch.float64 else torch.float32


def as_scalar_state(x: float | Tensor, hparams: Mapping) -> float:
    """Round ``x`` the way storing it in a scalar state tensor would."""
    dtype = scalar_dtype(hparams)  # never the reading process's default dtype, which as_tensor takes
    return (x.to(dtype) if isinstance(x, Tensor) else torch.tensor(x, dtype=dtype)).item()


def hparam(hparams: Mapping, key: str, default: float = 0.0) -> float | Tensor:
    """A numeric hparam as torch held it: a 0-d tensor of its recorded dtype where the group
    held a tensor (torch then computes with it in that dtype), else a float."""
    got = hparams.get(key, default)
    if got is None:
        return default
    spec = (hparams.get(TENSORS) or {}).get(key)
    return _as_held(got, spec)


def hparam_pair(hparams: Mapping, key: str) -> tuple[float | Tensor, float | Tensor]:
    """A two-number hparam (``betas``), each as torch held it (see :func:`hparam`)."""
    first, second = hparams[key]
    specs = (hparams.get(TENSORS) or {}).get(key)
    specs = specs if isinstance(specs, list) and len(specs) == 2 else [specs, specs]
    return _as_held(first, specs[0]), _as_held(second, specs[1])


def _as_held(got: object, spec: object) -> float | Tensor:
    if isinstance(spec, Mapping):
        return torch.tensor(item(got), dtype=dtype_named(spec.get("dtype"), torch.float32))  # type: ignore[arg-type]
    return item(got)  # type: ignore[arg-type]


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
