"""Update rules: ``rule-mismatch``, an update that does not follow its optimizer's rule.

The verdict per update is the report's own (:func:`tracer._checks.check_updates`, read
through :func:`_update_checks`): the report, ``diagnose`` and ``tracer.testing`` cannot
disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tracer._diagnose._findings import Finding, label, num
from tracer._diagnose._thresholds import Thresholds
from tracer._series import series
from tracer._trace import Trace

if TYPE_CHECKING:
    from tracer._checks import UpdateCheck


def rule_mismatch(trace: Trace, t: Thresholds, *, optimizers: Sequence[type] = ()) -> list[Finding]:
    """Parameters whose updates do not follow their optimizer's rule, on up to
    ``rule_check_steps`` traced steps (a step a gradient scaler skipped follows no rule).

    Example::

        rule_mismatch(tracer.open("traces/clamped_sgd"), Thresholds())[0].evidence["max_abs_error"]
    """
    s = series(trace)
    lead = s.lead
    steps = sorted({int(x) for x in lead.loc[lead["kind"] == "update", "step"]} - set(s.skipped))
    if not steps:
        return []
    if t.rule_check_steps is not None and len(steps) > t.rule_check_steps:
        picks = np.unique(np.linspace(0, len(steps) - 1, max(2, t.rule_check_steps)).round().astype(int))
        steps = [steps[i] for i in picks]
    by_name: dict[str, list[UpdateCheck]] = {}
    for check in _update_checks(trace, steps, optimizers):
        by_name.setdefault(check.name, []).append(check)
    return [f for name, checks in by_name.items() for f in _mismatch(name, checks)]


def _update_checks(trace: Trace, steps: list[int], optimizers: Sequence[type]) -> list[UpdateCheck]:
    """The verdict of every update at ``steps``: :func:`tracer._checks.check_updates`, the
    one check (and tolerance policy) the report and ``tracer.testing`` use too."""
    from tracer._checks import check_updates

    if trace.path is None and not {"values", "shape"} <= set(trace.rows(kind="update", step=steps[0]).columns):
        return []  # a DataFrame loaded without the values: nothing to check them with
    return check_updates(trace, optimizers=tuple(optimizers), step=steps)


def _mismatch(name: str, checks: list[UpdateCheck]) -> list[Finding]:
    bad = [c for c in checks if c.matches is False]
    if not bad:
        return []
    checked = [c for c in checks if c.matches is not None]
    worst = max(bad, key=lambda c: c.max_abs_error if c.max_abs_error is not None else math.inf)
    error = worst.max_abs_error if worst.max_abs_error is not None else math.inf
    how = "its rule" if worst.check == "rule" else "a replay of the optimizer"
    evidence = {
        "mismatched_steps": len(bad),
        "checked_steps": len(checked),
        "max_abs_error": error,
        "worst_step": worst.step,
        "optimizer": worst.optimizer,
    }
    message = (
        f"The updates of {label(name)} do not follow the {worst.optimizer} update rule at {len(bad)} of "
        f"{len(checked)} checked steps (checked by {how}, max error {num(error)}): the optimizer, or code "
        "inside optimizer.step(), changes it in a way the rule does not say; see tracer.report for the "
        "step-by-step arithmetic."
    )
    steps = tuple(c.step for c in bad)
    return [Finding("error", "rule-mismatch", steps[0], steps, "update", name, message, evidence)]
