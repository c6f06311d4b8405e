"""What ``tracer.testing.assert_updates_follow_rule`` says when an update fails its check.

The verdicts are :func:`tracer._checks.check_updates`'s, with its :class:`Tolerance`: the
assertion only words them, so it can never disagree with the report or ``diagnose``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracer._checks import Tolerance, UpdateCheck
from tracer._testing_rows import MAX_LISTED, index_of


def failures(checks: Sequence[UpdateCheck], tolerance: Tolerance, source: str) -> str | None:
    """The assertion's message: what failed and why, or None when every update was checked and matches.

    Example::

        failures(check_updates(run), Tolerance(), str(run.path))   # None: all good
    """
    if all(c.optimizer is None for c in checks):
        outside = f" (its {len(checks)} traced updates were made outside torch.optim)" if checks else ""
        return (
            f"no updates to check in {source}{outside}: trace an optimizer with capture including "
            "'grad', 'param' and 'update'"
        )
    wrong = [c for c in checks if c.matches is False]
    unchecked = [c for c in checks if c.matches is None]
    if not wrong and not unchecked:
        return None
    total, lines = len(checks), list[str]()
    # two different findings, never lumped: an update that differs is a bug (in the optimizer,
    # the loop or the trace); one that could not be checked is a gap in what was traced
    verb = "does not" if len(wrong) == 1 else "do not"
    for group, head in ((wrong, f"{verb} follow the rule"), (unchecked, "could not be checked")):
        if group:
            lines += [*([""] if lines else []), f"{len(group)} of {total} traced updates {head}:"]
            lines += [problem(c, tolerance) for c in group[:MAX_LISTED]]
            lines += [f"  ... and {len(group) - MAX_LISTED} more"] if len(group) > MAX_LISTED else []
    lines.append(f"trace: {source}")
    return "\n".join(lines)


def problem(check: UpdateCheck, tolerance: Tolerance) -> str:
    """One line (two with the rule) on an update that is not known to follow its rule."""
    where = f"step {check.step}, {check.name!r} ({check.optimizer or 'no optimizer'}"
    where += f", checked by {check.check})" if check.check else ")"
    if check.matches is None:
        return f"  {where}: not checked: {check.reason or 'no reason was given'}"
    rule = f"\n      rule: {check.rule}" if check.rule else ""
    observed, flat = check.observed, check.first_mismatch
    if check.check == "verify":
        return f"  {where}: the training process found it off by up to {check.max_abs_error:.6g}{rule}"
    if check.predicted is None or observed is None or flat is None:
        return f"  {where}: does not match (max abs error {check.max_abs_error}){rule}"
    return (
        f"  {where}: {check.mismatches} / {check.predicted.size} elements differ; first at index "
        f"{_index(flat, check.shape, check.predicted.size)}: observed {float(observed[flat])!r}, predicted "
        f"{float(check.predicted[flat])!r}; greatest absolute difference {check.max_abs_error:.6g} "
        f"({tolerance.describe(check.dtype)}){rule}"
    )


def _index(flat: int, shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The index of a flat position in the checked tensor (flat when the shape does not fit)."""
    return index_of(flat, shape) if int(np.prod(shape)) == size else (flat,)
