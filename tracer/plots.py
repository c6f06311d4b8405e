"""Plots of a trace as inline SVG (``pip install 'torch-tracer[plots]'``: matplotlib).

Each function takes a trace (a path, a ``run``, a DataFrame or a ``tracer.Trace``) and
returns an SVG string, or None when the trace holds nothing to plot.

>>> svg = tracer.plots.loss_plot("traces/run1")     # doctest: +SKIP
>>> Path("loss.svg").write_text(svg)               # doctest: +SKIP
"""

from tracer._plots import (
    activation_plot,
    grad_norm_plot,
    histogram_plot,
    loss_plot,
    plots_available,
    update_ratio_plot,
)

__all__ = [
    "activation_plot",
    "grad_norm_plot",
    "histogram_plot",
    "loss_plot",
    "plots_available",
    "update_ratio_plot",
]
