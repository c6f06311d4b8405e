"""The `Rule` record, the `CannotPredict` error, and helpers the rule modules share.

Every elementwise rule module follows the same shape: ``_compute`` replays
torch's ``_single_tensor_*`` step on float64 tensors and returns the named
intermediates; ``predict`` keeps the new parameter; ``explain`` runs the same
``_compute`` on one element (0-d tensors) and writes the arithmetic out, so
its last number is predict's value for that element.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

MINUS = "\u2212"

Predict = Callable[[Tensor, "Tensor | None", "dict[str, Tensor]", dict], Tensor]
Explain = Callable[[str, float, "float | None", "dict[str, float]", dict], "list[str]"]


class CannotPredict(Exception):
    """A rule cannot reproduce this update from one parameter's values and state."""


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: rules hold functions
class Rule:
    """The update rule of one torch.optim optimizer: text, LaTeX, predict and explain.

    Args:
        optimizer: the torch.optim class name the rule is for, e.g. ``"SGD"``.
        text: hparams -> the rule in plain Unicode text, only the branches the
            flags select, one line per assignment.
        latex: hparams -> the same rule in LaTeX, torch.optim doc symbols.
        predict: ``(param, grad, state, hparams) -> new param`` (float64).
        explain: ``(label, param, grad, state, hparams) -> lines`` of hand
            arithmetic for one element.
        symbols: hparam key -> the symbol the rule uses for it.
        note: a sentence on the rule's limits, or "".
    """

    optimizer: str
    text: Callable[[dict], str]
    latex: Callable[[dict], str]
    predict: Predict
    explain: Explain
    symbols: dict[str, str] = dataclasses.field(default_factory=dict)
    note: str = ""


# -- numbers -----------------------------------------------------------------


def num(x: float) -> str:
    """Format a number with up to 6 significant digits and a Unicode minus."""
    x = float(x)
    if x == 0:
        return "0"
    return format(x, ".6g").replace("-", MINUS)


def arg(x: float) -> str:
    """Format a number as an operand: negative numbers are parenthesised."""
    text = num(x)
    return f"({text})" if text.startswith(MINUS) else text


def item(t: Tensor | float) -> float:
    """A 0-d tensor or a float as a Python float."""
    return float(t.item()) if isinstance(t, Tensor) else float(t)


def final_line(label: str, arithmetic: str, value: Tensor | float) -> str:
    """The last explain line: ``label: arithmetic = value``."""
    return f"{label}: {arithmetic} = {num(item(value))}"


# -- rendering ---------------------------------------------------------------


def text_lines(lines: Sequence[str]) -> str:
    """Join plain-text rule lines, one assignment per line."""
    return "\n".join(lines)


def latex_lines(lines: Sequence[str]) -> str:
    """Join LaTeX rule lines; several lines become an ``aligned`` block."""
    if len(lines) == 1:
        return lines[0]
    body = r" \\ ".join(f"&{line}" for line in lines)
    return rf"\begin{{aligned}}{body}\end{{aligned}}"


# -- hyper-parameters and state ---------------------------------------------


def flag(hparams: Mapping, key: str) -> bool:
    """A boolean flag of the param group; absent or None reads as False."""
    return bool(hparams.get(key) or False)


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


def step_of(state: Mapping[str, Tensor]) -> float:
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


# -- explain -----------------------------------------------------------------


def scalars(
    param: float, grad: float | None, state: Mapping[str, float]
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """One element's values as 0-d float64 tensors, ready for a rule's ``_compute``."""

    def as_t(x: float) -> Tensor:
        return torch.tensor(float(x), dtype=torch.float64)

    return (
        as_t(param),
        None if grad is None else as_t(grad),
        {key: as_t(v) for key, v in state.items() if v is not None},
    )


def decay_lines(hparams: Mapping, text: bool) -> list[str]:
    """The weight-decay line of the Adam family: decoupled (AdamW-style) shrinks θ, otherwise
    L2 joins g; none without weight decay. ``text``: plain text, else LaTeX."""
    if not value(hparams, "weight_decay"):
        return []
    if flag(hparams, "decoupled_weight_decay"):
        return ["θ ← θ − γ·λ·θ" if text else r"\theta_{t-1} \leftarrow \theta_{t-1} - \gamma \lambda \theta_{t-1}"]
    return ["g ← g + λ·θ" if text else r"g_t \leftarrow g_t + \lambda \theta_{t-1}"]


def no_grad_line(label: str, param: float) -> list[str]:
    """What explain says for a parameter the optimizer skipped."""
    return [f"{label}: no gradient, the optimizer skips it = {num(param)}"]


def grad_lines(grad: float, parts: Mapping[str, Tensor], weight_decay: float, param: float) -> list[str]:
    """Lines for ``g ← −g`` (maximize) and ``g ← g + λ·θ`` (L2 weight decay)."""
    lines = []
    if "g_max" in parts:
        lines.append(f"g: {MINUS}{arg(grad)} = {num(item(parts['g_max']))}")
    if "g_wd" in parts:
        before = item(parts.get("g_max", grad))
        lines.append(
            f"g: {arg(before)} + {arg(weight_decay)} · {arg(param)} = {num(item(parts['g_wd']))}"
        )
    return lines


def ema_line(name: str, beta: float, old: float, x: float, result: Tensor, square: bool = False) -> str:
    """``name: β · old + (1 − β) · x = result`` for an exponential moving average."""
    shown = f"{arg(x)}²" if square else arg(x)
    return f"{name}: {arg(beta)} · {arg(old)} + {arg(1 - beta)} · {shown} = {num(item(result))}"
