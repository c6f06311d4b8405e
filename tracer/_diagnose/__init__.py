"""``tracer.diagnose``: what went wrong in a traced training run, and where it started.

>>> findings = tracer.diagnose("traces/run1")            # doctest: +SKIP
>>> print(findings)                                        # doctest: +SKIP
>>> findings.to_frame().query("severity == 'error'")       # doctest: +SKIP

Each diagnostic is a function ``(trace, thresholds) -> [Finding]`` in the module of its
family (:mod:`.nonfinite`, :mod:`.loss`, :mod:`.gradients`, :mod:`.updates`,
:mod:`.units`, :mod:`.rules`), listed in :data:`DIAGNOSTICS` (``_table.py``). They read
the series of :mod:`tracer._series` (computed once per trace, shared with ``tracer
summary``), and values only for the few rows that need them. The thresholds are
documented on :class:`Thresholds`; every one can be changed.

=====================  ========  ==========================================================
code                   severity  when
=====================  ========  ==========================================================
first-nonfinite        error     the earliest row, by step then training order, that holds
                                 NaN/Inf; not counted: inf/NaN in the backward pass of a
                                 step a gradient scaler skipped, and mask inputs (±inf that
                                 does not reach the module's output, such as the ``-inf``
                                 causal mask of ``nn.Transformer``)
loss-diverging         error     late-window median loss > ``loss_diverge_factor`` × the
                                 starting loss (the first step's, or the early median if
                                 lower)
loss-flat              warning   late-window median not ``loss_flat_rel`` below the early
                                 one. Both loss checks read the loss per step (the sum of
                                 its micro-batch losses) of a trace with one loss series:
                                 a GAN's two losses are a game, not a trend
exploding-grad         warning   a layer's gradient norm > ``exploding_growth`` × its early
                                 median
vanishing-grad         warning   a layer's per-element gradient < ``vanishing_ratio`` × the
                                 largest layer's of the same optimizer, at most steps
                                 before convergence
update-ratio           warning   a weight's median ‖update‖/‖param‖ above
                                 ``update_ratio_high`` or below ``update_ratio_low``
dead-relu              warning   ≥ ``dead_fraction`` of a ReLU's units zero for the whole
                       (error)   batch in each of the last ``dead_steps`` steps (all: error)
amp-skipped            info      steps a gradient scaler skipped (``skipped`` rows; or, for
                       (warning) a fused optimizer, non-finite gradients and a zero update);
                                 a warning above ``amp_skip_fraction`` or at the last step
never-changes          warning   a parameter whose update is exactly zero at every traced
                                 step; or a Linear/Conv/Embedding/RNN module that runs but
                                 none of whose parameters has a row under any of its names
                                 (a tied ``lm_head.weight`` has the rows of ``wte.weight``)
changes-without-grad   warning   a parameter that moves while its gradient is exactly zero
                       (info)    (weight decay, momentum); info when only at some steps
rule-mismatch          error     an update that does not follow its optimizer's rule (the
                                 check of ``tracer.report``, on ``rule_check_steps`` steps)
=====================  ========  ==========================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from tracer._diagnose._findings import (
    SEVERITIES,
    Finding,
    Findings,
    findings_blocks,
    findings_html,
)
from tracer._diagnose._table import CODES, DIAGNOSTICS, Diagnostic
from tracer._diagnose._thresholds import Thresholds, coerce_thresholds
from tracer._series import series
from tracer._trace import Trace, TraceLike

__all__ = [
    "CODES",
    "DIAGNOSTICS",
    "SEVERITIES",
    "Diagnostic",
    "Finding",
    "Findings",
    "Thresholds",
    "diagnose",
    "findings_blocks",
    "html_section",
]


def diagnose(
    trace: TraceLike,
    *,
    thresholds: Thresholds | Mapping[str, Any] | None = None,
    optimizers: Sequence[type] = (),
) -> Findings:
    """Find what went wrong in a traced run: non-finite values, bad gradients, dead units, ...

    Example::

        findings = tracer.diagnose("traces/run1")
        print(findings)              # a table, most severe first
        if findings.has_errors:
            first = findings[0]      # e.g. code "first-nonfinite", step 12, name "fc2"

    Args:
        trace: a trace directory, a ``tracer.Run``, a DataFrame from ``tracer.load``, or
            a ``tracer.Trace``.
        thresholds: a :class:`Thresholds`, or a dict of the thresholds to change.
        optimizers: optimizer classes outside ``torch.optim`` for the rule check (as in
            ``tracer.report``).

    Returns:
        :class:`Findings`, a list of :class:`Finding`: errors first, then warnings, then
        info; within a severity in the order of :data:`CODES`, then by step.

    Raises:
        TraceFormatError: ``trace`` is not a readable trace.
        ValueError: an unknown threshold name.
    """
    t = coerce_thresholds(thresholds)
    opened = Trace.open(trace)
    if series(opened).stats.empty:
        return Findings()
    found: list[Finding] = []
    for diagnostic in DIAGNOSTICS:
        if diagnostic.takes_optimizers:
            found += diagnostic.check(opened, t, optimizers=tuple(optimizers))  # type: ignore[call-arg]
        else:
            found += diagnostic.check(opened, t)
    return Findings(_ordered(_with_aliases(found, opened), opened))


def _with_aliases(found: list[Finding], trace: Trace) -> list[Finding]:
    """A finding about a shared parameter names its other names too (``lm_head.weight``)."""
    aliases = series(trace).aliases
    return [
        dataclasses.replace(f, evidence={**f.evidence, "aliases": ", ".join(aliases[f.name])})
        if f.name in aliases
        else f
        for f in found
    ]


def _ordered(found: list[Finding], trace: Trace) -> list[Finding]:
    """Most severe first; then in table order, by step, and by the name's first row."""
    severity = {s: i for i, s in enumerate(SEVERITIES)}
    seen = {n: i for i, n in enumerate(series(trace).stats["name"].unique())}
    return sorted(
        found,
        key=lambda f: (
            severity[f.severity],
            CODES.index(f.code),
            math.inf if f.step is None else f.step,
            seen.get(f.name, math.inf),
        ),
    )


def html_section(findings_or_trace: Sequence[Finding] | TraceLike) -> str:
    """The findings (or those of diagnosing a trace) as HTML elements for a page: the
    blocks of :func:`findings_blocks` (a section of class ``tracer-findings``) written by
    the report's one HTML writer, every text escaped, no scripts.

    Example::

        page = report.to_html().replace("<body>", "<body>" + html_section(findings), 1)
    """
    if isinstance(findings_or_trace, Sequence) and not isinstance(findings_or_trace, str):
        return findings_html(cast("Sequence[Finding]", findings_or_trace))
    return findings_html(diagnose(findings_or_trace))
