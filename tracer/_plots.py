"""Plots of a trace as inline SVG strings, for the HTML report and notebooks.

Each plot function takes a trace (a path, a ``run``, a DataFrame or a ``tracer.Trace``) and
returns an SVG string, or None when the trace has nothing of its kind to draw (no loss
rows, no gradients, ...). Given a ``Trace``, every plot reads from its cached statistics:
drawing all of them reads the trace once.

Plots need matplotlib (``pip install 'torch-tracer[plots]'``), imported only when a plot is
drawn. Without it every plot function raises :class:`PlotsUnavailableError` (a
``tracer.TracerError`` and an ``ImportError``) that says how to install it, and
:func:`section` holds that line instead of the plots.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tracer import _plot_data as data
from tracer._plot_draw import (
    INSTALL_HINT,
    MAX_LINES,
    MAX_POINTS,
    PlotsUnavailableError,
    escape_mathtext,
    figure,
    heatmap,
    label,
    line,
    log_y,
    per_layer,
    to_svg,
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
        import matplotlib  # noqa: F401
    except ImportError:
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
    table = data.loss_table(Trace.open(trace))
    if table is None:
        return None
    with figure() as fig:
        ax = fig.subplots()
        for i, name in enumerate(table.columns):
            line(ax, table.index.to_numpy(), table[name].to_numpy(dtype=float), name, color=f"C{i}")
        values = table.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
            log_y(ax)
        _mark_nonfinite(ax, data.first_nonfinite_loss(Trace.open(trace)))
        if len(table.columns) > 1:
            ax.legend(fontsize=7, loc="best", frameon=False)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("Loss per step")
        return to_svg(fig, "loss")


def _mark_nonfinite(ax: Any, step: int | None) -> None:
    """A dashed line at the first step whose loss is NaN or infinite (if any)."""
    if step is not None:
        ax.axvline(step, color="C3", linestyle="--", linewidth=1)
        ax.annotate(f"non-finite from step {step}", (step, 0.95), xycoords=("data", "axes fraction"),
                    color="C3", fontsize=8, ha="left", va="top")  # fmt: skip


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
    return per_layer(table, "Gradient norm per layer", "‖g‖", "grad", log=True)


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
    return per_layer(ratio, "Update / parameter ratio per layer", "‖Δθ‖/‖θ‖", "ratio", log=True, guide=1e-3)


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
    mean, std = tables
    labels = [label(n) for n in mean.columns]
    with figure(height=3.2, width=9.0) as fig:
        ax_mean, ax_std = fig.subplots(1, 2)
        if len(labels) <= MAX_LINES:
            for i, name in enumerate(mean.columns):
                steps = mean.index.to_numpy()
                line(ax_mean, steps, mean[name].to_numpy(dtype=float), labels[i], color=f"C{i}")
                line(ax_std, steps, std[name].to_numpy(dtype=float), labels[i], color=f"C{i}")
            ax_std.legend(fontsize=7, loc="best", frameon=False)
            ax_mean.set_xlabel("step")
            ax_std.set_xlabel("step")
        else:
            heatmap(fig, ax_mean, mean, labels, "mean", log=False, cmap="coolwarm")
            heatmap(fig, ax_std, std, labels, "std", log=True)
        ax_mean.set_title("Activation mean")
        ax_std.set_title("Activation std")
        fig.tight_layout()
        return to_svg(fig, "activations")


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
    of = "value"
    if np.iscomplexobj(values):  # a histogram of |z|, as the statistics of complex tensors are
        values, of = np.abs(values), "|z|"
    finite = values[np.isfinite(values)]
    with figure(height=2.8) as fig:
        ax = fig.subplots()
        if finite.size:
            ax.hist(finite, bins=min(50, max(5, int(math.sqrt(finite.size)))), color="C0")
        note = f", {values.size - finite.size} non-finite not shown" if finite.size < values.size else ""
        ax.set_title(escape_mathtext(f"Histogram of {where}: {values.size} values{note}"), fontsize=9)
        ax.set_xlabel(of)
        ax.set_ylabel("count")
        return to_svg(fig, "hist")


# --------------------------------------------------------------------------- the page's section

_PLOTS = (
    ("loss", "Loss per step", "loss", loss_plot),
    ("grad-norm", "Gradient norm per layer", "gradients", grad_norm_plot),
    ("update-ratio", "Update / parameter ratio ‖Δθ‖/‖θ‖ per layer (about 1e-3 is usual)", "updates", update_ratio_plot),
    ("activations", "Activation mean and std per module", "activations", activation_plot),
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
    for key, caption, what, draw in _PLOTS:
        svg = draw(opened)
        if svg is None:
            missing.append(what)
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
