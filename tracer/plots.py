"""Plots of a trace as inline SVG (``pip install 'torch-tracer[plots]'``: matplotlib).

Each function takes a trace (a path, a ``run``, a DataFrame from ``tracer.load`` or a
``tracer.Trace``) and returns an SVG string, or None when the trace holds nothing to plot.
Open the trace once and pass the ``Trace`` to draw several plots from one read::

    import tracer
    from pathlib import Path

    trace = tracer.open("traces/run1")
    Path("loss.svg").write_text(tracer.plots.loss_plot(trace))
    Path("grads.svg").write_text(tracer.plots.grad_norm_plot(trace))       # reads nothing again
    Path("ratios.svg").write_text(tracer.plots.update_ratio_plot(trace))
    Path("acts.svg").write_text(tracer.plots.activation_plot(trace))
    Path("hist.svg").write_text(
        tracer.plots.histogram_plot(trace, kind="grad", name="fc1.weight", step=10)
    )

In a notebook, ``IPython.display.SVG(tracer.plots.loss_plot(trace))`` shows a plot inline;
``tracer.report(trace).to_html()`` holds all of them, with the findings. Without matplotlib
every plot raises :class:`PlotsUnavailableError` (an ``ImportError``) saying how to install
it; ``plots_available()`` tells beforehand.
"""

from tracer._plots import (
    INSTALL_HINT,
    PlotsUnavailableError,
    activation_plot,
    grad_norm_plot,
    histogram_plot,
    loss_plot,
    metric_plot,
    plots_available,
    update_ratio_plot,
)

__all__ = [
    "INSTALL_HINT",
    "PlotsUnavailableError",
    "activation_plot",
    "grad_norm_plot",
    "histogram_plot",
    "loss_plot",
    "metric_plot",
    "plots_available",
    "update_ratio_plot",
]
