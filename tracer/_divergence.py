"""``tracer.Divergence``: where two traces first differ, and how that is said.

>>> print(Divergence(step=3, kind="grad", name="fc.weight", call=0, part="", field="values",
...                  index=1, a=0.5, b=0.25, later=0, shape=(2,), rtol=0.0, atol=0.0))
traces diverge at step 3: grad 'fc.weight' call 0: values differ at index (1,): a = 0.5, b = 0.25
  |a - b| = 0.25, allowed atol + rtol·|b| = 0 (rtol=0, atol=0)
  no later row differs
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas

EXACT_STATS = ("numel", "nonfinite")
"""Statistics compared exactly (counts), never within a tolerance."""


def describe(kind: str, name: str, call: int, part: str, rank: int = 0, evaluation: bool = False) -> str:
    """``"grad 'fc.weight' call 0"``: how messages name one row."""
    text = f"{kind} {name!r} call {call}"
    if part:
        text += f" part {part!r}"
    if rank:
        text += f" rank {rank}"
    if evaluation:
        text += " (evaluation, no gradients)"
    return text


def flat_to_index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Flat (row-major) index -> index into a tensor of ``shape``."""
    if not len(shape):
        return ()
    return tuple(int(i) for i in np.unravel_index(flat, tuple(int(s) for s in shape)))


# --------------------------------------------------------------------------- Divergence


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Where two traces first differ, in training order; ``str()`` explains it.

    Attributes:
        step, kind, name, call, part, rank: the row (see the trace columns).
        field: what differs: ``"missing"`` (the row is in one trace only), ``"shape"``,
            ``"values"``, or a statistic (``"mean"``, ``"norm"``, ...) when the values are
            not stored in both traces.
        index: for ``"values"``, the flat (row-major) index of the first differing element.
        a, b: the two values there: numbers for values/statistics, shapes for ``"shape"``,
            and for ``"missing"`` whether the row is in ``a`` / in ``b``.
        later: how many later rows (in training order) also differ.
        evaluation: the row is of a forward pass run without gradients (``grad_enabled``
            false), whose calls are counted apart from the training ones.
    """

    step: int
    kind: str
    name: str
    call: int
    part: str
    field: str
    index: int | None
    a: Any
    b: Any
    later: int
    rank: int = 0
    evaluation: bool = False
    shape: tuple[int, ...] | None = dataclasses.field(default=None, repr=False)
    rtol: float | None = dataclasses.field(default=None, repr=False)
    atol: float | None = dataclasses.field(default=None, repr=False)
    note: str = dataclasses.field(default="", repr=False)
    labels: tuple[str, str] = dataclasses.field(default=("a", "b"), repr=False)

    def __str__(self) -> str:
        la, lb = self.labels
        row = describe(self.kind, self.name, self.call, self.part, self.rank, self.evaluation)
        head = f"traces diverge at step {self.step}: {row}"
        if self.field == "missing":
            where = f"is in {la} but not in {lb}" if self.a else f"is in {lb} but not in {la}"
            lines = [f"{head} {where}" + (f" ({self.note})" if self.note else "")]
        elif self.field == "shape":
            lines = [f"{head} has shape {_shape(self.a)} in {la} and {_shape(self.b)} in {lb}"]
        else:
            if self.field == "values":
                at = f"values differ at index {flat_to_index(self.index or 0, self.shape or ())}"
                if self.shape is not None and len(self.shape) > 1:
                    at += f" (flat index {self.index})"
            else:
                at = f"statistic {self.field!r} differs (values are not stored in both traces)"
            lines = [f"{head}: {at}: {la} = {self.a!r}, {lb} = {self.b!r}"]
            if self.rtol is not None and self.atol is not None and self.field not in EXACT_STATS:
                diff, allowed = _abs_diff(self.a, self.b), self.atol + self.rtol * _abs(self.b)
                lines.append(
                    f"  |{la} - {lb}| = {diff:.6g}, allowed atol + rtol·|{lb}| = {allowed:.3g} "
                    f"(rtol={self.rtol:.3g}, atol={self.atol:.3g})"
                )
        if self.later == 1:
            lines.append("  1 later row also differs")
        elif self.later:
            lines.append(f"  {self.later} later rows also differ")
        else:
            lines.append("  no later row differs")
        return "\n".join(lines)


def _shape(shape: Any) -> str:
    return str(tuple(int(s) for s in shape))


def _abs(x: Any) -> float:
    try:
        return abs(complex(x))
    except (TypeError, ValueError):
        return float("nan")


def _abs_diff(a: Any, b: Any) -> float:
    """|a − b| of two numbers, real or complex (NaN when either is not a number)."""
    try:
        with np.errstate(all="ignore"):
            return float(abs(complex(a) - complex(b)))
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def missing_note(
    key: dict[str, Any], fa: pandas.DataFrame, fb: pandas.DataFrame, in_a: bool, labels: tuple[str, str]
) -> str:
    """Why a row is in one trace only: the step is missing, or the name changed."""
    here, there = (fa, fb) if in_a else (fb, fa)
    other = labels[1] if in_a else labels[0]
    step = key["step"]
    there_steps = there["step"].unique()
    if step not in there_steps:
        return f"{other} has no step {step}; its steps are {_steps_text(there_steps)}"
    same = there[(there["step"] == step) & (there["kind"] == key["kind"])]
    if same.empty:
        return f"{other} has no {key['kind']} rows at step {step}"
    names_here = set(here.loc[(here["step"] == step) & (here["kind"] == key["kind"]), "name"])
    instead = [n for n in dict.fromkeys(same["name"]) if n not in names_here]
    if instead:
        shown = ", ".join(repr(n) for n in instead[:5]) + (", ..." if len(instead) > 5 else "")
        return f"{other} has {key['kind']} {shown} at step {step} instead"
    if key["name"] in set(same["name"]):
        calls = sorted(set(same.loc[same["name"] == key["name"], "call"]))
        return f"{other} has {key['kind']} {key['name']!r} at step {step} with calls {calls}"
    return ""


def _steps_text(steps: Any) -> str:
    steps = sorted({int(s) for s in steps})
    if not steps:
        return "none"
    if len(steps) == steps[-1] - steps[0] + 1 and len(steps) > 2:  # no gaps
        return f"{steps[0]} to {steps[-1]}"
    shown = ", ".join(str(s) for s in steps[:10])
    return shown + (", ..." if len(steps) > 10 else "")
