"""What the walkthrough's modules share: how numbers, indices and checks are written.

>>> ok(3.0, 3.0), sub(0), sup(1, Ctx(batch=2, unbatched=False, simple=True))
('✓', '₁', '⁽²⁾')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from tracer.rules._base import arg, num

__all__ = ["ACTIVATIONS", "Ctx", "arg", "num", "ok", "pname", "sub", "sup"]

_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUP = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")

ACTIVATIONS = {
    "ReLU": ("ReLU", "h = max(0, z)  ⇒  ∂h/∂z = 1 if z > 0, else 0"),
    "Sigmoid": ("σ", "h = σ(z) = 1 / (1 + e^(−z))  ⇒  ∂h/∂z = σ(z)(1 − σ(z)) = h(1 − h)"),
    "Tanh": ("tanh", "h = tanh(z)  ⇒  ∂h/∂z = 1 − tanh²(z) = 1 − h²"),
}
"""The activations a walkthrough covers: the function's symbol, and its derivative derived."""


@dataclasses.dataclass(frozen=True)
class Ctx:
    """How a step is written: ``batch`` examples (``unbatched``: x had no batch dimension);
    ``simple``: one Linear layer with one output, the tutorial's ŷ = w₁x₁ + w₂x₂ + b."""

    batch: int
    unbatched: bool
    simple: bool

    def each(self, text: Callable[[int], str]) -> str:
        """``text(n)`` of every example, joined (one example: just its text)."""
        return "; ".join(text(n) for n in range(self.batch))

    def h(self, name: str) -> str:
        """The symbol of a layer's output: ŷ for the model's, ``h[name]`` inside a Sequential."""
        return f"h[{name}]" if name else "ŷ"


def ok(got: float, traced: float) -> str:
    """✓ when the number worked here equals the traced one, else ✗ with the traced value."""
    return "✓" if math.isclose(got, traced, rel_tol=1e-6, abs_tol=1e-9) else f"✗ (traced {num(traced)})"


def sub(i: int) -> str:
    """The 1-based subscript of index ``i``: ``sub(0) == "₁"`` (w₁ is ``weight[0,0]``)."""
    return str(i + 1).translate(_SUB)


def sup(n: int, ctx: Ctx) -> str:
    """The example's 1-based superscript ``⁽ⁿ⁾`` in a batch of several; nothing for one."""
    return "" if ctx.batch == 1 else f"⁽{str(n + 1).translate(_SUP)}⁾"


def pname(module: str, param: str) -> str:
    """A parameter's name in ``named_parameters()``: ``"0.weight"``, or ``"weight"`` at the root."""
    return f"{module}.{param}" if module else param
