"""``tracer.report``: every traced update explained by its optimizer's rule, and checked.

>>> rep = tracer.report("traces/walkthrough")          # doctest: +SKIP
>>> print(rep)                                          # doctest: +SKIP
...  weight[0,1]: 1 − 0.01 · (−20) = 1.2
>>> rep.to_frame()[["step", "name", "matches"]]         # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tracer._checks import UpdateCheck, check_updates
from tracer._explain import may_walk, walkthroughs
from tracer._render import Block, Formula, Heading, Items, Para, Raw, Section, Table
from tracer._render import to_html as _to_html
from tracer._render import to_latex as _to_latex
from tracer._render import to_markdown as _to_markdown
from tracer._render import to_text as _to_text
from tracer._trace import NameFilter, StepFilter, Trace, TraceLike, filter_frame
from tracer.rules._base import num

FRAME_COLUMNS = [
    "step", "name", "optimizer", "rule", "latex", "hparams", "predicted", "observed",
    "max_abs_error", "matches", "check", "reason", "rule_class", "param_group", "dtype",
    "grad_norm", "update_norm", "param_norm", "update_ratio",
]  # fmt: skip
# None where a value is missing (pandas would make the None of a text column NaN)
_OBJECT_COLUMNS = ("optimizer", "rule", "latex", "predicted", "observed", "matches", "check", "reason", "rule_class")
_STEP_COLUMNS = ("step", "kind", "name", "call", "part", "module_type", "shape", "numel")
"""What the report reads of every row of the steps asked for: which there are, which are small."""


def report(
    trace: TraceLike,
    *,
    optimizers: Sequence[type] | None = None,
    step: StepFilter = None,
    name: NameFilter = None,
    max_elements: int = 16,
) -> Report:
    """Explain and check every update of a trace.

    The checks read only the grad, param, update and state rows; the forward pass and the
    loss are read only for the steps of a model small enough to be worked by hand.

    Example::

        rep = tracer.report("traces/run1")
        rep.to_frame().query("matches == False")
        Path("report.html").write_text(rep.to_html())

    Args:
        trace: a trace directory, a ``tracer.Run``, a DataFrame from ``tracer.load``, or a
            ``tracer.Trace``.
        optimizers: optimizer classes that are not in ``torch.optim``, for the replay check
            (a report never imports a class named in a trace).
        step: only these steps (an int, a list, or a slice).
        name: only these parameters (names or glob patterns).
        max_elements: tensors with at most this many elements are worked element by element.
    """
    opened = Trace.open(trace)
    checks = check_updates(opened, optimizers=tuple(optimizers or ()), step=step, name=name)
    walk = name is None and may_walk(opened.meta.parameters, max_elements)
    rows = opened.stats if step is None else opened.rows(step=step, columns=_STEP_COLUMNS)
    walks = walkthroughs(opened, rows, max_elements) if walk else {}
    steps = sorted({int(s) for s in rows["step"]})
    return Report(checks, walks, steps, source=opened.source, max_elements=max_elements,
                  skipped=_skipped(opened, step, name), trace=opened)  # fmt: skip


def _skipped(trace: Trace, step: StepFilter, name: NameFilter) -> dict[int, str]:
    """``{step: optimizer}`` of the steps a GradScaler skipped: from the rows the checks read."""
    if step is None and name is None:
        rows = filter_frame(trace.updates(), kind="skipped")
    else:
        rows = trace.rows(kind="skipped", step=step, columns=("step", "kind", "name"))
    return {int(s): str(n) for s, n in zip(rows["step"], rows["name"])}


class Report:
    """The explained, checked updates of a trace. Render with ``str()``, ``to_markdown()``,
    ``to_html()`` or ``to_latex()``; get the numbers with ``to_frame()``."""

    def __init__(
        self,
        checks: list[UpdateCheck],
        walkthroughs: dict[int, list[str]],
        steps: list[int],
        *,
        source: str,
        max_elements: int,
        skipped: dict[int, str] | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.checks = checks
        self.walkthroughs = walkthroughs
        self.steps = steps
        self.source = source
        self.max_elements = max_elements
        self.skipped = skipped or {}  # step -> optimizer whose step a GradScaler skipped
        self.trace = trace  # for the findings and plots of the HTML page

    # -- numbers ---------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per (step, parameter) update; see ``FRAME_COLUMNS``."""
        records = []
        for c in self.checks:
            # fmt: off
            records.append({
                "step": c.step, "name": c.name, "optimizer": c.optimizer, "rule": c.rule,
                "latex": c.latex, "hparams": c.hparams, "predicted": _tolist(c.predicted),
                "observed": _tolist(c.observed), "max_abs_error": c.max_abs_error, "matches": c.matches,
                "check": c.check, "reason": c.reason, "rule_class": c.rule_class,
                "param_group": c.param_group, "dtype": c.dtype,
                "grad_norm": c.norms.get("grad"), "update_norm": c.norms.get("update"),
                "param_norm": c.norms.get("param"), "update_ratio": c.update_ratio,
            })
            # fmt: on
        frame = pd.DataFrame.from_records(records, columns=FRAME_COLUMNS)
        for column in _OBJECT_COLUMNS:
            frame[column] = pd.Series([r[column] for r in records], index=frame.index, dtype=object)
        return frame

    @property
    def counts(self) -> dict[str, int]:
        """How many updates matched, differed, and could not be checked."""
        return {
            "matched": sum(c.matches is True for c in self.checks),
            "differ": sum(c.matches is False for c in self.checks),
            "unchecked": sum(c.matches is None for c in self.checks),
        }

    # -- renderings -------------------------------------------------------------
    COMPACT_AFTER = 400
    """Above this many updates, each rule is written once and steps become tables."""

    def blocks(self, *, extras: bool = False) -> list[Block]:
        """The report as renderer-neutral blocks; ``extras`` adds findings and plots (HTML)."""
        n = self.counts
        out: list[Block] = [Heading(1, f"tracer report: {self.source}")]
        optimizers = sorted({c.optimizer for c in self.checks if c.optimizer is not None})
        out.append(
            Para(
                f"{len(self.steps)} step(s), {len(self.checks)} update(s)"
                + (f" by {', '.join(optimizers)}" if optimizers else "")
                + f": ✓ {n['matched']} match their rule, ✗ {n['differ']} differ, "
                f"– {n['unchecked']} could not be checked."
            )
        )
        if extras:
            out += self._extras()
        compact = len(self.checks) > self.COMPACT_AFTER
        if compact:
            out += self._rules_once()
        by_step: dict[int, list[UpdateCheck]] = {}
        for c in self.checks:
            by_step.setdefault(c.step, []).append(c)
        shown = 0
        for step in self.steps:
            checks = by_step.get(step, [])
            if not checks and step not in self.walkthroughs and step not in self.skipped:
                continue
            body: list[Block] = []
            if step in self.skipped:
                body.append(
                    Para(
                        f"⚠ The GradScaler skipped {self.skipped[step]}.step() at this step: the "
                        "gradients held inf/NaN, so no parameter was updated."
                    )
                )
            walk = self.walkthroughs.get(step)
            if walk:
                body += _walk_blocks(walk)
            if checks and compact:
                body.append(_step_table(checks))
            elif checks:
                body.append(Para("Each parameter's update, by its optimizer's rule:", lead="Updates."))
                for c in checks:
                    body += self._update_blocks(c)
                table = _summary_table(checks, self.max_elements)
                if table is not None:
                    body += [Para("Summary of the step:"), table]
            bad = any(c.matches is False for c in checks)
            out.append(Section(f"Step {step}{' ✗' if bad else ''}", tuple(body), open=bad or shown < 20))
            shown += 1
        return out

    def _extras(self) -> list[Block]:
        """Findings first, then plots: HTML fragments made from the trace itself."""
        if self.trace is None:
            return []
        from tracer import _plots
        from tracer._diagnose import diagnose, html_section

        return [Raw(html_section(diagnose(self.trace))), Raw(_plots.html_section(self.trace))]

    def _rules_once(self) -> list[Block]:
        out: list[Block] = [Heading(2, "Update rules")]
        seen: set[tuple[str | None, str]] = set()
        for c in self.checks:
            key = (c.optimizer, c.rule or "")
            if key in seen or c.rule is None:
                continue
            seen.add(key)
            out += [Heading(3, f"{c.optimizer}" + (f" (rule of {c.rule_class})" if c.rule_class != c.optimizer else "")),
                    Formula(c.rule, c.latex or "")]  # fmt: skip
        return out

    def _update_blocks(self, c: UpdateCheck) -> list[Block]:
        status = _status(c)
        out: list[Block] = [Heading(3, f"{c.name} ({c.optimizer or 'no optimizer'}{_group(c)}): {status}")]
        rule = c.rule_object
        if c.rule is not None and rule is not None:
            via = f" (the rule of {c.rule_class}, its base class)" if c.rule_class != c.optimizer else ""
            out.append(Formula(c.rule, c.latex or ""))
            shown = [
                _show_hparam(sym, k, c.hparams[k])
                for k, sym in rule.symbols.items()
                if k in c.hparams and any(part.strip() in c.rule for part in sym.split(","))
            ]
            if shown or via:
                out.append(Para("with " + ", ".join(shown) + via if shown else via.strip()))
            if rule.note:
                out.append(Para(rule.note))
        if c.reason and c.matches is None:
            out.append(Para(f"Not checked: {c.reason}."))
        elif c.reason:
            out.append(Para(c.reason))
        numel = int(np.prod(c.shape)) if c.shape else 1
        if c.param is not None and rule is not None and numel <= self.max_elements:
            lines = _element_lines(c, rule)
            if lines:
                out.append(Items(tuple(lines), code=True))
        else:
            ratio = c.update_ratio
            out.append(
                Para(
                    f"‖g‖ = {num(c.norms.get('grad', math.nan))}, ‖Δθ‖ = {num(c.norms.get('update', math.nan))}, "
                    f"‖θ‖ = {num(c.norms.get('param', math.nan))}, ‖Δθ‖/‖θ‖ = {num(ratio)}"
                    + (f", max |predicted − observed| = {num(c.max_abs_error)}" if c.max_abs_error is not None else "")
                )
            )
        return out

    def to_text(self) -> str:
        """Plain text (what ``str(report)`` gives)."""
        return _to_text(self.blocks())

    def to_markdown(self) -> str:
        """Markdown, with each rule also as a ``$$`` LaTeX block."""
        return _to_markdown(self.blocks())

    def to_html(self, *, findings: bool = True) -> str:
        """One self-contained HTML page (no scripts, no network): summary, findings and plots
        (``findings=True``; plots need ``torch-tracer[plots]``), then every step."""
        return _to_html(self.blocks(extras=findings), title=f"tracer report: {self.source}")

    def to_latex(self) -> str:
        """A LaTeX fragment (amsmath)."""
        return _to_latex(self.blocks())

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        n = self.counts
        return f"<tracer.Report {self.source!r}: {len(self.checks)} updates, {n}>"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        from tracer._render import to_html_body

        return to_html_body(self.blocks())


def _tolist(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else values.tolist()


def _status(c: UpdateCheck) -> str:
    if c.matches is True:
        how = "its rule" if c.check == "rule" else "a replay of the optimizer"
        return f"✓ matches the traced update (checked by {how}, max error {num(c.max_abs_error or 0.0)})"
    if c.matches is False:
        how = "rule" if c.check == "rule" else "replay"
        return f"✗ differs from the traced update (by the {how}: max error {num(c.max_abs_error or math.inf)})"
    return "– not checked"


def _show_hparam(symbol: str, key: str, value: Any) -> str:
    """``γ = 0.01 (lr)``; a pair such as betas: ``β₁ = 0.9, β₂ = 0.999 (betas)``."""
    symbols = [part.strip() for part in symbol.split(",")]
    if isinstance(value, (list, tuple)) and len(value) == len(symbols) > 1:
        return ", ".join(f"{s} = {_hparam(v)}" for s, v in zip(symbols, value)) + f" ({key})"
    return f"{symbol} = {_hparam(value)} ({key})"


def _hparam(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return num(value)


def _group(c: UpdateCheck) -> str:
    return f", param group {c.param_group}" if c.param_group else ""


def _label(name: str, shape: tuple[int, ...], flat: int) -> str:
    if not shape:
        return name
    return f"{name}[{','.join(str(i) for i in np.unravel_index(flat, shape))}]"


def _element_lines(c: UpdateCheck, rule: Any) -> list[str]:
    if c.param is None:
        return []
    param = c.param.reshape(-1)
    grad = None if c.grad is None else c.grad.reshape(-1)
    lines = []
    for i in range(param.size):
        state = {}
        for key, value in c.state.items():
            flat = value.reshape(-1)
            if flat.size == param.size:
                state[key] = float(flat[i])
            elif flat.size == 1:
                state[key] = float(flat[0])
        try:
            lines += rule.explain(
                _label(c.name, c.shape, i),
                float(param[i]),
                None if grad is None else float(grad[i]),
                state,
                c.rule_hparams,
            )
        except Exception:
            return []
    return lines


def _summary_table(checks: list[UpdateCheck], max_elements: int) -> Table | None:
    rows = []
    for c in checks:
        if c.param is None or c.param.size > max_elements:
            continue
        param = c.param.reshape(-1)
        grad = c.grad.reshape(-1) if c.grad is not None else None
        new = np.asarray(c.observed)
        for i in range(param.size):
            rows.append((_label(c.name, c.shape, i), num(param[i]), "–" if grad is None else num(grad[i]), num(new[i])))
    if not rows:
        return None
    return Table(("parameter", "old value", "gradient", "new value"), tuple(rows))


def _step_table(checks: list[UpdateCheck]) -> Table:
    rows = []
    for c in checks:
        mark = {True: "✓", False: "✗", None: "–"}[c.matches]
        ratio = c.update_ratio
        rows.append(
            (c.name, f"{mark} {c.check or c.reason or ''}"[:80], num(c.max_abs_error) if c.max_abs_error is not None else "–",
             num(c.norms.get("grad", math.nan)), num(c.norms.get("update", math.nan)), num(ratio))
        )  # fmt: skip
    return Table(("parameter", "check", "max error", "‖g‖", "‖Δθ‖", "‖Δθ‖/‖θ‖"), tuple(rows))


def _walk_blocks(lines: list[str]) -> list[Block]:
    """The walkthrough's lines (``- `` items, ``**Lead.**`` paragraphs) as blocks."""
    out: list[Block] = []
    items: list[str] = []
    for line in lines:
        if line.startswith("- "):
            items.append(line[2:])
            continue
        if items:
            out.append(Items(tuple(items), code=True))
            items = []
        out.append(_para(line))
    if items:
        out.append(Items(tuple(items), code=True))
    return out


_LEAD = re.compile(r"\*\*(.+?)\*\* ?")


def _para(line: str) -> Para:
    """A walkthrough line as a paragraph, its ``**Lead.**`` (if any) as the bold lead-in."""
    lead = _LEAD.match(line)
    return Para(line[lead.end() :], lead=lead.group(1)) if lead else Para(line)
