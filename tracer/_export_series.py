"""What ``tracer.export`` writes, per step: scalars from the trace's shared series, and
histograms of stored values, read a few steps at a time.

The scalars come from :mod:`tracer._series` (the loss per step, the norms per parameter
and the update ratios that ``tracer summary`` and ``tracer diagnose`` use), so a dashboard
shows the numbers the command line prints.

>>> s = series(tracer.open("traces/run1"))        # doctest: +SKIP
>>> s.scalars[0]["grad_norm/fc.weight"]           # doctest: +SKIP
0.4213
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tracer._schema import KINDS
from tracer._series import series as shared_series
from tracer._trace import Trace, TraceLike, TraceMeta

HISTOGRAM_KINDS = ("param", "grad", "update")
"""The kinds exported as histograms by default (``histograms=True``)."""

CHUNK_STEPS = 32
"""Steps of histogram values read at a time: memory stays bounded on long traces."""

_HISTOGRAM_COLUMNS = ("step", "rank", "kind", "name", "call", "part", "grad_enabled", "values")

StepRecord = tuple[int, dict[str, float], dict[str, np.ndarray]]
"""``(step, scalars, histograms)``: what an exporter writes for one step."""


@dataclasses.dataclass
class Series:
    """What an export writes: scalars and histogram values per step, in step order."""

    scalars: dict[int, dict[str, float]]
    histograms: dict[int, dict[str, np.ndarray]]
    meta: TraceMeta

    @property
    def steps(self) -> list[int]:
        """Every step that has a scalar or a histogram, ascending."""
        return sorted(set(self.scalars) | set(self.histograms))


def series(trace: TraceLike, *, histograms: bool | Iterable[str] = True) -> Series:
    """The scalars and histograms an export writes, read from ``trace``.

    Example::

        s = tracer.export.series("traces/run1")
        s.scalars[0]["grad_norm/fc.weight"]

    Args:
        trace: a trace directory, a ``run``, a DataFrame from ``tracer.load`` or a Trace.
        histograms: True for ``HISTOGRAM_KINDS``, False for none, or the kinds to export
            (``["grad", "activation"]``: activation histograms are of each module's first
            call in a step, training batches only).

    Raises:
        TraceFormatError: ``trace`` is not a readable trace.
        ValueError: an unknown histogram kind.
    """
    opened = Trace.open(trace)
    scalars: dict[int, dict[str, float]] = {}
    hists: dict[int, dict[str, np.ndarray]] = {}
    for step, step_scalars, step_hists in records(opened, histograms):
        scalars[step] = step_scalars
        if step_hists:
            hists[step] = step_hists
    return Series(scalars, hists, opened.meta)


def records(trace: Trace, histograms: bool | Iterable[str]) -> Iterator[StepRecord]:
    """``(step, scalars, histograms)`` per step in step order; histogram values are read
    :data:`CHUNK_STEPS` steps at a time, as the caller goes."""
    kinds = histogram_kinds(histograms)
    scalars = step_scalars(trace)
    order = sorted(scalars)
    if kinds:  # steps with only (say) activations still get their histograms
        stats = trace.stats
        order = sorted(set(order) | {int(s) for s in stats.loc[stats["kind"].isin(kinds), "step"]})
    for i in range(0, len(order), CHUNK_STEPS):
        chunk = order[i : i + CHUNK_STEPS]
        hists = _histograms(trace, kinds, chunk) if kinds else {}
        for step in chunk:
            yield step, scalars.get(step, {}), hists.get(step, {})


def histogram_kinds(histograms: bool | Iterable[str]) -> tuple[str, ...]:
    """The kinds to export histograms of (``histograms=`` of :func:`series`)."""
    if histograms is True:
        return HISTOGRAM_KINDS
    if histograms is False or histograms is None:
        return ()
    kinds = (histograms,) if isinstance(histograms, str) else tuple(histograms)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown histogram kind(s) {unknown}; valid kinds are {list(KINDS)}")
    return kinds


def step_scalars(trace: Trace) -> dict[int, dict[str, float]]:
    """Per step: the loss, the norms per parameter and in total, update ratios, learning rates
    and the metrics logged with ``run.log`` (``metric/NAME``)."""
    shared = shared_series(trace)
    out: dict[int, dict[str, float]] = {}
    for tag, per_step in _loss_scalars(shared.losses).items():
        for step, value in per_step.items():
            out.setdefault(step, {})[tag] = value
    for step, rows in shared.norms.groupby("step", sort=True):
        out.setdefault(int(step), {}).update(_norm_scalars(rows))
    for (step, tag), lr in _learning_rates(trace.stats).items():
        out.setdefault(step, {})[tag] = lr
    for (step, tag), value in _metrics(shared.lead).items():
        out.setdefault(step, {})[tag] = value
    return dict(sorted(out.items()))


def _metrics(lead: pd.DataFrame) -> dict[tuple[int, str], float]:
    """``{(step, "metric/NAME"): value}`` of the numbers logged with ``run.log`` (the last one
    when a step logged a name twice)."""
    rows = lead[lead["kind"] == "metric"]
    return {
        (int(step), f"metric/{name}"): float(value)
        for step, name, value in zip(rows["step"], rows["name"], rows["mean"])
    }


def _loss_scalars(losses: pd.DataFrame) -> dict[str, dict[int, float]]:
    """``loss`` (one series), or ``loss/D``, ``loss/G`` (one per network of a GAN)."""
    names = list(dict.fromkeys(losses["series"]))
    out: dict[str, dict[int, float]] = {}
    for name, step, loss in zip(losses["series"], losses["step"], losses["loss"]):
        tag = "loss" if names == ["loss"] else f"loss/{name}"
        out.setdefault(tag, {})[int(step)] = float(loss)
    return out


def _norm_scalars(norms: pd.DataFrame) -> dict[str, float]:
    """One step's ``KIND_norm/NAME``, ``total/KIND_norm`` and ``update_ratio/NAME``."""
    out: dict[str, float] = {}
    for kind in ("grad", "update", "param"):
        present = [(n, float(v)) for n, v in zip(norms["name"], norms[kind]) if not math.isnan(v)]
        for name, norm in present:
            out[f"{kind}_norm/{name}"] = norm
        if present:
            out[f"total/{kind}_norm"] = math.sqrt(sum(v * v for _, v in present))
    for name, ratio in zip(norms["name"], norms["ratio"]):
        if not math.isnan(ratio):
            out[f"update_ratio/{name}"] = float(ratio)
    return out


def _learning_rates(stats: pd.DataFrame) -> dict[tuple[int, str], float]:
    """``{(step, "lr/OPTIMIZER/groupG"): lr}`` from the hyper-parameters of the update rows."""
    updates = stats[stats["kind"] == "update"].drop_duplicates(["step", "optimizer", "param_group"])
    parsed: dict[str, Any] = {}
    out: dict[tuple[int, str], float] = {}
    columns = (updates[c] for c in ("step", "optimizer", "param_group", "hparams"))
    for step, opt, group, hparams in zip(*columns):
        if not isinstance(hparams, str):
            continue
        if hparams not in parsed:  # a schedule changes it now and then: parse each text once
            parsed[hparams] = json.loads(hparams).get("lr")
        lr = parsed[hparams]
        if isinstance(lr, (int, float)) and not isinstance(lr, bool):
            out[(int(step), f"lr/{opt}/group{0 if pd.isna(group) else int(group)}")] = float(lr)
    return out


def _histograms(trace: Trace, kinds: Sequence[str], steps: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """``{step: {"hist/KIND/NAME[/PART]": values}}`` of these steps: lead rank, first call,
    training passes (not the forward-only validation rows), stored values only."""
    df = trace.rows(kind=list(kinds), step=steps, columns=_HISTOGRAM_COLUMNS)
    out: dict[int, dict[str, np.ndarray]] = {}
    if not len(df) or "values" not in df.columns:
        return out
    df = df[(df["rank"] == df["rank"].min()) & (df["call"] == 0) & df["values"].notna()]
    if "grad_enabled" in df.columns:
        df = df[df["grad_enabled"].astype("boolean").fillna(True).astype(bool)]
    for step, kind, name, part, values in zip(df["step"], df["kind"], df["name"], df["part"], df["values"]):
        if len(values):
            tag = f"hist/{kind}/{name or '(root)'}" + (f"/{part}" if part else "")
            out.setdefault(int(step), {}).setdefault(tag, _real(values))
    return out


def _real(values: np.ndarray) -> np.ndarray:
    """The numbers a histogram shows: the values, or |z| of complex ones (as their statistics)."""
    values = np.asarray(values)
    return np.abs(values) if np.iscomplexobj(values) else values.astype(np.float64, copy=False)
