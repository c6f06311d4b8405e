"""``tracer.compare``: several runs side by side on one HTML page.

Each run's model, optimizer, steps and hyper-parameters in one table (the ones that differ
between the runs marked), then the loss of every run overlaid, and per layer the gradient
norm and the update ratio ‖Δθ‖/‖θ‖ of every run overlaid (one small panel per layer), and
the numbers logged with ``run.log``. The numbers are those of ``tracer summary`` and the
report's plots (the shared series), each trace read once.

>>> page = tracer.compare("traces/lr-0.1", "traces/lr-0.01")      # doctest: +SKIP
>>> page.save("compare.html")                                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tracer import _plot_data as data
from tracer._plot_draw import COLORS, INSTALL_HINT, Line, label, require_plots
from tracer._plots import plots_available, small_multiples
from tracer._render import Block, Cell, Figure, Heading, Para, Section, Table, to_html, to_html_fragment
from tracer._run_hparams import hparams, schedule_text
from tracer._trace import Trace, TraceLike

MAX_PANELS = 12
"""Most layers drawn per quantity (one small panel each); the page says how many are left out."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The comparison page of several runs: :meth:`to_html`, :meth:`save`, or shown in a notebook."""

    labels: tuple[str, ...]
    blocks: tuple[Block, ...]

    def to_html(self) -> str:
        """One self-contained HTML page (no scripts, nothing fetched)."""
        return to_html(self.blocks, title=f"tracer: {', '.join(self.labels)}")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` (UTF-8); returns the path."""
        out = Path(path)
        out.write_text(self.to_html(), encoding="utf-8")
        return out

    def _repr_html_(self) -> str:
        return to_html_fragment(self.blocks)


def compare(*traces: TraceLike, labels: Sequence[str] | None = None) -> Comparison:
    """Several runs on one page: hyper-parameters, loss, gradient norms and update ratios per layer.

    Example::

        tracer.compare("traces/lr-0.1", "traces/lr-0.01", labels=["lr 0.1", "lr 0.01"]).save("compare.html")

    Args:
        *traces: two or more traces (paths, runs, DataFrames from ``tracer.load``, Traces).
        labels: each run's name on the page (default: its directory's name, else ``run N``).

    Raises:
        ValueError: fewer than two traces, or not one label per trace.
        TraceFormatError: a path is not a readable trace.
    """
    if len(traces) < 2:
        raise ValueError(f"compare needs two traces or more (got {len(traces)})")
    opened = [Trace.open(t) for t in traces]
    names = _labels(opened, labels)
    blocks: list[Block] = [Heading(1, f"{len(opened)} runs compared"), _runs_table(opened, names)]
    blocks.append(Section("Hyper-parameters", tuple(_hparams_blocks(opened, names))))
    blocks.append(Section("Plots", tuple(_plots(opened, names)), cls="tracer-plots"))
    return Comparison(tuple(names), tuple(blocks))


def _labels(traces: list[Trace], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != len(traces):
            raise ValueError(f"labels must name each trace once: {len(traces)} traces, {len(labels)} labels")
        return labels
    names = [t.path.resolve().name if t.path is not None else f"run {i + 1}" for i, t in enumerate(traces)]
    if len(set(names)) < len(names):  # two directories of one name: their parents tell them apart
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def _runs_table(traces: list[Trace], names: list[str]) -> Table:
    rows = []
    for name, trace in zip(names, traces):
        losses = data.loss_table(trace)
        last = "—" if losses is None else f"{float(losses.iloc[-1].iloc[0]):.6g} (step {int(losses.index[-1])})"
        steps = data.steps(trace)
        rows.append((
            Cell(name, code=True), trace.source, trace.meta.model or "—",
            ", ".join(o.cls for o in trace.meta.optimizers) or "—",
            f"{len(steps)}" + (f" ({steps[0]} to {steps[-1]})" if len(steps) > 1 else ""), last,
        ))  # fmt: skip
    return Table(("run", "trace", "model", "optimizer", "steps", "last loss"), tuple(rows), align="left")


def _hparams_blocks(traces: list[Trace], names: list[str]) -> list[Block]:
    """One row per (optimizer, group, key): each run's value over its steps; differing rows marked."""
    per_run = [hparams(t) for t in traces]
    keys: dict[tuple[str, int, str], None] = {}
    for run in per_run:
        for step in sorted(run):
            for (opt, index), values in run[step].items():
                keys.update({(opt, index, k): None for k in values})
    if not keys:
        return [Para("No update rows: these traces hold no hyper-parameters.", tone="muted")]
    rows, differ = [], 0
    for opt, index, key in sorted(keys, key=lambda k: (k[0], k[1], k[2] != "lr", k[2])):
        shown = [schedule_text(run, (opt, index), key) for run in per_run]
        same = len(set(shown)) == 1
        differ += not same
        rows.append(
            (Cell(f"{opt} group {index}: {key}", code=True), *(Cell(v, tone="" if same else "warn") for v in shown))
        )
    note = (
        f"{differ} hyper-parameter(s) differ between the runs (marked)."
        if differ
        else "The runs share every hyper-parameter."
    )
    return [Para(note), Table(("hyper-parameter", *names), tuple(rows), align="left")]


def _plots(traces: list[Trace], names: list[str]) -> list[Block]:
    if not plots_available():
        return [Para(f"The plots need matplotlib: {INSTALL_HINT}", tone="warn")]
    require_plots()
    legend = [(n, COLORS[i % 10], False) for i, n in enumerate(names)]
    blocks: list[Block] = []
    losses = [data.loss_table(t) for t in traces]
    if any(t is not None for t in losses):
        lines = [Line(t.index.to_numpy(), t.iloc[:, 0].to_numpy(dtype=float), n, COLORS[i % 10])
                 for i, (t, n) in enumerate(zip(losses, names)) if t is not None]  # fmt: skip
        blocks.append(
            Figure(small_multiples([("Loss per step", lines)], columns=1, legend=legend), "Loss per step", key="loss")
        )
    for key, caption, tables in (
        ("grad-norm", "Gradient norm ‖g‖ per layer", [data.layer_table(t, "grad") for t in traces]),
        ("update-ratio", "Update / parameter ratio ‖Δθ‖/‖θ‖ per layer (about 1e-3 is usual)", [data.ratio_table(t) for t in traces]),
        ("metrics", "Logged metrics (run.log) per step", [data.metric_table(t) for t in traces]),
    ):  # fmt: skip
        blocks += _overlay(key, caption, tables, names, legend)
    return blocks


def _overlay(key: str, caption: str, tables: list[pd.DataFrame | None], names: list[str], legend: list) -> list[Block]:
    """One panel per column (layer, metric) that any run has, every run's line in it."""
    columns = list(dict.fromkeys(c for t in tables if t is not None for c in t.columns))
    if not columns:
        return []
    panels = []
    for column in columns[:MAX_PANELS]:
        lines = [
            Line(t.index.to_numpy(), t[column].to_numpy(dtype=float), names[i], COLORS[i % 10])
            for i, t in enumerate(tables)
            if t is not None and column in t.columns and np.isfinite(t[column].to_numpy(dtype=float)).any()
        ]
        panels.append((label(str(column)), lines))
    left_out = len(columns) - MAX_PANELS
    caption += f" (the first {MAX_PANELS} of {len(columns)})" if left_out > 0 else ""
    return [Figure(small_multiples(panels, legend=legend), caption, key=key)]
