"""The report as compact plain text, for a terminal: what ``str(report)`` and ``tracer report``
print by default.

The first step a small model ran is worked by hand in full (forward pass, loss, chain rule,
update) when that takes at most :data:`WALK_LINES` lines, or when one step was asked for;
then each update rule is written once per optimizer and param group, with its
hyper-parameters (and how a schedule changed them); then one line per update: ✓/✗, the
largest |predicted − observed| and the norms. 20 steps of 10 parameters are about 250 lines.

>>> print(to_text(tracer.report("traces/run1")))        # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tracer._checks import UpdateCheck
from tracer._render import Block, Formula, Heading, Para, Section, Table
from tracer._render import to_text as _render_text
from tracer._report_update import group, nums, shown_hparams

if TYPE_CHECKING:
    from tracer._report import Report

WALK_LINES = 200
"""A walkthrough longer than this is offered (``--step N``), not printed, unless one step was asked for."""
HEADER = ("step", "parameter", "check", "max error", "‖g‖", "‖Δθ‖", "‖θ‖", "‖Δθ‖/‖θ‖")


def to_text(rep: Report) -> str:
    """The compact text of a report (see the module's docstring)."""
    from tracer._report import spans

    blocks: list[Block] = [Heading(1, f"tracer report: {rep.source}"), Para(rep.summary())]
    by_step = rep._by_step()
    walked = rep._walked()
    if walked:
        first = walked[0]
        body = Section(f"Step {first}, worked by hand", tuple(rep._walk_blocks(first, by_step.get(first, []))))
        lines = _render_text([body]).count("\n")
        if lines <= WALK_LINES or len(rep.steps) == 1:
            blocks.append(body)
            if len(walked) > 1:
                blocks.append(Para(f"{spans(walked[1:]).capitalize()} can be worked the same way: "
                                   "tracer report PATH --step N (or tracer.report(trace, step=N)) shows one."))  # fmt: skip
        else:
            blocks.append(Para(f"{spans(walked).capitalize()} can be worked by hand, step {first} in {lines} lines: "
                               f"tracer report PATH --step {first} (or tracer.report(trace, step={first})) shows it."))  # fmt: skip
    blocks += [Para(text) for text in rep._why_not_walked()]
    if rep.checks:
        blocks += _rules(rep.checks)
        blocks += _updates(rep)
    elif not rep.skipped:
        blocks.append(Para("No update was traced."))
    if rep.skipped:
        from tracer._report import skipped_text

        blocks += [Para(f"Step {step}: {skipped_text(opt)}") for step, opt in sorted(rep.skipped.items())]
    return _render_text(blocks)


def _rules(checks: list[UpdateCheck]) -> list[Block]:
    """Each rule once per (optimizer, param group, rule), with its parameters and hparams."""
    groups: dict[tuple, list[UpdateCheck]] = {}
    for c in checks:
        groups.setdefault((c.optimizer, c.param_group, c.rule), []).append(c)
    out: list[Block] = [Heading(2, "Update rules")]
    for (optimizer, _, rule), members in groups.items():
        c = members[0]
        names = list(dict.fromkeys(m.name for m in members))
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        title = f"{optimizer or 'no optimizer'}{group(c)}"
        if c.rule_class and c.rule_class != optimizer:
            title += f" (the rule of {c.rule_class}, its base class)"
        out.append(Para(f"{title}: {shown}"))
        if rule is not None:
            out.append(Formula(rule, c.latex or ""))
            hp = _hparams(members)
            if hp:
                out.append(Para("with " + hp))
        else:
            out.append(Para("No update rule: these updates are not checked (the reason is under Updates)."))
    return out


def _hparams(members: list[UpdateCheck]) -> str:
    """``γ = 0.01 (lr)``; a scheduled one: ``γ = 0.5 (lr) at step 0 … 0.0625 at step 3 (4 values)``."""
    seen: dict[str, dict[str, int]] = {}
    steps: set[int] = set()
    for c in members:
        if c.step in steps:
            continue  # a param group's hyper-parameters are the same for all its parameters at a step
        steps.add(c.step)
        for key, text in shown_hparams(c):
            seen.setdefault(key, {}).setdefault(text, c.step)
    parts = []
    for values in seen.values():
        texts = list(values)
        if len(texts) == 1:
            parts.append(texts[0])
        else:
            last = texts[-1].split(" = ", 1)[1].rsplit(" (", 1)[0]
            parts.append(f"{texts[0]} at step {values[texts[0]]} … {last} at step {values[texts[-1]]} "
                         f"({len(texts)} values)")  # fmt: skip
    return ", ".join(parts)


def _updates(rep: Report) -> list[Block]:
    marks = {True: "✓", False: "✗", None: "–"}
    flat: list[float | None] = []
    for c in rep.checks:
        norms = c.norms
        flat += (c.max_abs_error, norms.get("grad"), norms.get("update"), norms.get("param"), _ratio(c))
    texts = [t if v is not None else "–" for v, t in zip(flat, nums([math.nan if v is None else v for v in flat]))]
    rows = [
        (str(c.step), c.name, f"{marks[c.matches]} {c.check or 'not checked'}", *texts[at : at + 5])
        for at, c in zip(range(0, len(texts), 5), rep.checks)
    ]
    out: list[Block] = [
        Heading(2, "Updates"),
        Para(
            "One line per (step, parameter): ✓ the update follows its rule, ✗ it differs, – not checked; "
            "max error is the largest |predicted − observed|."
        ),  # fmt: skip
        Table(HEADER, tuple(rows), align="left"),
    ]
    reasons: dict[str, int] = {}
    for c in rep.checks:
        if c.matches is None:
            reasons[c.reason or "no reason was given"] = reasons.get(c.reason or "no reason was given", 0) + 1
    out += [Para(f"– Not checked ({n} update{'s' if n > 1 else ''}): {reason}.") for reason, n in reasons.items()]
    return out


def _ratio(c: UpdateCheck) -> float | None:
    """‖Δθ‖/‖θ‖ as the table shows it; None ("–") where there is none."""
    param, update = c.norms.get("param"), c.norms.get("update")
    if param is None or update is None or (param == 0 and not math.isnan(update)):
        return None  # a zero parameter has no ratio
    return c.update_ratio
