"""Plots of a trace as inline SVG strings, for the HTML report and notebooks.

Each plot function takes a trace (a path, a ``run``, a DataFrame or a ``tracer.Trace``) and
returns an SVG string, or None when the trace has nothing of its kind to draw (no loss
rows, no gradients, ...). Given a ``Trace``, every plot reads from its cached statistics:
drawing all of them reads the trace once.

The SVG is written directly (:mod:`tracer._plot_draw`: milliseconds per plot, where
matplotlib's ``savefig`` took about 0.4 s); matplotlib (``pip install 'torch-tracer[plots]'``)
colours the heatmaps and is imported only for them. Without it every plot function raises
:class:`PlotsUnavailableError` (a ``tracer.TracerError`` and an ``ImportError``) that says
how to install it, and :func:`section` holds that line instead of the plots.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tracer import _plot_data as data
from tracer._plot_draw import (
    COLORS,
    INSTALL_HINT,
    MAX_LINES,
    MAX_POINTS,
    Box,
    Chart,
    Line,
    PlotsUnavailableError,
    label,
    require_plots,
    text_width,
)
from tracer._render import Block, Figure, Para, Section, to_html_body
from tracer._trace import Trace, TraceLike

__all__ = [
    "INSTALL_HINT",
    "MAX_LINES",
    "MAX_POINTS",
    "PlotsUnavailableError",
    "activation_plot",
    "grad_norm_plot",
    "histogram_plot",
    "html_section",
    "loss_plot",
    "metric_plot",
    "plots_available",
    "section",
    "update_ratio_plot",
]


def plots_available() -> bool:
    """True when matplotlib can be imported (plots can be drawn).

    Example::

        if tracer.plots.plots_available():
            Path("loss.svg").write_text(tracer.plots.loss_plot("traces/run1"))
    """
    try:
        require_plots()
    except PlotsUnavailableError:
        return False
    return True


# --------------------------------------------------------------------------- the plots


def loss_plot(trace: TraceLike) -> str | None:
    """The loss per step as an SVG string: one line per loss series (a GAN has two).

    A step's loss is the sum of its micro-batch losses, as ``tracer summary`` prints it;
    the first non-finite loss is marked.

    Example::

        svg = tracer.plots.loss_plot("traces/run1")
        Path("loss.svg").write_text(svg)

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    opened = Trace.open(trace)
    table = data.loss_table(opened)
    if table is None:
        return None
    require_plots()
    names = [str(c) for c in table.columns]
    lines = [Line(table.index.to_numpy(), table[c].to_numpy(dtype=float), n, COLORS[i % 10])
             for i, (c, n) in enumerate(zip(table.columns, names))]  # fmt: skip
    legend = Chart.legend_height(names, 620) if len(names) > 1 else 0
    chart = Chart(700, 320 + legend)
    values = table.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    log = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 100)
    step = data.first_nonfinite_loss(opened)
    mark = None if step is None else (float(step), f"non-finite from step {step}")
    chart.lines(chart.box(legend=legend), lines, title="Loss per step", ylabel="loss", log=log, mark=mark,
                legend=len(names) > 1)  # fmt: skip
    return chart.svg()


def grad_norm_plot(trace: TraceLike) -> str | None:
    """Gradient norm of each layer over steps (a heatmap for many layers), as SVG.

    A layer's norm is that of all its parameters together (√Σ‖g‖²).

    Example::

        svg = tracer.plots.grad_norm_plot("traces/run1")

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    table = data.layer_table(Trace.open(trace), "grad")
    if table is None:
        return None
    return per_layer(table, "Gradient norm per layer", "‖g‖", log=True)


def update_ratio_plot(trace: TraceLike) -> str | None:
    """‖update‖/‖param‖ of each layer over steps (a heatmap for many layers), as SVG.

    A dashed guide marks 1e-3, the usual size of a healthy step.

    Example::

        svg = tracer.plots.update_ratio_plot(run)

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    ratio = data.ratio_table(Trace.open(trace))
    if ratio is None:
        return None
    return per_layer(ratio, "Update / parameter ratio per layer", "‖Δθ‖/‖θ‖", log=True, guide=1e-3)


def per_layer(table: pd.DataFrame, title: str, ylabel: str, *, log: bool, guide: float | None = None) -> str:
    """A step × layer table as one line per layer, or a heatmap for more than MAX_LINES layers."""
    require_plots()
    labels = [label(str(c)) for c in table.columns]
    steps = table.index.to_numpy()
    if len(labels) > MAX_LINES:
        gutter = min(260.0, max(text_width(n, 9) for n in labels) + 8)
        chart = Chart(700, max(250, 16 * len(labels) + 100))
        box = chart.box(ylabels=gutter - 22)
        box = Box(box.left, box.top, box.width - 60, box.height, box.gutter)
        chart.heatmap(box, table.to_numpy(dtype=float).T, steps, labels, title=title, what=ylabel, log=log)
        return chart.svg()
    legend = Chart.legend_height(labels, 620)
    chart = Chart(700, 320 + legend)
    lines = [
        Line(steps, table[c].to_numpy(dtype=float), n, COLORS[i % 10])
        for i, (c, n) in enumerate(zip(table.columns, labels))
    ]
    chart.lines(chart.box(legend=legend), lines, title=title, ylabel=ylabel, log=log, guide=guide)
    return chart.svg()


def activation_plot(trace: TraceLike) -> str | None:
    """Mean and standard deviation of each module's output over steps, as SVG.

    Example::

        svg = tracer.plots.activation_plot(tracer.open("traces/run1"))

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    tables = data.activation_tables(Trace.open(trace))
    if tables is None:
        return None
    require_plots()
    mean, std = tables
    labels = [label(str(n)) for n in mean.columns]
    steps = mean.index.to_numpy()
    if len(labels) > MAX_LINES:
        gutter = min(200.0, max(text_width(n, 9) for n in labels) + 8)
        chart = Chart(900, max(250, 16 * len(labels) + 100))
        for i, (table, what, log, cmap) in enumerate(
            ((mean, "mean", False, "coolwarm"), (std, "std", True, "viridis"))
        ):
            box = chart.box(450 * i, 0, 450, ylabels=gutter - 22)
            box = Box(box.left, box.top, box.width - 60, box.height, box.gutter)
            chart.heatmap(box, table.to_numpy(dtype=float).T, steps, labels, title=f"Activation {what}", what=what,
                          log=log, cmap=cmap)  # fmt: skip
        return chart.svg()
    legend = Chart.legend_height(labels, 820)
    chart = Chart(900, 320 + legend)
    for i, (table, what) in enumerate(((mean, "mean"), (std, "std"))):
        lines = [
            Line(steps, table[c].to_numpy(dtype=float), n, COLORS[j % 10])
            for j, (c, n) in enumerate(zip(table.columns, labels))
        ]
        box = chart.box(450 * i, 0, 450, legend=legend)
        chart.lines(
            box, lines, title=f"Activation {what}", ylabel=what, log=what == "std" and _positive(table), legend=False
        )
    full = chart.box(0, 0, 900, legend=legend)
    chart.legend(full, [(n, COLORS[j % 10], False) for j, n in enumerate(labels)])
    return chart.svg()


def _positive(table: pd.DataFrame) -> bool:
    values = table.to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return bool(values.size and values.min() > 0 and values.max() / values.min() > 100)


def metric_plot(trace: TraceLike) -> str | None:
    """The numbers logged with ``run.log`` over steps, one small panel per name, as SVG.

    Example::

        svg = tracer.plots.metric_plot("traces/run1")   # accuracy, lr, ... per step

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    table = data.metric_table(Trace.open(trace))
    if table is None:
        return None
    require_plots()
    return small_multiples(
        [(str(c), [Line(table.index.to_numpy(), table[c].to_numpy(dtype=float), str(c))]) for c in table.columns]
    )


def small_multiples(
    panels: list[tuple[str, list[Line]]], *, columns: int = 2, legend: list[tuple[str, str, bool]] | None = None
) -> str:
    """Panels (title, lines) in a grid ``columns`` wide, each with its own y axis (log when its
    positive values span more than 100×); one shared legend under them."""
    width, height = 700 / columns, 230 if columns > 1 else 320
    rows = -(-len(panels) // columns)
    extra = Chart.legend_height([e[0] for e in legend], 620) if legend else 0
    chart = Chart(700, rows * height + extra)
    for i, (title, lines) in enumerate(panels):
        box = chart.box((i % columns) * width, (i // columns) * height, width, height)
        values = np.concatenate([np.asarray(ln.y, float) for ln in lines]) if lines else np.zeros(0)
        finite = values[np.isfinite(values)]
        log = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 100)
        chart.lines(box, lines, title=title, ylabel="", log=log, legend=False)
    if legend:
        chart.legend(Box(60, rows * height + 14 - 52, 620, 0), legend)
    return chart.svg()


def histogram_plot(trace: TraceLike, *, kind: str, name: str, step: int, call: int = 0, part: str = "") -> str:
    """A histogram of one tensor's stored values (``kind``, ``name``, ``step``), as SVG.

    Reads that one tensor's values, nothing else.

    Example::

        svg = tracer.plots.histogram_plot("traces/run1", kind="grad", name="fc1.weight", step=10)

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
        ValueError: no such tensor in the trace, or its values were not stored (it has
            more elements than ``max_values``).
    """
    values = data.tensor_values(Trace.open(trace), kind=kind, name=name, step=step, call=call, part=part)
    return _histogram(values, data.describe(kind, name, step, call, part))


def _histogram(values: np.ndarray, where: str) -> str:
    require_plots()
    of = "value"
    if np.iscomplexobj(values):  # a histogram of |z|, as the statistics of complex tensors are
        values, of = np.abs(values), "|z|"
    finite = values[np.isfinite(values)].astype(np.float64)
    chart = Chart(700, 280)
    counts, edges = np.histogram(finite, bins=min(50, max(5, int(math.sqrt(finite.size)))) if finite.size else 1)
    note = f", {values.size - finite.size} non-finite not shown" if finite.size < values.size else ""
    chart.bars(chart.box(), edges, counts, title=f"Histogram of {where}: {values.size} values{note}", xlabel=of)
    return chart.svg()


# --------------------------------------------------------------------------- the page's section

_PLOTS = (
    ("loss", "Loss per step", "loss", loss_plot),
    ("grad-norm", "Gradient norm per layer", "gradients", grad_norm_plot),
    ("update-ratio", "Update / parameter ratio ‖Δθ‖/‖θ‖ per layer (about 1e-3 is usual)", "updates", update_ratio_plot),
    ("activations", "Activation mean and std per module", "activations", activation_plot),
    ("metrics", "Logged metrics (run.log) per step", "", metric_plot),
)


def section(trace: TraceLike, *, histogram: dict[str, Any] | None = None) -> Section:
    """The plots of a trace as a report section (``tracer._render`` blocks): a
    :class:`~tracer._render.Figure` per plot, and a line naming what the trace lacks.

    Without matplotlib the section holds one line that says how to install it. Given a
    ``Trace``, it reads nothing the trace has not read already, except the values of the
    histogram's tensor when ``histogram`` names one.

    Example::

        page = to_html([Heading(1, "Run"), section(tracer.open("traces/run1"))], title="Run")

    Args:
        trace: a trace directory, a ``run``, a DataFrame from ``tracer.load`` or a Trace.
        histogram: ``{"kind": ..., "name": ..., "step": ...}`` (and optionally ``call``,
            ``part``) of the tensor to draw a histogram of; by default the largest
            gradient with stored values at the last step, if any.
    """
    if not plots_available():
        return _section((Para(f"The plots need matplotlib: {INSTALL_HINT}", tone="warn"),))
    opened = Trace.open(trace)
    blocks: list[Block] = []
    missing = []
    steps = data.steps(opened)
    if len(steps) == 1:  # a line over one step is a dot: say so instead
        blocks.append(Para(f"One step traced (step {steps[0]}): nothing to plot over steps; its numbers are below."))
    for key, caption, what, draw in _PLOTS if len(steps) > 1 else ():
        svg = draw(opened)
        if svg is None:
            missing += [what] if what else []
        else:
            blocks.append(Figure(svg, caption, key=key))
    blocks += _histogram_blocks(opened, histogram)
    if missing:
        blocks.append(Para(f"Not plotted (not in this trace): {', '.join(missing)}."))
    return _section(tuple(blocks))


def _section(blocks: tuple[Block, ...]) -> Section:
    return Section("Plots", blocks, cls="tracer-plots")


def _histogram_blocks(trace: Trace, spec: dict[str, Any] | None) -> list[Block]:
    """The histogram's figure (the default tensor's, or ``spec``'s), or a line saying why not."""
    if spec is None:
        found = data.default_histogram(trace)
        if found is None:
            return []
        spec, values = found
    else:
        try:
            values = data.tensor_values(trace, **spec)
        except ValueError as exc:
            return [Para(f"No histogram: {exc}.", tone="warn")]
    svg = _histogram(values, data.describe(**spec))
    return [Figure(svg, f"Histogram of {spec['kind']} {spec['name']!r} at step {spec['step']}", key="histogram")]


def html_section(trace: TraceLike, *, histogram: dict[str, Any] | None = None) -> str:
    """:func:`section` rendered as HTML elements (styled by the page's one stylesheet).

    Example::

        fragment = tracer.plots.html_section(tracer.open("traces/run1"))
    """
    return to_html_body([section(trace, histogram=histogram)])
