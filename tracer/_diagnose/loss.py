"""The loss trend: ``loss-diverging`` and ``loss-flat``, from the loss per step of :mod:`tracer._series`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from tracer._diagnose._findings import Finding, num
from tracer._diagnose._thresholds import Thresholds, window_steps
from tracer._series import series
from tracer._trace import Trace


@dataclasses.dataclass(frozen=True)
class _Trend:
    """The early and late medians of the finite loss per step, and where it started."""

    loss: pd.Series
    k: int
    early: float
    late: float
    start: float  # the smaller of the first loss and the early median

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.loss.index)

    def diverging(self, t: Thresholds) -> bool:
        return self.late > self.start and self.late - self.start > (t.loss_diverge_factor - 1.0) * abs(self.start)

    def evidence(self) -> dict[str, float | int]:
        return {
            "start": self.start,
            "early_median": self.early,
            "late_median": self.late,
            "window_steps": self.k,
            "steps": len(self.loss),
        }


def _trend(trace: Trace, t: Thresholds) -> _Trend | None:
    """The trend of the one loss series, or None where there is no trend to read: too few
    steps, AMP skips (the traced loss is the scaled one), or several loss series (a GAN's
    players' losses are a game: one rising is the other's progress)."""
    s = series(trace)
    if s.skipped or len(s.loss_series) != 1:
        return None
    loss = s.loss()
    loss = loss[np.isfinite(loss.to_numpy(dtype=float))]
    if len(loss) < t.min_steps:
        return None
    k = window_steps(len(loss), t)
    values = loss.to_numpy(dtype=float)
    early, late = float(np.median(values[:k])), float(np.median(values[-k:]))
    return _Trend(loss, k, early, late, min(float(values[0]), early))


def loss_diverging(trace: Trace, t: Thresholds) -> list[Finding]:
    """The loss ends far above where it started (a learning rate too high, usually).

    Example::

        loss_diverging(tracer.open("traces/lr20"), Thresholds())[0].evidence["late_median"]
    """
    trend = _trend(trace, t)
    if trend is None or not trend.diverging(t):
        return []
    values = trend.loss.to_numpy(dtype=float)
    peak = int(trend.loss.index[int(np.argmax(values))])
    evidence = {**trend.evidence(), "max": float(values.max()), "max_step": peak}
    message = (
        f"The loss is diverging: it started at {num(trend.start)} and its median over the last {trend.k} "
        f"steps is {num(trend.late)} (more than ×{num(t.loss_diverge_factor)}; largest {num(values.max())} at "
        f"step {peak}); a learning rate too high is the usual cause."
    )
    return [Finding("error", "loss-diverging", trend.steps[0], trend.steps, "loss", "loss", message, evidence)]


def loss_flat(trace: Trace, t: Thresholds) -> list[Finding]:
    """The loss does not go down (and is not diverging: that is ``loss-diverging``).

    Example::

        loss_flat(tracer.open("traces/wrong_optimizer"), Thresholds())[0].message
    """
    trend = _trend(trace, t)
    if trend is None or trend.diverging(t):
        return []
    early, late, k = trend.early, trend.late, trend.k
    if abs(early) <= t.loss_flat_atol or early - late >= t.loss_flat_rel * abs(early):
        return []
    change = "rose" if late > early else "went"
    note = "" if late > early else f" (less than {num(100 * t.loss_flat_rel)}% lower)"
    message = (
        f"The loss is not decreasing: its median {change} from {num(early)} over the first {k} steps "
        f"to {num(late)} over the last {k}{note}; check the learning rate, that the optimizer holds "
        "the model's parameters, and the labels."
    )
    return [Finding("warning", "loss-flat", trend.steps[0], trend.steps, "loss", "loss", message, trend.evidence())]
