"""The one tolerance policy of update checks: when a predicted new value matches the traced one.

:class:`Tolerance` is what ``matches`` means in the report, in ``diagnose`` and in
``tracer.testing.assert_updates_follow_rule``; :func:`tracer._checks.check_updates` applies it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from tracer._checks import UpdateCheck


@functools.cache
def _finfo(dtype: str) -> tuple[float, float]:
    """``(eps, smallest normal)`` of a floating dtype (a complex one's parts); float32's for others."""
    found = getattr(torch, dtype, None)
    info = torch.finfo(found if isinstance(found, torch.dtype) and (found.is_floating_point or found.is_complex)
                       else torch.float32)  # fmt: skip
    return float(info.eps), float(info.tiny)


@functools.cache
def _resolve(tolerance: Tolerance, dtype: str) -> tuple[float, float, float]:
    eps, tiny = _finfo(dtype)
    return (
        16 * eps if tolerance.rtol is None else float(tolerance.rtol),
        tiny if tolerance.atol is None else float(tolerance.atol),
        256 * eps if tolerance.step_rtol is None else float(tolerance.step_rtol),
    )


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How close the rule's new parameter value must be to the traced one: the policy of ``matches``.

    Element by element, with θ the parameter before the step, θ̂ the new value the rule (or
    a replay) gives and θ′ the traced one (θ + update), an update matches when::

        |θ̂ − θ′| ≤ atol + rtol·max(|θ|, |θ̂|) + step_rtol·|θ̂ − θ|

    or θ̂ = θ′ (infinities too), or both are NaN. A field left None takes its default for
    the parameter's dtype, from the dtype's machine epsilon ε (as ``torch.testing.assert_close``
    takes its defaults from the dtype):

    - ``rtol = 16·ε`` (float64 3.6e-15, float32 1.9e-6): a few roundings of θ in its own
      dtype; fused and foreach kernels order the operations differently.
    - ``atol`` = the dtype's smallest normal number: values a kernel flushes to zero.
    - ``step_rtol = 256·ε`` (float64 5.7e-14, float32 3.1e-5): a few roundings of the
      step itself. The rules compute every scalar where torch does, in its dtype (a
      tensor ``lr`` in the lr's, a float32 ``step`` in float32), so float64 steps match to
      their last bits and a change of 1e-6 of any float64 update is flagged.

    A wrong term of a rule moves the step by a large fraction of itself: far more than this.

    Example::

        check_updates(run, tolerance=Tolerance(atol=1e-6))   # also allow 1e-6 absolute
        Tolerance().resolve("float32")                       # (1.9e-06, 1.2e-38, 3.1e-05)
        Tolerance().resolve("float64")                       # (3.6e-15, 2.2e-308, 5.7e-14)
    """

    rtol: float | None = None
    atol: float | None = None
    step_rtol: float | None = None

    def resolve(self, dtype: str) -> tuple[float, float, float]:
        """``(rtol, atol, step_rtol)`` for a parameter of ``dtype``: the given ones, else the defaults."""
        return _resolve(self, dtype)

    def describe(self, dtype: str) -> str:
        """``"rtol=1.91e-06, atol=1.18e-38, step_rtol=3.05e-05 for float32"``: for messages."""
        rtol, atol, step_rtol = self.resolve(dtype)
        return f"rtol={rtol:.3g}, atol={atol:.3g}, step_rtol={step_rtol:.3g} for {dtype}"

    def judge(self, checks: Sequence[UpdateCheck]) -> None:
        """Set ``max_abs_error``, ``matches`` and where they fail on ``checks`` (their ``predicted``
        set), vectorised over cache-sized chunks of checks of one dtype."""
        chunks: dict[str, list[list[UpdateCheck]]] = {}
        filled: dict[str, int] = {}
        for c in checks:
            size = _size(c.predicted)
            if size != _size(c.update):
                c.max_abs_error, c.matches, c.mismatches = math.inf, False, max(size, _size(c.update))
                continue
            parts = chunks.setdefault(c.dtype, [[]])
            if parts[-1] and filled[c.dtype] + size > _CHUNK:
                parts.append([])
                filled[c.dtype] = 0
            parts[-1].append(c)
            filled[c.dtype] = filled.get(c.dtype, 0) + size
        for dtype, parts in chunks.items():
            for part in parts:
                self._judge_chunk(dtype, part)

    def _judge_chunk(self, dtype: str, checks: list[UpdateCheck]) -> None:
        rtol, atol, step_rtol = self.resolve(dtype)
        sizes = np.array([_size(c.predicted) for c in checks])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        predicted = np.concatenate([c.predicted for c in checks if c.predicted is not None])
        old = np.concatenate([c.param.reshape(-1) for c in checks if c.param is not None])
        observed = old + np.concatenate([c.update.reshape(-1) for c in checks if c.update is not None])
        error, bad = _outside(old, observed, predicted, rtol, atol, step_rtol)
        filled = sizes > 0
        worst, counts = np.zeros(len(sizes)), np.zeros(len(sizes), dtype=np.int64)
        if filled.any():
            worst[filled] = np.maximum.reduceat(error, starts[filled])
            counts[filled] = np.add.reduceat(bad, starts[filled])
        for c, start, size, top, count in zip(checks, starts.tolist(), sizes.tolist(), worst.tolist(), counts.tolist()):
            c.max_abs_error, c.matches, c.mismatches = top, not count, count
            c.first_mismatch = int(np.flatnonzero(bad[start : start + size])[0]) if count else None

    def judge_rows(
        self, old: np.ndarray, update: np.ndarray, predicted: np.ndarray, dtype: str
    ) -> tuple[list[float], list[int], list[int]]:
        """The verdicts of many updates of one shape at once, a row each (flat float64):
        ``(max_abs_error, mismatches, first_mismatch)`` per row, as :meth:`judge` sets them
        (``first_mismatch`` is 0 where nothing is outside the tolerance).

        >>> Tolerance().judge_rows(np.zeros((1, 2)), np.ones((1, 2)), np.ones((1, 2)), "float64")
        ([0.0], [0], [0])
        """
        rtol, atol, step_rtol = self.resolve(dtype)
        n, size = predicted.shape
        worst, counts, first = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        rows = max(1, _CHUNK // max(size, 1))
        for at in range(0, n if size else 0, rows):
            pred, before = predicted[at : at + rows], old[at : at + rows]
            error, bad = _outside(before, before + update[at : at + rows], pred, rtol, atol, step_rtol)
            worst[at : at + rows] = error.max(axis=1)
            counts[at : at + rows] = bad.sum(axis=1)
            first[at : at + rows] = bad.argmax(axis=1)
        return worst.tolist(), counts.tolist(), first.tolist()


_CHUNK = 1 << 15
"""Elements compared at once: enough to amortise the per-call cost, few enough to stay in cache."""


def _size(values: np.ndarray | None) -> int:
    return -1 if values is None else int(values.size)


def _outside(
    old: np.ndarray, observed: np.ndarray, predicted: np.ndarray, rtol: float, atol: float, step_rtol: float
) -> tuple[np.ndarray, np.ndarray]:
    """|predicted − observed| per element, and where it is outside the tolerance (equal
    values, infinities included, and NaN against NaN are inside, with error 0)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf
        error = np.abs(predicted - observed)
        bad = ~(error <= atol + rtol * np.maximum(np.abs(old), np.abs(predicted)) + step_rtol * np.abs(predicted - old))
    if bad.any():
        same = (predicted == observed) | (np.isnan(predicted) & np.isnan(observed))
        error[same] = 0.0
        bad &= ~same
    return error, bad
