"""Plots of a trace as inline SVG strings, for the HTML report and notebooks.

Plots need matplotlib (``pip install 'torch-tracer[plots]'``), imported only when a plot is
drawn. Without it every plot function raises :class:`PlotsUnavailableError` (a
``tracer.TracerError`` and an ``ImportError``) that says how to install it, and
:func:`html_section` shows that line instead of the plots. A plot function returns None
when the trace has nothing of its kind to draw (no loss rows, no gradients, ...).

Long traces stay small: a line never has more than :data:`MAX_POINTS` points (longer runs
are binned: the bin mean as the line, the bin's min–max as a band), more than
:data:`MAX_LINES` layers become a heatmap (one raster image), and text stays text.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tracer._errors import TracerError

MAX_POINTS = 300
"""Most points of one line: longer series are binned to this many."""

MAX_LINES = 8
"""Most layers drawn as lines; more become a heatmap."""

INSTALL_HINT = "pip install 'torch-tracer[plots]'"

_STAT_COLUMNS = [
    "step", "seq", "rank", "kind", "name", "call", "part", "module_type", "shape", "dtype",
    "numel", "mean", "std", "min", "max", "norm", "nonfinite",
]  # fmt: skip


class PlotsUnavailableError(TracerError, ImportError):
    """matplotlib is not installed, so plots cannot be drawn."""


def plots_available() -> bool:
    """True when matplotlib can be imported (plots can be drawn)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- the plots


def loss_plot(trace: Any) -> str | None:
    """The loss per step (mean over a step's backward passes) as an SVG string.

    Example::

        svg = tracer._plots.loss_plot("traces/run1")
        Path("loss.svg").write_text(svg)

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    df = _frame(trace, ["loss"])
    loss = df[df["kind"] == "loss"]
    if loss.empty:
        return None
    series = loss.groupby("step", sort=True)["mean"].mean()
    with _figure() as fig:
        ax = fig.subplots()
        _line(ax, series.index.to_numpy(), series.to_numpy(dtype=float), "loss", color="C0")
        values = series.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
            ax.set_yscale("log")
        bad = series.index[~np.isfinite(values)]
        if len(bad):
            ax.axvline(bad[0], color="C3", linestyle="--", linewidth=1)
            ax.annotate(f"non-finite from step {bad[0]}", (bad[0], 0.95), xycoords=("data", "axes fraction"),
                        color="C3", fontsize=8, ha="left", va="top")  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("Loss per step")
        return _svg(fig, "loss")


def grad_norm_plot(trace: Any) -> str | None:
    """The gradient L2 norm of each layer over steps (a heatmap for many layers), as SVG.

    A layer's norm is that of all its parameters together (√Σ‖g‖²).

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    df = _frame(trace, ["grad"])
    table = _layer_table(df, "grad")
    if table is None:
        return None
    return _per_layer(table, "Gradient norm per layer", "‖g‖", "grad", log=True)


def update_ratio_plot(trace: Any) -> str | None:
    """‖update‖/‖param‖ of each layer over steps (a heatmap for many layers), as SVG.

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    df = _frame(trace, ["update", "param"])
    update, param = _layer_table(df, "update"), _layer_table(df, "param")
    if update is None or param is None:
        return None
    param = param.reindex(index=update.index, columns=update.columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = update / param.where(param > 0)
    if not np.isfinite(ratio.to_numpy(dtype=float)).any():
        return None
    return _per_layer(ratio, "Update / parameter ratio per layer", "‖Δθ‖/‖θ‖", "ratio", log=True, guide=1e-3)


def activation_plot(trace: Any) -> str | None:
    """Mean and standard deviation of each module's output over steps, as SVG.

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    df = _frame(trace, ["activation"])
    acts = df[(df["kind"] == "activation") & df["dtype"].astype(str).str.contains("float")]
    if acts.empty:
        return None
    order = list(dict.fromkeys(acts["name"]))
    # the mean and std of several outputs (calls, parts) of a module in one step, pooled
    acts = acts.assign(sq=acts["std"].astype(float) ** 2 + acts["mean"].astype(float) ** 2)
    grouped = acts.groupby(["step", "name"], sort=True)
    mean = grouped["mean"].mean().unstack("name").reindex(columns=order)
    sq = grouped["sq"].mean().unstack("name").reindex(columns=order)
    std = np.sqrt((sq - mean**2).clip(lower=0))
    labels = [_label(n) for n in order]
    with _figure(height=3.2, width=9.0) as fig:
        ax_mean, ax_std = fig.subplots(1, 2)
        if len(order) <= MAX_LINES:
            for i, name in enumerate(order):
                x = mean.index.to_numpy()
                _line(ax_mean, x, mean[name].to_numpy(dtype=float), labels[i], color=f"C{i}")
                _line(ax_std, x, std[name].to_numpy(dtype=float), labels[i], color=f"C{i}")
            ax_std.legend(fontsize=7, loc="best", frameon=False)
            ax_mean.set_xlabel("step")
            ax_std.set_xlabel("step")
        else:
            _heatmap(fig, ax_mean, mean, labels, "mean", log=False, cmap="coolwarm")
            _heatmap(fig, ax_std, std, labels, "std", log=True)
        ax_mean.set_title("Activation mean")
        ax_std.set_title("Activation std")
        fig.tight_layout()
        return _svg(fig, "activations")


def histogram_plot(trace: Any, *, kind: str, name: str, step: int, call: int = 0, part: str = "") -> str:
    """A histogram of one tensor's stored values (``kind``, ``name``, ``step``), as SVG.

    Example::

        svg = histogram_plot("traces/run1", kind="grad", name="fc1.weight", step=10)

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
        ValueError: no such tensor in the trace, or its values were not stored (it has
            more elements than ``max_values``).
    """
    from tracer._diagnose import _read

    rows = _read(trace, [kind], ["step", "name", "call", "part", "numel", "values"], step=step, name=name)
    rows = rows[(rows["name"] == name) & (rows["call"] == call) & (rows["part"] == part)]
    where = f"{kind} {name!r} (step {step}, call {call}" + (f", part {part!r})" if part else ")")
    if rows.empty:
        raise ValueError(f"the trace holds no {where}")
    values = rows["values"].iloc[0]
    if values is None:
        raise ValueError(
            f"the values of {where} were not stored ({int(rows['numel'].iloc[0])} elements, more than "
            "max_values): only its statistics are in the trace; trace with a larger max_values"
        )
    values = np.asarray(values)
    of = "value"
    if np.iscomplexobj(values):  # a histogram of |z|, as the statistics of complex tensors are
        values, of = np.abs(values), "|z|"
    finite = values[np.isfinite(values)]
    with _figure(height=2.8) as fig:
        ax = fig.subplots()
        if finite.size:
            ax.hist(finite, bins=min(50, max(5, int(math.sqrt(finite.size)))), color="C0")
        note = f", {values.size - finite.size} non-finite not shown" if finite.size < values.size else ""
        ax.set_title(_escape_mathtext(f"Histogram of {where}: {values.size} values{note}"), fontsize=9)
        ax.set_xlabel(of)
        ax.set_ylabel("count")
        return _svg(fig, "hist")


# --------------------------------------------------------------------------- HTML

_PLOTS = (
    ("loss", "Loss per step", "loss", loss_plot),
    ("grad-norm", "Gradient norm per layer", "gradients", grad_norm_plot),
    ("update-ratio", "Update / parameter ratio ‖Δθ‖/‖θ‖ per layer (about 1e-3 is usual)", "updates", update_ratio_plot),
    ("activations", "Activation mean and std per module", "activations", activation_plot),
)

_CSS = """
.tracer-plots figure{margin:1rem 0}.tracer-plots figcaption{color:#57606a;font-size:.9em}
.tracer-plots svg{max-width:100%;height:auto}
.tracer-plots .hint{color:#9a6700}
"""


def html_section(trace: Any, *, histogram: dict[str, Any] | None = None) -> str:
    """The plots of a trace as an HTML fragment (a ``<section>`` of inline SVG figures).

    Without matplotlib the section holds one line that says how to install it. Plots that
    the trace has no data for are left out, and say so.

    Args:
        trace: a trace directory, a ``tracer.Run`` or a DataFrame from ``tracer.load``.
        histogram: ``{"kind": ..., "name": ..., "step": ...}`` (and optionally ``call``,
            ``part``) of the tensor to draw a histogram of; by default the largest
            gradient with stored values at the last step, if any.
    """
    head = f'<section class="tracer-plots"><style>{_CSS}</style><h2>Plots</h2>'
    if not plots_available():
        return (
            head + '<p class="hint">The plots need matplotlib: <code>'
            + html.escape(INSTALL_HINT) + "</code></p></section>"
        )  # fmt: skip
    df = _frame(trace, None)
    figures, missing = [], []
    for key, caption, what, draw in _PLOTS:
        svg = draw(df)
        if svg is None:
            missing.append(what)
            continue
        figures.append(_figure_html(key, caption, svg))
    spec = histogram if histogram is not None else _default_histogram(trace, df)
    if spec is not None:
        try:
            svg = histogram_plot(trace, **spec)
        except ValueError as exc:
            figures.append(f'<p class="hint">No histogram: {html.escape(str(exc))}.</p>')
        else:
            where = f"{spec['kind']} {spec['name']!r} at step {spec['step']}"
            figures.append(_figure_html("histogram", f"Histogram of {where}", svg))
    if missing:
        figures.append(f"<p>Not plotted (not in this trace): {html.escape(', '.join(missing))}.</p>")
    return head + "".join(figures) + "</section>"


def _figure_html(key: str, caption: str, svg: str) -> str:
    return f'<figure class="tracer-plot" id="plot-{key}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _default_histogram(trace: Any, df: pd.DataFrame) -> dict[str, Any] | None:
    grads = df[df["kind"] == "grad"]
    if grads.empty:
        return None
    last = int(grads["step"].max())
    from tracer._diagnose import _read

    rows = _read(trace, ["grad"], ["step", "name", "numel", "values"], step=last)
    if rows.empty or "values" not in rows.columns:
        return None
    rows = rows[rows["values"].map(lambda v: v is not None)]
    if rows.empty:
        return None
    best = rows.sort_values("numel", kind="stable").iloc[-1]
    return {"kind": "grad", "name": str(best["name"]), "step": last}


# --------------------------------------------------------------------------- helpers


def _frame(trace: Any, kinds: Sequence[str] | None) -> pd.DataFrame:
    """Statistics (never values) of ``trace``'s rows of these kinds, lead rank only."""
    from tracer._diagnose import _read

    if isinstance(trace, pd.DataFrame) and kinds is not None:
        df = trace[trace["kind"].isin(list(kinds))]
    elif isinstance(trace, pd.DataFrame):
        df = trace
    else:
        df = _read(trace, kinds, _STAT_COLUMNS)
    if "rank" in df.columns and len(df):
        df = df[df["rank"] == df["rank"].min()]
    return df


def _layer_table(df: pd.DataFrame, kind: str) -> pd.DataFrame | None:
    """Per step (rows) and layer (columns, in training order): √Σ‖·‖² of its parameters."""
    rows = df[df["kind"] == kind]
    if rows.empty:
        return None
    rows = rows.assign(layer=rows["name"].map(lambda n: n.rpartition(".")[0]), sq=rows["norm"].astype(float) ** 2)
    order = list(dict.fromkeys(rows["layer"]))
    table = rows.groupby(["step", "layer"], sort=True)["sq"].sum().unstack("layer")
    return np.sqrt(table.reindex(columns=order))


def _label(name: str) -> str:
    return "(model)" if name == "" else name


def _escape_mathtext(text: str) -> str:
    """Text shown as is, on one line: ``$`` would start matplotlib's mathtext, ``_`` hide a legend
    entry, a newline break a title or label."""
    from tracer._render import escape_text

    text = escape_text(text).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def _bins(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """At most MAX_POINTS points: bin means, and the bins' min and max (None when not binned)."""
    if x.size <= MAX_POINTS:
        return x, y, None, None
    edges = np.linspace(0, x.size, MAX_POINTS + 1).astype(int)
    xs, means, lows, highs = [], [], [], []
    for a, b in itertools.pairwise(edges):
        chunk = y[a:b]
        finite = chunk[np.isfinite(chunk)]
        xs.append(x[a:b].mean())
        if finite.size:
            means.append(finite.mean())
            lows.append(finite.min())
            highs.append(finite.max())
        else:
            means.append(np.nan)
            lows.append(np.nan)
            highs.append(np.nan)
    return np.array(xs), np.array(means), np.array(lows), np.array(highs)


def _line(ax: Any, x: np.ndarray, y: np.ndarray, label: str, *, color: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    xs, ys, lo, hi = _bins(x, y)
    ax.plot(
        xs,
        ys,
        label=_escape_mathtext(label),
        color=color,
        linewidth=1.2,
        marker="o" if xs.size <= 30 else None,
        markersize=3,
    )
    if lo is not None:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def _per_layer(table: pd.DataFrame, title: str, ylabel: str, key: str, *, log: bool, guide: float | None = None) -> str:
    labels = [_label(c) for c in table.columns]
    with _figure(height=3.2 if len(labels) <= MAX_LINES else max(2.5, 0.25 * len(labels) + 1.2)) as fig:
        ax = fig.subplots()
        if len(labels) <= MAX_LINES:
            positive = False
            for i, column in enumerate(table.columns):
                values = table[column].to_numpy(dtype=float)
                if log:
                    values = np.where(values > 0, values, np.nan)
                positive = positive or bool(np.isfinite(values).any())
                _line(ax, table.index.to_numpy(), values, labels[i], color=f"C{i}")
            if log and positive:
                ax.set_yscale("log")
            if guide is not None:
                ax.axhline(guide, color="0.5", linestyle="--", linewidth=0.8)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7, loc="best", frameon=False)
        else:
            _heatmap(fig, ax, table, labels, ylabel, log=log)
        ax.set_title(title)
        fig.tight_layout()
        return _svg(fig, key)


def _heatmap(
    fig: Any, ax: Any, table: pd.DataFrame, labels: list[str], what: str, *, log: bool, cmap: str = "viridis"
) -> None:
    """Layers as rows, steps as columns (binned to MAX_POINTS), one raster image."""
    data = table.to_numpy(dtype=float).T  # layers x steps
    steps = table.index.to_numpy()
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.where(data > 0, np.log10(data), np.nan)
    if data.shape[1] > MAX_POINTS:
        edges = np.linspace(0, data.shape[1], MAX_POINTS + 1).astype(int)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
                data = np.stack([np.nanmean(data[:, a:b], axis=1) for a, b in itertools.pairwise(edges)], axis=1)
    data = np.where(np.isfinite(data), data, np.nan)
    masked = np.ma.masked_invalid(data)
    extent = (float(steps[0]) - 0.5, float(steps[-1]) + 0.5, len(labels) - 0.5, -0.5)
    image = ax.imshow(masked, aspect="auto", interpolation="nearest", cmap=cmap, extent=extent)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([_escape_mathtext(label) for label in labels], fontsize=7)
    ax.set_xlabel("step")
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label(f"log10 {what}" if log else what, fontsize=8)


class _figure:
    """A matplotlib Figure (no pyplot: no global state) under tracer's SVG settings."""

    def __init__(self, *, width: float = 7.0, height: float = 3.2) -> None:
        self.size = (width, height)

    def __enter__(self) -> Any:
        try:
            import matplotlib
            from matplotlib.figure import Figure
        except ImportError:
            raise PlotsUnavailableError(f"plots need matplotlib: {INSTALL_HINT}") from None
        self._context = matplotlib.rc_context(
            {
                "svg.fonttype": "none",  # text stays text: small, searchable, selectable
                "svg.hashsalt": "tracer",  # deterministic ids
                "font.size": 9,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "path.simplify": True,
            }
        )
        self._context.__enter__()
        return Figure(figsize=self.size, dpi=100)

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


_XML_HEAD = re.compile(r"^\s*<\?xml[^>]*\?>\s*(<!DOCTYPE[^>]*>\s*)?", re.DOTALL)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_IDS = re.compile(r'(\bid=")([^"]+)(")|(url\(#)([^)]+)(\))|(xlink:href="#)([^"]+)(")')


def _svg(fig: Any, key: str) -> str:
    """The figure as an SVG element ready to inline: no XML prolog, ids made unique."""
    import io

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", pad_inches=0.05, metadata={"Date": None, "Creator": None})
    text = _METADATA.sub("", _XML_HEAD.sub("", buffer.getvalue()))
    prefix = f"tr{key}{hashlib.sha1(text.encode()).hexdigest()[:6]}-"

    def rename(m: re.Match[str]) -> str:
        for i in (1, 4, 7):
            if m.group(i):
                return f"{m.group(i)}{prefix}{m.group(i + 1)}{m.group(i + 2)}"
        return m.group(0)  # pragma: no cover

    return _IDS.sub(rename, text).strip()
