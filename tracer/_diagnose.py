"""``tracer.diagnose``: what went wrong in a traced training run, and where it started.

>>> findings = tracer.diagnose("traces/run1")            # doctest: +SKIP
>>> print(findings)                                        # doctest: +SKIP
>>> findings.to_frame().query("severity == 'error'")       # doctest: +SKIP

Each diagnostic reads the statistics columns of the trace, and values only for the few
rows that need them, so a long trace is diagnosed without loading it whole. The
thresholds are documented on :class:`Thresholds`; every one can be changed.

=====================  ========  ==========================================================
code                   severity  when
=====================  ========  ==========================================================
first-nonfinite        error     the earliest row, by step then training order (input,
                                 activation, loss, activation gradient, gradient, param,
                                 state, update), that holds NaN/Inf; inf/NaN in the backward
                                 pass of a step a gradient scaler skipped is not counted
loss-diverging         error     late-window median loss > ``loss_diverge_factor`` × early
loss-flat              warning   late-window median not ``loss_flat_rel`` below the early one
exploding-grad         warning   a layer's gradient norm > ``exploding_growth`` × its early
                                 median
vanishing-grad         warning   a layer's per-element gradient < ``vanishing_ratio`` × the
                                 largest layer's, at most steps before convergence
update-ratio           warning   a weight's median ‖update‖/‖param‖ above
                                 ``update_ratio_high`` or below ``update_ratio_low``
dead-relu              warning   ≥ ``dead_fraction`` of a ReLU's units zero for the whole
                       (error)   batch in each of the last ``dead_steps`` steps (all: error)
amp-skipped            info      steps a gradient scaler skipped (``skipped`` rows; or, for
                       (warning) a fused optimizer, non-finite gradients and a zero update);
                                 a warning above ``amp_skip_fraction`` or at the last step
never-changes          warning   a parameter whose update is exactly zero at every traced
                                 step; or a Linear/Conv/Embedding/RNN module that runs but
                                 none of whose parameters has a row (frozen, or not in the
                                 optimizer: the trace has no rows for such parameters)
changes-without-grad   warning   a parameter that moves while its gradient is exactly zero
                       (info)    (weight decay, momentum); info when only at some steps
rule-mismatch          error     an update that does not follow its optimizer's rule (the
                                 check of ``tracer.report``, on ``rule_check_steps`` steps)
=====================  ========  ==========================================================
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEVERITIES = ("error", "warning", "info")
"""Severities, most severe first. ``tracer diagnose`` exits 1 when an ``"error"`` is found."""

CODES = (
    "first-nonfinite",
    "loss-diverging",
    "loss-flat",
    "exploding-grad",
    "vanishing-grad",
    "update-ratio",
    "dead-relu",
    "amp-skipped",
    "never-changes",
    "changes-without-grad",
    "rule-mismatch",
)
"""Every finding code :func:`diagnose` can return."""


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The thresholds of :func:`diagnose`: all relative, all overridable.

    Example::

        tracer.diagnose(path, thresholds=tracer.Thresholds(update_ratio_high=0.3))

    Attributes:
        min_steps: diagnostics about a trend over steps (loss, gradient growth, update
            ratio) need at least this many traced steps; a single step shows no trend,
            so the one-step reference example raises nothing.
        window: the early and late windows compared by the trend diagnostics, as a
            fraction of the traced steps (at least 2 steps each); medians over a window
            keep a noisy mini-batch loss from raising alarms.
        loss_diverge_factor: ``loss-diverging`` (error) when the median loss of the late
            window exceeds the early window's by this factor. Neither loss diagnostic runs on
            a trace with gradient-scaler (AMP) skips: the traced loss is then the scaled
            loss, whose scale changes during training.
        loss_flat_rel: ``loss-flat`` (warning) when the late window's median loss is not
            at least this fraction below the early window's.
        loss_flat_atol: a loss whose early median is at most this is already converged
            and never "flat".
        exploding_growth: ``exploding-grad`` when a layer's gradient norm at some step
            exceeds this multiple of its median over the first ``window`` of steps.
        vanishing_ratio: ``vanishing-grad`` when a layer's gradient (root mean square per
            element) is below this fraction of the largest layer's at most of the traced
            steps before convergence (see ``converged_ratio``).
        update_ratio_high: ``update-ratio`` when a weight's median ‖update‖/‖param‖ over
            steps is above this (the usual value is about 1e-3: a step this large rewrites
            the weights every few steps). Only parameters of 2 or more dimensions (weight
            matrices, kernels) are judged: a bias or norm gain starts at 0 or 1, where the
            ratio says little.
        update_ratio_low: ``update-ratio`` when that median is below this (the parameter
            barely learns: a learning rate too small, or updates lost to rounding).
        converged_ratio: a step whose total gradient norm (all parameters) is below this
            fraction of its median over the early window counts as converged:
            ``update-ratio`` and ``vanishing-grad`` leave such steps out, since a model
            with nothing left to learn has tiny updates and gradients whose ratios are
            rounding noise.
        dead_fraction: ``dead-relu`` when at least this fraction of a ReLU-family layer's
            units output zero for the whole batch in each of the last ``dead_steps``
            traced steps (an error when every unit is dead).
        dead_steps: how many consecutive traced steps, up to the last, a unit must be
            dead for.
        relu_types: module classes whose zero outputs mean dead units.
        amp_skip_fraction: ``amp-skipped`` is a warning (not info) when more than this
            fraction of the traced steps were skipped, or the last traced step was.
        never_changes_steps: ``never-changes`` when a parameter's update is exactly zero
            in at least this many traced steps and never non-zero.
        rule_check_steps: the rule check (``rule-mismatch``) replays the optimizer on at
            most this many traced steps, evenly spread, first and last included (a rule
            that is wrong is wrong at every step); None checks every step.
    """

    @classmethod
    def parse(cls, items: Iterable[str]) -> Thresholds:
        """Thresholds from ``"name=value"`` strings (the command line's ``--threshold``).

        Example::

            Thresholds.parse(["update_ratio_high=0.3", "relu_types=ReLU,GELU"])

        Raises:
            ValueError: an unknown name, or a value of the wrong type.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for item in items:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in fields:
                raise ValueError(f"threshold must be NAME=VALUE with NAME one of {sorted(fields)} (got {item!r})")
            default = getattr(cls(), name)
            try:
                if name == "relu_types":
                    value: Any = tuple(t.strip() for t in text.split(",") if t.strip())
                elif text.strip().lower() == "none" and name == "rule_check_steps":
                    value = None
                elif isinstance(default, int):
                    value = int(text)
                else:
                    value = float(text)
            except ValueError:
                raise ValueError(f"threshold {name} must be a number (got {text!r})") from None
            changes[name] = value
        return cls(**changes)

    min_steps: int = 5
    window: float = 0.2
    loss_diverge_factor: float = 2.0
    loss_flat_rel: float = 0.01
    loss_flat_atol: float = 1e-8
    exploding_growth: float = 100.0
    vanishing_ratio: float = 1e-3
    update_ratio_high: float = 0.1
    update_ratio_low: float = 1e-6
    converged_ratio: float = 1e-3
    dead_fraction: float = 0.5
    dead_steps: int = 5
    relu_types: tuple[str, ...] = ("ReLU", "ReLU6")
    amp_skip_fraction: float = 0.1
    never_changes_steps: int = 2
    rule_check_steps: int | None = 10


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


class Findings(list):
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

        def plain(value: Any) -> Any:
            if isinstance(value, (np.integer, np.floating, np.bool_)):
                return value.item()
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)  # JSON has no inf/nan
            return value

        records = [
            {**dataclasses.asdict(f), "steps": list(f.steps), "evidence": {k: plain(v) for k, v in f.evidence.items()}}
            for f in self
        ]
        return json.dumps(records, indent=2, ensure_ascii=False)

    def summary(self) -> str:
        """``"2 findings: 1 error, 1 warning"``, or ``"no findings"``."""
        if not self:
            return "no findings: nothing looks wrong"
        n = self.counts()
        parts = [f"{n[s]} {s}{'s' if n[s] != 1 else ''}" for s in SEVERITIES if n[s]]
        return f"{len(self)} finding{'s' if len(self) != 1 else ''}: {', '.join(parts)}"

    def __str__(self) -> str:
        if not self:
            return self.summary() + "\n"
        from tracer._render import escape_text

        rows = [(f.severity.upper(), f.code, _steps_text(f), escape_text(_where(f))) for f in self]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [self.summary(), ""]
        for f, row in zip(self, rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            lines.append("    " + escape_text(f.message))
            if f.evidence:
                lines.append("    evidence: " + _evidence_text(f.evidence))
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<tracer.Findings: {self.summary()}>"

    def _repr_html_(self) -> str:
        return html_section(self)


def diagnose(
    trace: Any,
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
        trace: a trace directory, a ``tracer.Run``, or a DataFrame from ``tracer.load``.
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
    t = _thresholds(thresholds)
    data = _Data(trace)
    stats = data.stats
    found: list[Finding] = []
    if len(stats):
        skipped = _skipped_steps(stats)
        found += _first_nonfinite(data, skipped)
        found += _amp_skipped(stats, skipped, t)
        lead = stats[stats["rank"] == stats["rank"].min()]
        found += _loss_trend(lead, skipped, t)
        found += _gradients(lead, t)
        found += _update_ratio(lead, t)
        found += _changes(lead, t)
        found += _frozen_modules(lead, data.meta)
        found += _dead_units(data, lead, t)
        found += _rule_mismatch(data, lead, t, tuple(optimizers), skipped)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    seen = {n: i for i, n in enumerate(dict.fromkeys(stats["name"]))} if len(stats) else {}
    found.sort(
        key=lambda f: (
            order[f.severity],
            CODES.index(f.code),
            math.inf if f.step is None else f.step,
            seen.get(f.name, math.inf),
        )
    )
    return Findings(found)


# --------------------------------------------------------------------------- reading

_STAT_COLUMNS = [
    "step", "seq", "rank", "kind", "name", "call", "part", "module_type", "shape", "dtype",
    "numel", "mean", "std", "min", "max", "norm", "nonfinite", "optimizer", "hparams",
]  # fmt: skip


def _read(
    trace: Any, kinds: Iterable[str] | None = None, columns: Sequence[str] | None = None, **filters: Any
) -> pd.DataFrame:
    """Rows of ``trace`` (path, Run or DataFrame) of these kinds, with these columns only.

    A path is read with the filters pushed into the Parquet reader; a DataFrame is
    filtered in memory (columns it lacks are left out).
    """
    kinds = None if kinds is None else list(kinds)
    if isinstance(trace, pd.DataFrame):
        df = trace
        if kinds is not None:
            df = df[df["kind"].isin(kinds)]
        if "name" in filters and filters["name"] is not None:
            names = filters["name"]
            df = df[df["name"].isin([names] if isinstance(names, str) else list(names))]
        if "step" in filters and filters["step"] is not None:
            steps = filters["step"]
            df = df[df["step"].isin([steps] if isinstance(steps, int) else list(steps))]
        if columns is not None:
            df = df[[c for c in columns if c in df.columns]]
        return df.reset_index(drop=True)
    from tracer._load import load

    return load(trace, kind=kinds, columns=columns, **filters)


class _Data:
    """The trace once, as statistics; values are read only for the rows that need them."""

    def __init__(self, trace: Any) -> None:
        if isinstance(trace, pd.DataFrame):
            self.source: Any = trace
            self.meta: dict[str, Any] = {}
            missing = [c for c in ("step", "kind", "name", "numel", "norm", "nonfinite") if c not in trace.columns]
            if missing:
                raise ValueError(
                    f"the DataFrame lacks the trace columns {missing}; pass tracer.load(path) "
                    "with all columns, or the trace's path"
                )
            stats = _read(trace, columns=_STAT_COLUMNS)
            for column in _STAT_COLUMNS:
                if column not in stats.columns:
                    stats[column] = 0 if column in ("seq", "rank", "call") else None
        else:
            from tracer._load import trace_path
            from tracer._reader import read_meta

            path = trace_path(trace)
            self.source = path
            stats = _read(path, columns=_STAT_COLUMNS)
            self.meta = read_meta(Path(path))
        stats = stats.sort_values(["step", "rank", "seq"], kind="stable").reset_index(drop=True)
        for column in ("mean", "std", "min", "max", "norm"):
            stats[column] = pd.to_numeric(stats[column], errors="coerce").astype("float64")
        stats["nonfinite"] = pd.to_numeric(stats["nonfinite"], errors="coerce").fillna(0).astype("int64")
        self.stats = stats

    def rows(self, kinds: Iterable[str], columns: Sequence[str], **filters: Any) -> pd.DataFrame:
        return _read(self.source, kinds, columns, **filters)


def _thresholds(value: Thresholds | Mapping[str, Any] | None) -> Thresholds:
    if value is None:
        return Thresholds()
    if isinstance(value, Thresholds):
        return value
    if isinstance(value, Mapping):
        valid = [f.name for f in dataclasses.fields(Thresholds)]
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; valid thresholds are {valid}")
        return Thresholds(**value)
    raise TypeError(f"thresholds must be a tracer.Thresholds, a dict or None (got {type(value).__name__})")


# --------------------------------------------------------------------------- helpers


def _windows(n: int, t: Thresholds) -> int:
    """Steps in each of the early and late windows of an ``n``-step trend."""
    return max(2, math.ceil(t.window * n))


def _num(x: Any) -> str:
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
    if x == 0:
        return "0"
    return format(x, ".4g")


def _label(name: str | None) -> str:
    return "the model (root module)" if name == "" else repr(name)


def _module(name: str) -> str:
    """``module 'fc1'``, or ``the model (root module)``."""
    return "the model (root module)" if name == "" else f"module {name!r}"


def _layer_text(name: str) -> str:
    """``layer 'fc1'`` for the parameters of a module, or those of the root module."""
    return "the root module's own parameters" if name == "" else f"layer {name!r}"


def _steps_text(f: Finding) -> str:
    steps = list(f.steps) or ([f.step] if f.step is not None else [])
    if not steps:
        return "–"
    if len(steps) == 1:
        return f"step {steps[0]}"
    runs, start, prev = [], steps[0], steps[0]
    for s in steps[1:] + [None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        runs.append(f"{start}" if start == prev else f"{start}–{prev}")
        if s is not None:
            start = prev = s
    text = ", ".join(runs[:4]) + (f", … ({len(steps)} steps)" if len(runs) > 4 else "")
    return f"steps {text}"


def _where(f: Finding) -> str:
    if f.name is None:
        return f.kind or ""
    if f.kind == "loss":
        return "loss"
    return f"{f.kind} {_label(f.name)}" if f.kind else _label(f.name)


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    from tracer._render import escape_text

    return ", ".join(f"{k}={_num(v) if not isinstance(v, str) else escape_text(v)}" for k, v in evidence.items())


def _layer(param: str) -> str:
    """The module path of a parameter name (``"0.weight"`` -> ``"0"``, ``"weight"`` -> ``""``)."""
    return param.rpartition(".")[0]


# --------------------------------------------------------------------------- AMP


def _skipped_steps(stats: pd.DataFrame) -> dict[int, str]:
    """Steps whose optimizer step was skipped (GradScaler), and how that is known.

    The trace marks them with ``skipped`` rows. Without those marks a skip is inferred:
    a step with non-finite ``grad`` rows whose update is missing or exactly zero (a fused
    optimizer stepped with a found-inf flag leaves the parameters as they were).
    """
    out: dict[int, str] = {}
    for step in stats.loc[stats["kind"] == "skipped", "step"].unique():
        out[int(step)] = "marked"
    grads = stats[stats["kind"] == "grad"]
    updates = stats[stats["kind"] == "update"]
    if len(updates):
        bad = grads.loc[grads["nonfinite"] > 0, "step"].unique()
        for step in bad:
            at = updates[updates["step"] == step]
            if int(step) not in out and (at.empty or bool((at["norm"] == 0).all())):
                out[int(step)] = "inferred"
    return out


def _amp_skipped(stats: pd.DataFrame, skipped: dict[int, str], t: Thresholds) -> list[Finding]:
    if not skipped:
        return []
    steps = sorted(skipped)
    traced = sorted({int(s) for s in stats["step"]})
    fraction = len(steps) / max(1, len(traced))
    last = traced[-1] in skipped
    severity = "warning" if fraction > t.amp_skip_fraction or last else "info"
    how = (
        "marked in the trace"
        if all(v == "marked" for v in skipped.values())
        else ("inferred: non-finite gradients and a zero or missing update")
    )
    tail = (
        "; the last traced step was skipped too, so training is not recovering"
        if last
        else "; the scale was lowered and training went on"
    )
    message = (
        f"The AMP gradient scaler skipped the optimizer step at {len(steps)} of {len(traced)} "
        f"traced step(s) because the gradients held inf/NaN{tail}."
    )
    if severity == "info":
        message = message[:-1] + " (a few skips while the scale is calibrated are normal)."
    evidence = {"skipped_steps": len(steps), "traced_steps": len(traced), "fraction": fraction, "detected": how}
    return [Finding(severity, "amp-skipped", steps[0], tuple(steps), "skipped", None, message, evidence)]


# --------------------------------------------------------------------------- non-finite

_EXCUSED_IN_SKIPPED = ("loss", "activation_grad", "grad", "skipped")

_PLACE = {
    "input": "an input of {module}",
    "activation": "the output of {module}",
    "activation_grad": "the gradient flowing back into the output of {module}",
    "loss": "the loss",
    "grad": "the gradient of parameter {name}",
    "param": "parameter {name}",
    "update": "the update of parameter {name}",
    "state": "the optimizer state {part!r} of parameter {name}",
}


def _first_nonfinite(data: _Data, skipped: dict[int, str]) -> list[Finding]:
    stats = data.stats
    bad = stats[stats["nonfinite"] > 0]
    if len(bad) and skipped:
        # With a gradient scaler (AMP), inf/NaN in the backward pass of a step it skipped is
        # the scaler doing its job; so is an inf scaled loss (the traced loss is the scaled
        # one) in a step whose gradients, unscaled, were finite.
        grads = stats[stats["kind"] == "grad"]
        clean = set(grads["step"]) - set(grads.loc[grads["nonfinite"] > 0, "step"])
        backward = bad["kind"].isin(_EXCUSED_IN_SKIPPED)
        excused = backward & (
            bad["step"].isin(list(skipped)) | (bad["kind"].isin(["loss", "activation_grad"]) & bad["step"].isin(clean))
        )
        bad = bad[~excused]
    if bad.empty:
        return []
    row = bad.iloc[0]
    step, kind, name, call = int(row["step"]), str(row["kind"]), str(row["name"]), int(row["call"])
    evidence: dict[str, Any] = {
        "nonfinite": int(row["nonfinite"]),
        "numel": int(row["numel"]),
        "call": call,
    }
    if row["part"]:
        evidence["part"] = str(row["part"])
    if int(row["rank"]):
        evidence["rank"] = int(row["rank"])
    located = _first_bad_element(data, row)
    if located is not None:
        evidence["index"], evidence["value"] = located
    same_step = stats[(stats["step"] == step) & (stats["rank"] == row["rank"])]
    cause = _cause(row, same_step, stats, evidence)
    place = _PLACE.get(kind, kind + " {name}").format(name=_label(name), module=_module(name), part=row["part"])
    message = (
        f"The first non-finite value (NaN/Inf) appeared at step {step} in {place}"
        f" ({int(row['nonfinite'])} of {int(row['numel'])} elements){cause}."
    )
    later = stats[(stats["nonfinite"] > 0)]
    steps = tuple(sorted({int(s) for s in later["step"]}))
    return [Finding("error", "first-nonfinite", step, steps, kind, name, message, evidence)]


def _first_bad_element(data: _Data, row: pd.Series) -> tuple[str, float | str] | None:
    """Index and value of the row's first NaN/Inf element (a complex value as text), if stored."""
    try:
        rows = data.rows([row["kind"]], ["seq", "rank", "name", "shape", "values"], step=int(row["step"]))
    except Exception:  # noqa: BLE001 - the location is a nicety; the finding stands without it
        return None
    if "seq" in rows.columns:
        rows = rows[(rows["seq"] == row["seq"]) & (rows["rank"] == row["rank"])]
    else:
        rows = rows[rows["name"] == row["name"]]
    if rows.empty or "values" not in rows.columns or rows["values"].iloc[0] is None:
        return None
    values = np.asarray(rows["values"].iloc[0])  # float64, or complex128 for complex rows
    hits = np.flatnonzero(~np.isfinite(values))
    if not hits.size:
        return None
    shape = tuple(int(s) for s in rows["shape"].iloc[0])
    index = tuple(int(i) for i in np.unravel_index(int(hits[0]), shape)) if shape else ()
    value = values[hits[0]]
    return str(list(index)), str(complex(value)) if np.iscomplexobj(value) else float(value)


def _cause(row: pd.Series, same_step: pd.DataFrame, stats: pd.DataFrame, evidence: dict[str, Any]) -> str:
    """The clause that says where the value came from, from the rows just before it."""
    kind, name, call, step = row["kind"], row["name"], row["call"], int(row["step"])
    before = same_step[same_step["seq"] < row["seq"]]
    if step > 0:
        prev = stats[(stats["kind"] == "loss") & (stats["step"] < step)]
        if len(prev):
            evidence["previous_loss"] = float(prev["mean"].iloc[-1])
    if kind == "input" and name == "":
        return ": the batch fed to the model already held it, so look at the data"
    if kind == "input":
        return ": no traced module produced it, so it came from code between modules"
    if kind == "activation":
        inputs = before[(before["kind"] == "input") & (before["name"] == name) & (before["call"] == call)]
        params = same_step[(same_step["kind"] == "param") & (same_step["name"].map(_layer) == name)]
        if len(params):
            evidence["param_max_abs"] = float(np.nanmax(np.abs(params[["min", "max"]].to_numpy(dtype=float))))
        if len(inputs) and not (inputs["nonfinite"] > 0).any():
            evidence["input_max_abs"] = float(np.nanmax(np.abs(inputs[["min", "max"]].to_numpy(dtype=float))))
            return (
                f", from finite inputs: the {row['module_type'] or 'module'} itself overflowed or took an "
                "invalid value (weights grown too large, log or division by zero)"
            )
        return ""
    if kind == "loss":
        outputs = before[(before["kind"] == "activation") & (before["name"] == "")]
        if outputs.empty:  # activations not traced: the outputs are unknown
            return ": the loss computation, or the model's outputs, produced it"
        largest = float(np.nanmax(np.abs(outputs[["min", "max"]].to_numpy(dtype=float))))
        evidence["output_max_abs"] = largest
        if largest > 1e15:
            return (
                f", from finite but huge model outputs (up to {_num(largest)}): the loss overflowed, "
                "the weights have grown far too large"
            )
        return ", while the model's outputs were finite: the loss computation produced it (log of 0, a NaN target?)"
    if kind == "activation_grad":
        return ": the forward pass was finite, the backward pass overflowed"
    if kind == "grad":
        return ": the forward pass was finite, the backward pass produced it"
    if kind == "update":
        return ": the optimizer turned finite gradients and parameters into a non-finite update"
    if kind == "state":
        return ": the optimizer state itself holds it"
    if kind == "param":
        return ": the parameter was already non-finite before this step's update"
    return ""


# --------------------------------------------------------------------------- loss


def _loss_series(lead: pd.DataFrame, skipped: dict[int, str]) -> pd.Series:
    loss = lead[(lead["kind"] == "loss") & ~lead["step"].isin(list(skipped))]
    return loss.groupby("step", sort=True)["mean"].mean()


def _loss_trend(lead: pd.DataFrame, skipped: dict[int, str], t: Thresholds) -> list[Finding]:
    if skipped:
        return []  # with a gradient scaler the traced loss is the scaled loss: no trend to read
    series = _loss_series(lead, skipped)
    series = series[np.isfinite(series.to_numpy(dtype=float))]
    n = len(series)
    if n < t.min_steps:
        return []
    k = _windows(n, t)
    values = series.to_numpy(dtype=float)
    early, late = float(np.median(values[:k])), float(np.median(values[-k:]))
    steps = tuple(int(s) for s in series.index)
    evidence = {"early_median": early, "late_median": late, "window_steps": k, "steps": n}
    scale = abs(early)
    if late - early > (t.loss_diverge_factor - 1.0) * scale and late > early:
        peak = int(series.index[int(np.argmax(values))])
        evidence["max"] = float(values.max())
        evidence["max_step"] = peak
        message = (
            f"The loss is diverging: its median rose from {_num(early)} over the first {k} steps "
            f"to {_num(late)} over the last {k} (more than ×{_num(t.loss_diverge_factor)}); "
            "a learning rate too high is the usual cause."
        )
        return [Finding("error", "loss-diverging", steps[0], steps, "loss", "loss", message, evidence)]
    if scale <= t.loss_flat_atol:
        return []
    if early - late < t.loss_flat_rel * scale:
        change = "rose" if late > early else "went"
        note = "" if late > early else f" (less than {_num(100 * t.loss_flat_rel)}% lower)"
        message = (
            f"The loss is not decreasing: its median {change} from {_num(early)} over the first {k} steps "
            f"to {_num(late)} over the last {k}{note}; check the learning rate, that the optimizer holds "
            "the model's parameters, and the labels."
        )
        return [Finding("warning", "loss-flat", steps[0], steps, "loss", "loss", message, evidence)]
    return []


# --------------------------------------------------------------------------- gradients


def _layer_norms(lead: pd.DataFrame) -> pd.DataFrame:
    """Per (step, layer): gradient L2 norm (over the layer's parameters) and element count."""
    grads = lead[(lead["kind"] == "grad") & (lead["nonfinite"] == 0)].copy()
    if grads.empty:
        return pd.DataFrame(columns=["step", "layer", "norm", "numel"])
    grads["layer"] = grads["name"].map(_layer)
    grads["sq"] = grads["norm"].astype(float) ** 2
    out = grads.groupby(["step", "layer"], sort=True).agg(sq=("sq", "sum"), numel=("numel", "sum")).reset_index()
    out["norm"] = np.sqrt(out["sq"])
    return out[["step", "layer", "norm", "numel"]]


def _active_steps(lead: pd.DataFrame, t: Thresholds) -> list[int]:
    """Traced steps before the model converged: the total gradient norm (all parameters) is
    at least ``converged_ratio`` of its median over the early window (every step when the
    trace holds no gradients)."""
    grads = lead[(lead["kind"] == "grad") & (lead["nonfinite"] == 0)]
    steps = sorted({int(s) for s in lead["step"]})
    if grads.empty:
        return steps
    total = np.sqrt((grads["norm"].astype(float) ** 2).groupby(grads["step"]).sum())
    early = float(np.median(total.to_numpy()[: _windows(len(total), t)]))
    if not early > 0:
        return steps
    keep = {int(s) for s in total.index[total >= t.converged_ratio * early]}
    return [s for s in steps if s in keep or s not in total.index]


def _gradients(lead: pd.DataFrame, t: Thresholds) -> list[Finding]:
    norms = _layer_norms(lead)
    if norms.empty:
        return []
    out: list[Finding] = []
    # over steps: a layer's gradient norm against its own early steps
    for layer, g in norms.groupby("layer", sort=False):
        n = len(g)
        if n < t.min_steps:
            continue
        values = g["norm"].to_numpy(dtype=float)
        k = _windows(n, t)
        base = float(np.median(values[:k]))
        peak_i = int(np.argmax(values))
        peak = float(values[peak_i])
        if base > 0 and peak > t.exploding_growth * base:
            steps = tuple(int(s) for s, v in zip(g["step"], values) if v > t.exploding_growth * base)
            evidence = {
                "early_median": base,
                "max": peak,
                "max_step": int(g["step"].iloc[peak_i]),
                "growth": peak / base,
            }
            message = (
                f"The gradient of {_layer_text(layer)} is exploding: its norm reached {_num(peak)} at step "
                f"{int(g['step'].iloc[peak_i])}, ×{_num(peak / base)} its early median {_num(base)}; "
                "lower the learning rate or clip gradients."
            )
            out.append(Finding("warning", "exploding-grad", steps[0], steps, "grad", layer, message, evidence))
    # across layers: root mean square per element, each layer against the largest one
    layers = list(norms["layer"].unique())
    if len(layers) < 2:
        return out
    norms = norms.assign(rms=norms["norm"] / np.sqrt(norms["numel"].clip(lower=1)))
    table = norms.pivot(index="step", columns="layer", values="rms")
    largest = table.max(axis=1)
    # once every gradient has collapsed (a model that converged, or stopped learning),
    # the ratios between layers are rounding noise: judge only the steps before that
    alive = [s for s in _active_steps(lead, t) if s in largest.index and largest[s] > 0]
    if not alive:
        return out
    ratios = table.loc[alive].div(largest[alive], axis=0)
    for layer in layers:
        column = ratios[layer].dropna()
        if column.empty:
            continue
        low = column < t.vanishing_ratio
        if low.sum() * 2 <= len(column):
            continue
        steps = tuple(int(s) for s in column.index[low.to_numpy()])
        median = float(column.median())
        evidence = {
            "ratio_to_largest": median,
            "rms": float(table.loc[alive, layer].median()),
            "largest_layer_rms": float(largest[alive].median()),
            "steps": len(column),
        }
        zero = bool((table.loc[alive, layer] == 0).all())
        if zero:
            message = (
                f"The gradient of {_layer_text(layer)} is exactly zero at every step before convergence: no "
                "gradient reaches it (dead ReLUs after it, a detach, or a zero gate?)."
            )
        else:
            message = (
                f"The gradient of {_layer_text(layer)} is vanishing: per element it is ×{_num(median)} that of the "
                f"layer with the largest gradient (median over {len(column)} step(s)); saturating activations, "
                "a bad initialisation or a missing normalisation are the usual causes."
            )
        out.append(Finding("warning", "vanishing-grad", steps[0], steps, "grad", layer, message, evidence))
    return out


# --------------------------------------------------------------------------- updates


def _pairs(lead: pd.DataFrame) -> pd.DataFrame:
    """Per (step, parameter): update, param and grad norms side by side."""
    keep = lead[lead["kind"].isin(["update", "param", "grad"]) & (lead["call"] == 0)]
    if keep.empty:
        keep = pd.DataFrame(
            {"step": pd.Series(dtype="int64"), "name": pd.Series(dtype=object), "kind": "update", "norm": 0.0}
        )
    keep = keep.drop_duplicates(["step", "kind", "name"])
    wide = keep.pivot(index=["step", "name"], columns="kind", values="norm").reset_index()
    for column in ("update", "param", "grad"):
        if column not in wide.columns:
            wide[column] = np.nan
        wide[column] = wide[column].astype("float64")
    return wide


def _update_ratio(lead: pd.DataFrame, t: Thresholds) -> list[Finding]:
    wide = _pairs(lead)
    ndim = lead["shape"].map(lambda shape: len(shape) if shape is not None else 0)
    matrices = set(lead.loc[(lead["kind"] == "param") & (ndim >= 2), "name"])
    wide = wide[
        wide["name"].isin(matrices) & (wide["param"] > 0) & np.isfinite(wide["param"]) & np.isfinite(wide["update"])
    ]
    wide = wide[wide["step"].isin(_active_steps(lead, t))]
    out = []
    for name, g in wide.groupby("name", sort=False):
        if len(g) < t.min_steps or not (g["update"] > 0).any():
            continue  # never-changes speaks for a parameter whose updates are all zero
        ratio = (g["update"] / g["param"]).to_numpy(dtype=float)
        median = float(np.median(ratio))
        steps = tuple(int(s) for s in g["step"])
        evidence = {
            "median_ratio": median,
            "min_ratio": float(ratio.min()),
            "max_ratio": float(ratio.max()),
            "steps": len(g),
        }
        if median > t.update_ratio_high:
            message = (
                f"The updates of {_label(name)} are large: ‖update‖/‖param‖ has median {_num(median)} over "
                f"{len(g)} steps (usual: about 1e-3, flagged above {_num(t.update_ratio_high)}); "
                "the learning rate is probably too high for it."
            )
        elif median < t.update_ratio_low:
            message = (
                f"The updates of {_label(name)} are tiny: ‖update‖/‖param‖ has median {_num(median)} over "
                f"{len(g)} steps (usual: about 1e-3, flagged below {_num(t.update_ratio_low)}); "
                "it barely learns: a learning rate too small, or a vanishing gradient."
            )
        else:
            continue
        out.append(Finding("warning", "update-ratio", steps[0], steps, "update", name, message, evidence))
    return out


def _changes(lead: pd.DataFrame, t: Thresholds) -> list[Finding]:
    wide = _pairs(lead)
    out = []
    hparams = lead[lead["kind"] == "update"].drop_duplicates("name", keep="last").set_index("name")["hparams"]
    for name, g in wide.groupby("name", sort=False):
        g = g[np.isfinite(g["update"])]
        if g.empty:
            continue
        steps = tuple(int(s) for s in g["step"])
        zero_update = g["update"] == 0
        if zero_update.all() and len(g) >= t.never_changes_steps:
            grad_zero = bool((g["grad"].fillna(0) == 0).all())
            lr = _lr(hparams.get(name))
            evidence: dict[str, Any] = {"steps": len(g), "max_grad_norm": float(g["grad"].max(skipna=True) or 0.0)}
            if lr is not None:
                evidence["lr"] = lr
            why = (
                "its gradient is zero at every step, so nothing reaches it (detached, or multiplied by zero?)"
                if grad_zero
                else (
                    "its learning rate is 0"
                    if lr == 0
                    else "the optimizer leaves it unchanged although it has a gradient"
                )
            )
            message = f"Parameter {_label(name)} never changes: its update is exactly zero at all {len(g)} traced steps; {why}."
            out.append(Finding("warning", "never-changes", steps[0], steps, "update", name, message, evidence))
            continue
        no_grad = g[(g["grad"] == 0) & (g["update"] > 0)]
        if no_grad.empty:
            continue
        always = len(no_grad) == len(g)
        bad_steps = tuple(int(s) for s in no_grad["step"])
        evidence = {
            "steps_without_grad": len(no_grad),
            "steps": len(g),
            "max_update_norm": float(no_grad["update"].max()),
        }
        if always:
            message = (
                f"Parameter {_label(name)} changes without a gradient at all {len(g)} traced steps (its gradient "
                "is exactly zero): only weight decay or momentum moves it; is it used in the forward pass?"
            )
        else:
            message = (
                f"Parameter {_label(name)} changes without a gradient at {len(no_grad)} of {len(g)} traced steps "
                "(its gradient is exactly zero there): weight decay or momentum moves it."
            )
        severity = "warning" if always else "info"
        out.append(
            Finding(severity, "changes-without-grad", bad_steps[0], bad_steps, "update", name, message, evidence)
        )
    return out


def _lr(hparams: Any) -> float | None:
    if not isinstance(hparams, str):
        return None
    from tracer._reader import parse_hparams

    try:
        lr = parse_hparams(hparams, "hparams").get("lr")
    except ValueError:  # a DataFrame not read by tracer.load may hold anything
        return None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


# torch.nn modules that always own a trainable parameter (norm layers may have none)
_PARAMETRIC = frozenset((
    "Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "Embedding", "EmbeddingBag", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "PReLU",
))  # fmt: skip


def _frozen_modules(lead: pd.DataFrame, meta: Mapping[str, Any]) -> list[Finding]:
    """Modules that run but none of whose parameters ever got a gradient (frozen by accident?)."""
    optimized = lead[lead["kind"].isin(["grad", "param", "update"])]
    if optimized.empty:
        return []  # traced without an optimizer, or without its kinds
    options = meta.get("options", {})
    capture = set(options.get("capture") or ["grad", "param", "update"])
    if not capture & {"grad", "param", "update"}:
        return []
    layers = {_layer(n) for n in optimized["name"].unique()}
    modules = lead[lead["kind"].isin(["activation", "input"])].drop_duplicates("name")
    out = []
    for name, module_type in zip(modules["name"], modules["module_type"]):
        if module_type not in _PARAMETRIC or name in layers or not _selected(f"{name}.weight".lstrip("."), options):
            continue
        if any(layer.startswith(f"{name}.") for layer in layers if name):
            continue
        steps = tuple(sorted({int(s) for s in lead.loc[lead["name"] == name, "step"]}))
        message = (
            f"{_module(name)[0].upper()}{_module(name)[1:]} ({module_type}) runs, but none of its parameters got a gradient or an "
            "update in any traced step, so it never changes: requires_grad=False, left out of the optimizer, "
            "or cut from the graph (detach)? Ignore this if you froze it on purpose."
        )
        out.append(
            Finding(
                "warning",
                "never-changes",
                steps[0] if steps else None,
                steps,
                "param",
                name,
                message,
                {"steps": len(steps)},
            )
        )
    return out


def _selected(name: str, options: Mapping[str, Any]) -> bool:
    import fnmatch

    include, exclude = options.get("include"), options.get("exclude") or []
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


# --------------------------------------------------------------------------- dead units


def _dead_units(data: _Data, lead: pd.DataFrame, t: Thresholds) -> list[Finding]:
    acts = lead[(lead["kind"] == "activation") & lead["module_type"].isin(list(t.relu_types))]
    if acts.empty:
        return []
    need_values = acts[acts["numel"] > 0]
    names = sorted(need_values["name"].unique())
    window_steps: dict[str, list[int]] = {}
    for name in names:
        steps = sorted({int(s) for s in acts.loc[acts["name"] == name, "step"]})
        if len(steps) >= t.dead_steps:
            window_steps[name] = steps[-t.dead_steps :]
    if not window_steps:
        return []
    wanted = sorted({s for steps in window_steps.values() for s in steps})
    try:
        values = data.rows(
            ["activation"], ["step", "rank", "name", "shape", "values"], name=list(window_steps), step=wanted
        )
    except Exception:  # noqa: BLE001 - fall back to the tensor statistics
        values = pd.DataFrame(columns=["step", "rank", "name", "shape", "values"])
    if "values" not in values.columns:  # a DataFrame loaded without them
        values = pd.DataFrame(columns=["step", "rank", "name", "shape", "values"])
    if "rank" in values.columns and len(values):
        values = values[values["rank"] == lead["rank"].min()]
    out = []
    for name, steps in window_steps.items():
        stats = acts[(acts["name"] == name) & acts["step"].isin(steps)]
        vals = values[values["name"] == name] if len(values) else values
        dead, units, basis = _dead_mask(stats, vals, steps)
        if dead is None or units == 0:
            continue
        fraction = float(dead.mean())
        if fraction < t.dead_fraction:
            continue
        all_dead = fraction >= 1.0
        evidence = {
            "dead_fraction": fraction,
            "units": units,
            "dead_units": int(dead.sum()),
            "steps": len(steps),
            "basis": basis,
        }
        module_type = str(stats["module_type"].iloc[0])
        if all_dead:
            message = (
                f"Every unit of {module_type} {_label(name)} output zero for the whole batch in each of the last "
                f"{len(steps)} traced steps: the layer is dead and passes no gradient back "
                "(learning rate too high, or a large negative bias)."
            )
        else:
            message = (
                f"{_num(100 * fraction)}% of the units of {module_type} {_label(name)} output zero for the whole "
                f"batch in each of the last {len(steps)} traced steps (dead units); a lower learning rate, "
                "LeakyReLU or another initialisation may revive them."
            )
        out.append(
            Finding(
                "error" if all_dead else "warning",
                "dead-relu",
                steps[0],
                tuple(steps),
                "activation",
                name,
                message,
                evidence,
            )
        )
    return out


def _dead_mask(stats: pd.DataFrame, values: pd.DataFrame, steps: list[int]) -> tuple[np.ndarray | None, int, str]:
    """Per unit: dead in every one of ``steps``; the number of units; what it is based on.

    A unit is axis 1 of an output with a batch axis (features of ``(N, F)``, channels of
    ``(N, C, H, W)``), each element of a 1-d output. With values, a unit is dead at a step
    when all its outputs over the batch are zero; without them only "every unit is dead"
    (the tensor's max is 0) can be told, and a tensor whose max is above 0 counts as alive.
    """
    mask: np.ndarray | None = None
    bases = set()
    for step in steps:
        at_stats = stats[stats["step"] == step]
        at_values = values[values["step"] == step] if len(values) else values
        step_mask = None
        if len(at_values) and all(v is not None for v in at_values["values"]):
            for v, shape in zip(at_values["values"], at_values["shape"]):
                shape = tuple(int(s) for s in shape)
                arr = np.asarray(v).reshape(shape)
                if arr.ndim == 0:
                    arr = arr.reshape(1)
                per_unit = (
                    (arr == 0) if arr.ndim == 1 else np.moveaxis(arr == 0, 1, 0).reshape(arr.shape[1], -1).all(axis=1)
                )
                if step_mask is not None and step_mask.shape != per_unit.shape:
                    step_mask = None
                    break
                step_mask = per_unit if step_mask is None else (step_mask & per_unit)
            if step_mask is not None:
                bases.add("values")
        if step_mask is None:
            dead_all = bool(len(at_stats)) and bool((at_stats["max"] == 0).all() and (at_stats["min"] == 0).all())
            bases.add("tensor max")
            if mask is None:
                mask = np.array([dead_all])
            else:
                mask = mask & dead_all
            continue
        if mask is None or mask.shape == (1,):
            mask = step_mask if mask is None else (step_mask & bool(mask[0]))
        elif mask.shape == step_mask.shape:
            mask = mask & step_mask
        else:
            return None, 0, ""
    if mask is None:
        return None, 0, ""
    basis = (
        "values"
        if bases == {"values"}
        else ("tensor max (values not stored)" if bases == {"tensor max"} else "values and tensor max")
    )
    return mask, int(mask.size), basis


# --------------------------------------------------------------------------- rules


def _rule_mismatch(
    data: _Data, lead: pd.DataFrame, t: Thresholds, optimizers: tuple[type, ...], skipped: dict[int, str]
) -> list[Finding]:
    # a step the gradient scaler skipped follows no rule, by design
    steps = sorted({int(s) for s in lead.loc[lead["kind"] == "update", "step"]} - set(skipped))
    if not steps:
        return []
    if t.rule_check_steps is not None and len(steps) > t.rule_check_steps:
        picks = np.unique(np.linspace(0, len(steps) - 1, max(2, t.rule_check_steps)).round().astype(int))
        steps = [steps[i] for i in picks]
    from tracer._checks import build_checks

    rows = data.rows(["grad", "param", "update", "state"], None, step=steps)
    if "rank" in rows.columns:
        rows = rows[rows["rank"] == lead["rank"].min()]
    if rows.empty or "values" not in rows.columns:
        return []
    bases = {o["class"]: list(o.get("bases", [])) for o in data.meta.get("optimizers", [])}
    checks = build_checks(rows, bases, optimizers)
    by_name: dict[str, list[Any]] = {}
    for c in checks:
        by_name.setdefault(c.name, []).append(c)
    out = []
    for name, cs in by_name.items():
        bad = [c for c in cs if c.matches is False]
        if not bad:
            continue
        checked = [c for c in cs if c.matches is not None]
        worst = max(bad, key=lambda c: c.max_abs_error if c.max_abs_error is not None else math.inf)
        how = "its rule" if worst.check == "rule" else "a replay of the optimizer"
        bad_steps = tuple(c.step for c in bad)
        evidence = {
            "mismatched_steps": len(bad),
            "checked_steps": len(checked),
            "max_abs_error": worst.max_abs_error if worst.max_abs_error is not None else math.inf,
            "worst_step": worst.step,
            "optimizer": worst.optimizer,
        }
        message = (
            f"The updates of {_label(name)} do not follow the {worst.optimizer} update rule at {len(bad)} of "
            f"{len(checked)} checked steps (checked by {how}, max error {_num(evidence['max_abs_error'])}): the "
            "optimizer, or code inside optimizer.step(), changes it in a way the rule does not say; "
            "see tracer.report for the step-by-step arithmetic."
        )
        out.append(Finding("error", "rule-mismatch", bad_steps[0], bad_steps, "update", name, message, evidence))
    return out


# --------------------------------------------------------------------------- HTML

_CSS = """
.tracer-findings table{border-collapse:collapse;margin:.5rem 0}
.tracer-findings td,.tracer-findings th{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}
.tracer-findings th{background:#f6f8fa}
.tracer-findings .sev{font-weight:600;text-transform:uppercase;font-size:.8em;white-space:nowrap}
.tracer-findings .sev-error{color:#cf222e}.tracer-findings .sev-warning{color:#9a6700}.tracer-findings .sev-info{color:#57606a}
.tracer-findings .ev{color:#57606a;font-size:.85em;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.tracer-findings code{font-size:.9em}
"""


def html_section(findings: Sequence[Finding]) -> str:
    """The findings as an HTML fragment (a ``<section>``): every text escaped, no scripts.

    Example::

        page = report.to_html().replace("<body>", "<body>" + html_section(findings), 1)
    """
    esc = html.escape
    summary = Findings(findings).summary()
    parts = [f'<section class="tracer-findings"><style>{_CSS}</style><h2>Findings</h2><p>{esc(summary)}</p>']
    if findings:
        parts.append(
            "<table><thead><tr><th>severity</th><th>finding</th><th>where</th><th>what</th></tr></thead><tbody>"
        )
        for f in findings:
            evidence = esc(_evidence_text(f.evidence)) if f.evidence else ""
            parts.append(
                f'<tr class="finding-{esc(f.severity)}">'
                f'<td class="sev sev-{esc(f.severity)}">{esc(f.severity)}</td>'
                f"<td><code>{esc(f.code)}</code><br>{esc(_steps_text(f))}</td>"
                f"<td>{esc(_where(f))}</td>"
                f'<td>{esc(f.message)}<div class="ev">{evidence}</div></td></tr>'
            )
        parts.append("</tbody></table>")
    parts.append("</section>")
    return "".join(parts)
