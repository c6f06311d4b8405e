"""``tracer.report``: every traced update explained by its optimizer's rule, and checked.

>>> rep = tracer.report("traces/walkthrough")          # doctest: +SKIP
>>> print(rep)                                          # doctest: +SKIP
...  w₂ (weight[0,1]): 1 − 0.01 · (−20) = 1.2
>>> rep.to_frame()[["step", "name", "matches"]]         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from tracer._checks import UpdateCheck, check_updates, no_gc
from tracer._explain import Walk, may_walk, too_large, walkthroughs
from tracer._render import Block, Formula, Heading, Para, Raw, Section
from tracer._render import to_html as _to_html
from tracer._render import to_latex as _to_latex
from tracer._render import to_markdown as _to_markdown
from tracer._report_update import step_tables, summary_table, update_blocks, update_stage
from tracer._trace import NameFilter, StepFilter, Trace, TraceLike, filter_frame

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
        print(rep)                                   # compact text: rules once, one line per update
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
    with no_gc():
        return _report(Trace.open(trace), tuple(optimizers or ()), step, name, max_elements)


def _report(
    opened: Trace, optimizers: tuple[type, ...], step: StepFilter, name: NameFilter, max_elements: int
) -> Report:
    checks = check_updates(opened, optimizers=optimizers, step=step, name=name)
    if name is not None:
        no_walk: str | None = "a name filter selects only some parameters, and a walkthrough works the whole model"
    elif not may_walk(opened.meta.parameters, max_elements):
        no_walk = too_large(max_elements)
    else:
        no_walk = None
    if no_walk is not None and step is None:  # no walkthrough: which steps there are is all it needs
        walks, steps = {}, opened.steps
    else:
        rows = opened.stats if step is None else opened.rows(step=step, columns=_STEP_COLUMNS)
        walks = walkthroughs(opened, rows, max_elements) if no_walk is None else {}
        steps = np.unique(np.asarray(rows["step"], dtype=np.int64)).tolist()
    return Report(checks, walks, steps, source=opened.source, max_elements=max_elements,
                  skipped=_skipped(opened, step, name), trace=opened, no_walk=no_walk)  # fmt: skip


def _skipped(trace: Trace, step: StepFilter, name: NameFilter) -> dict[int, str]:
    """``{step: optimizer}`` of the steps a GradScaler skipped: from the rows the checks read."""
    if step is None and name is None:
        rows = filter_frame(trace.updates(), kind="skipped")
    else:
        rows = trace.rows(kind="skipped", step=step, columns=("step", "kind", "name"))
    return {int(s): str(n) for s, n in zip(rows["step"], rows["name"])}


class Report:
    """The explained, checked updates of a trace. Render with ``str()`` / ``to_text()`` (compact
    plain text), ``to_markdown()``, ``to_html()`` or ``to_latex()``; get the numbers with
    ``to_frame()``."""

    def __init__(
        self,
        checks: list[UpdateCheck],
        walkthroughs: dict[int, Walk | str],
        steps: list[int],
        *,
        source: str,
        max_elements: int,
        skipped: dict[int, str] | None = None,
        trace: Trace | None = None,
        no_walk: str | None = None,
    ) -> None:
        self.checks = checks
        self.walkthroughs = walkthroughs  # step -> Walk, or the one-sentence reason there is none
        self.steps = steps
        self.source = source
        self.max_elements = max_elements
        self.skipped = skipped or {}  # step -> optimizer whose step a GradScaler skipped
        self.trace = trace  # for the findings and plots of the HTML page
        self.no_walk = no_walk  # why no step is worked by hand (None: see walkthroughs)

    # -- numbers ---------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per (step, parameter) update; see ``FRAME_COLUMNS``. A missing text
        (``check``, ``reason``, …) is None, never NaN."""
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

    def summary(self) -> str:
        """The report's first sentence: steps, updates, optimizers and verdicts."""
        n = self.counts
        optimizers = sorted({c.optimizer for c in self.checks if c.optimizer is not None})
        return (
            f"{len(self.steps)} step(s), {len(self.checks)} update(s)"
            + (f" by {', '.join(optimizers)}" if optimizers else "")
            + f": ✓ {n['matched']} match their rule, ✗ {n['differ']} differ, "
            f"– {n['unchecked']} could not be checked."
        )

    def _by_step(self) -> dict[int, list[UpdateCheck]]:
        out: dict[int, list[UpdateCheck]] = {}
        for c in self.checks:
            out.setdefault(c.step, []).append(c)
        return out

    def _walked(self) -> list[int]:
        """The steps worked by hand, ascending."""
        return sorted(s for s, w in self.walkthroughs.items() if isinstance(w, Walk))

    def _why_not_walked(self) -> list[str]:
        """One sentence per reason a step is not worked by hand (with the steps it covers)."""
        if self.no_walk is not None:
            return [f"No walkthrough: {self.no_walk}."] if self.steps else []
        reasons: dict[str, list[int]] = {}
        for step, walk in self.walkthroughs.items():
            if isinstance(walk, str):
                reasons.setdefault(walk, []).append(step)
        return [f"No walkthrough of {spans(steps)}: {reason}." for reason, steps in reasons.items()]

    def _walk_blocks(self, step: int, checks: list[UpdateCheck]) -> list[Block]:
        """The four stages of a step worked by hand (empty when it is not)."""
        walk = self.walkthroughs.get(step)
        if not isinstance(walk, Walk):
            return []
        return [*walk.blocks, *update_stage(checks, self.max_elements, walk.aliases)]

    # -- renderings -------------------------------------------------------------
    COMPACT_AFTER = 400
    """Above this many updates, each rule is written once and steps become tables."""

    def blocks(self, *, extras: bool = False) -> list[Block]:
        """The report as renderer-neutral blocks; ``extras`` adds findings and plots (HTML)."""
        out: list[Block] = [Heading(1, f"tracer report: {self.source}"), Para(self.summary())]
        if extras:
            out += self._extras()
        out += [Para(text, tone="muted") for text in self._why_not_walked()]
        compact = len(self.checks) > self.COMPACT_AFTER
        if compact:
            out += self._rules_once()
        by_step = self._by_step()
        tables = step_tables(by_step) if compact else {}
        shown = 0
        for step in self.steps:
            checks = by_step.get(step, [])
            walk = self._walk_blocks(step, checks)
            if not checks and not walk and step not in self.skipped:
                continue
            body: list[Block] = []
            if step in self.skipped:
                body.append(Para(skipped_text(self.skipped[step]), tone="warn"))
            if walk:
                body += walk
            elif checks and compact:
                body.append(tables[step])
            elif checks:
                body.append(Para("Each parameter's update, by its optimizer's rule:", lead="Updates."))
                for c in checks:
                    body += update_blocks(c, self.max_elements)
                table = summary_table(checks, self.max_elements)
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

    def to_text(self) -> str:
        """Compact plain text for a terminal (what ``str(report)`` gives): the step worked
        by hand where the model is small, each rule once per optimizer and param group,
        then one line per update with ✓/✗, the error and the norms."""
        from tracer._report_text import to_text

        with no_gc():
            return to_text(self)

    def to_markdown(self) -> str:
        """Markdown, every step in full, with each rule also as a ``$$`` LaTeX block."""
        with no_gc():
            return _to_markdown(self.blocks())

    def to_html(self, *, findings: bool = True) -> str:
        """One self-contained HTML page (no scripts, no network): summary, findings and plots
        (``findings=True``; plots need ``torch-tracer[plots]``), then every step."""
        with no_gc():
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


def skipped_text(optimizer: str) -> str:
    return (f"⚠ The GradScaler skipped {optimizer}.step() at this step: the gradients held inf/NaN, so no "
            "parameter was updated.")  # fmt: skip


def spans(steps: Iterable[int]) -> str:
    """``"step 3"``, ``"steps 0–4, 7"``: steps as ranges."""
    ordered = sorted(set(steps))
    parts, start = [], None
    for i, s in enumerate(ordered):
        start = s if start is None else start
        if i + 1 == len(ordered) or ordered[i + 1] != s + 1:
            parts.append(str(s) if s == start else f"{start}–{s}")
            start = None
    return ("step " if len(ordered) == 1 else "steps ") + ", ".join(parts)


def _tolist(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else values.tolist()
