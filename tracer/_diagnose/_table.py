"""The table of diagnostics: adding one is a function ``(trace, thresholds) -> [Finding]``
in the module of its family, and one line here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tracer._diagnose import gradients, loss, nonfinite, rules, units, updates
from tracer._diagnose._findings import Finding
from tracer._diagnose._thresholds import Thresholds
from tracer._trace import Trace

Check = Callable[[Trace, Thresholds], list[Finding]]
"""A diagnostic: the findings of one code on an opened trace."""


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    """One row of :data:`DIAGNOSTICS`.

    Attributes:
        code: the findings' code.
        severities: the severities its findings can have, the usual one first.
        check: the function that finds them.
        doc: when it is raised, in one line (the ``tracer diagnose`` documentation).
        takes_optimizers: ``check`` also takes ``optimizers=`` (classes to replay with).
    """

    code: str
    severities: tuple[str, ...]
    check: Check
    doc: str
    takes_optimizers: bool = False


DIAGNOSTICS: tuple[Diagnostic, ...] = (
    Diagnostic("first-nonfinite", ("error",), nonfinite.first_nonfinite,
               "the earliest NaN/Inf, in training order, that is not a mask input or a gradient scaler's skip"),
    Diagnostic("loss-diverging", ("error",), loss.loss_diverging,
               "the late median loss is above loss_diverge_factor × the starting loss"),
    Diagnostic("loss-flat", ("warning",), loss.loss_flat,
               "the late median loss is not loss_flat_rel below the early median"),
    Diagnostic("exploding-grad", ("warning",), gradients.exploding_grad,
               "a layer's gradient norm exceeds exploding_growth × its early median"),
    Diagnostic("vanishing-grad", ("warning",), gradients.vanishing_grad,
               "a layer's gradient per element is below vanishing_ratio × the largest of its optimizer's layers"),
    Diagnostic("update-ratio", ("warning",), updates.update_ratio,
               "a weight's median ‖update‖/‖param‖ is above update_ratio_high or below update_ratio_low"),
    Diagnostic("dead-relu", ("warning", "error"), units.dead_relu,
               "≥ dead_fraction of a ReLU's units are zero over the batch in the last dead_steps steps"),
    Diagnostic("amp-skipped", ("info", "warning"), nonfinite.amp_skipped,
               "a gradient scaler skipped optimizer steps (a warning above amp_skip_fraction, or at the end)"),
    Diagnostic("never-changes", ("warning",), updates.never_changes,
               "a parameter whose update is always exactly zero, or a module whose parameters have no rows"),
    Diagnostic("changes-without-grad", ("warning", "info"), updates.changes_without_grad,
               "a parameter moves while its gradient is exactly zero (weight decay, momentum)"),
    Diagnostic("rule-mismatch", ("error",), rules.rule_mismatch,
               "an update does not follow its optimizer's rule (the check of tracer.report)", takes_optimizers=True),
)  # fmt: skip
"""Every diagnostic, in the order findings of one severity are listed."""

CODES: tuple[str, ...] = tuple(d.code for d in DIAGNOSTICS)
"""Every finding code :func:`diagnose` can return."""
