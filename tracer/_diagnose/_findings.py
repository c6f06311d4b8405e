"""What :func:`tracer.diagnose` returns: :class:`Finding`, :class:`Findings`, and their text.

Findings are rendered as the report's document blocks (:func:`findings_blocks`), so the
report, a notebook and ``str(findings)`` show the same table, escaped by one writer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tracer._render import (
    Block,
    Cell,
    Para,
    Section,
    Table,
    escape_text,
    to_html_body,
    to_html_fragment,
)

SEVERITIES = ("error", "warning", "info")
"""Severities, most severe first. ``tracer diagnose`` exits 1 when an ``"error"`` is found."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing :func:`diagnose` found.

    Attributes:
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        code: a short id, one of :data:`CODES`.
        step: the step where it shows first (None: not tied to a step).
        steps: every traced step involved.
        kind: the kind of row it is about (``"activation"``, ``"grad"``, ``"loss"``, ...).
        name: the module path, parameter name or ``"loss"`` it is about.
        message: one sentence that says what happened and what it suggests.
        evidence: the numbers behind it.
    """

    severity: str
    code: str
    step: int | None
    steps: tuple[int, ...]
    kind: str | None
    name: str | None
    message: str
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __hash__(self) -> int:  # the evidence dict is left out: dicts do not hash
        return hash((self.severity, self.code, self.step, self.steps, self.kind, self.name, self.message))


class Findings(list[Finding]):
    """The findings of :func:`diagnose`, most severe first; a list of :class:`Finding`."""

    @property
    def has_errors(self) -> bool:
        """True when a finding has severity ``"error"``."""
        return any(f.severity == "error" for f in self)

    def counts(self) -> dict[str, int]:
        """How many findings of each severity."""
        return {s: sum(f.severity == s for f in self) for s in SEVERITIES}

    def to_frame(self) -> pd.DataFrame:
        """One row per finding: severity, code, step, steps, kind, name, message, evidence."""
        columns = [f.name for f in dataclasses.fields(Finding)]
        return pd.DataFrame([[getattr(f, c) for c in columns] for f in self], columns=columns)

    def to_json(self) -> str:
        """The findings as JSON: a list of objects with the fields of :class:`Finding`."""
        records = [
            {**dataclasses.asdict(f), "steps": list(f.steps), "evidence": {k: _plain(v) for k, v in f.evidence.items()}}
            for f in self
        ]
        return json.dumps(records, indent=2, ensure_ascii=False)

    def summary(self) -> str:
        """``"2 findings: 1 error, 1 warning"``, or ``"no findings: nothing looks wrong"``."""
        if not self:
            return "no findings: nothing looks wrong"
        n = self.counts()
        parts = [f"{n[s]} {s}{'s' if n[s] != 1 else ''}" for s in SEVERITIES if n[s]]
        return f"{len(self)} finding{'s' if len(self) != 1 else ''}: {', '.join(parts)}"

    def blocks(self) -> list[Block]:
        """The findings as the report's document blocks (see :func:`findings_blocks`)."""
        return findings_blocks(self)

    def __str__(self) -> str:
        if not self:
            return self.summary() + "\n"
        rows = [(f.severity.upper(), f.code, steps_text(f), escape_text(where(f))) for f in self]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [self.summary(), ""]
        for f, row in zip(self, rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            lines.append("    " + escape_text(f.message))
            if f.evidence:
                lines.append("    evidence: " + escape_text(evidence_text(f.evidence)))
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<tracer.Findings: {self.summary()}>"

    def _repr_html_(self) -> str:
        return findings_html(self, styled=True)


def _plain(value: Any) -> Any:
    """A JSON-ready evidence value: numpy scalars as Python ones, inf/NaN as text."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    return value


# --------------------------------------------------------------------------- blocks

FINDINGS_CLASS = "tracer-findings"
"""The HTML class of the findings' section (pages and tests look for it)."""


_TONES = {"error": "bad", "warning": "warn", "info": "muted"}


def findings_blocks(findings: Sequence[Finding]) -> list[Block]:
    """The findings as one ``Section`` of document blocks: a summary line and a table.

    Example::

        to_markdown(findings_blocks(tracer.diagnose("traces/run1")))
    """
    body: list[Block] = [Para(Findings(findings).summary())]
    if findings:
        rows = tuple(
            (
                Cell(f.severity, tone=_TONES.get(f.severity, "")),
                Cell(f.code, code=True, note=steps_text(f)),
                where(f),
                Cell(f.message, note=evidence_text(f.evidence)),
            )
            for f in findings
        )
        body.append(Table(("severity", "finding", "where", "what"), rows, align="left"))
    return [Section("Findings", tuple(body), cls=FINDINGS_CLASS)]


def findings_html(findings: Sequence[Finding], *, styled: bool = False) -> str:
    """The findings' blocks as HTML, written by the report's one HTML writer (every text
    escaped, no scripts): elements for a page, or with ``styled`` a fragment that carries
    the stylesheet (what a notebook shows)."""
    blocks = findings_blocks(findings)
    return to_html_fragment(blocks) if styled else to_html_body(blocks)


# --------------------------------------------------------------------------- text


def num(x: Any) -> str:
    """A number as findings print it: 4 significant digits, ``"–"`` for None."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "0" if x == 0 else format(x, ".4g")


def label(name: str | None) -> str:
    """A parameter or module name in a sentence: quoted, or ``the model (root module)``."""
    return "the model (root module)" if name == "" else repr(name)


def module(name: str) -> str:
    """``module 'fc1'``, or ``the model (root module)``."""
    return "the model (root module)" if name == "" else f"module {name!r}"


def layer_text(name: str) -> str:
    """``layer 'fc1'`` for the parameters of a module, or those of the root module."""
    return "the root module's own parameters" if name == "" else f"layer {name!r}"


def steps_text(f: Finding) -> str:
    """``"step 3"``, ``"steps 0–4, 7"``: the steps of a finding, runs collapsed."""
    steps = list(f.steps) or ([f.step] if f.step is not None else [])
    if not steps:
        return "–"
    if len(steps) == 1:
        return f"step {steps[0]}"
    runs, start, prev = [], steps[0], steps[0]
    for s in [*steps[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        runs.append(f"{start}" if start == prev else f"{start}–{prev}")
        if s is not None:
            start = prev = s
    text = ", ".join(runs[:4]) + (f", … ({len(steps)} steps)" if len(runs) > 4 else "")
    return f"steps {text}"


def where(f: Finding) -> str:
    """``"grad 'fc1'"``, ``"loss"``: what a finding is about."""
    if f.name is None:
        return f.kind or ""
    if f.kind == "loss":
        return "loss" if f.name == "loss" else f"loss {f.name!r}"
    return f"{f.kind} {label(f.name)}" if f.kind else label(f.name)


def evidence_text(evidence: Mapping[str, Any]) -> str:
    """``"early_median=7.6, steps=10"``: the evidence on one line (plain text, unescaped)."""
    return ", ".join(f"{k}={v if isinstance(v, str) else num(v)}" for k, v in evidence.items())
