"""Drawing for :mod:`tracer._plots`: matplotlib figures (no pyplot, no global state) as inline SVG.

Long traces stay small: a line never has more than :data:`MAX_POINTS` points (longer runs
are binned: the bin mean as the line, the bin's min–max as a band), more than
:data:`MAX_LINES` layers become a heatmap (one raster image), and text stays text.

>>> with figure() as fig:                                   # doctest: +SKIP
...     line(fig.subplots(), steps, loss, "loss", color="C0")
...     svg = to_svg(fig, "loss")
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from tracer._errors import TracerError
from tracer._escape import escape_text

MAX_POINTS = 300
"""Most points of one line: longer series are binned to this many."""

MAX_LINES = 8
"""Most layers drawn as lines; more become a heatmap."""

INSTALL_HINT = "pip install 'torch-tracer[plots]'"


class PlotsUnavailableError(TracerError, ImportError):
    """matplotlib is not installed, so plots cannot be drawn."""


def label(name: str) -> str:
    """A module or layer name as a plot shows it (the root module is ``(model)``)."""
    return "(model)" if name == "" else name


def escape_mathtext(text: str) -> str:
    """Text shown as is, on one line: ``$`` would start matplotlib's mathtext, ``_`` hide a legend
    entry, a newline break a title or label."""
    text = escape_text(text).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_MATHTEXT_LABEL = re.compile(r"\$\\mathdefault\{(.*)\}\$")


def plain_power(label: str) -> str:
    """A log axis' mathtext tick label as plain Unicode text: ``$\\mathdefault{6\\times10^{-1}}$``
    → ``6×10⁻¹``. Text that needs no mathtext is laid out in a fraction of the time.

    >>> plain_power(r"$\\mathdefault{10^{-3}}$")
    '10⁻³'
    """
    found = _MATHTEXT_LABEL.fullmatch(label)
    if found is None:
        return label
    body = found.group(1).replace(r"\times", "×").replace("-", "−")
    return re.sub(r"\^\{([−0-9]+)\}", lambda m: m.group(1).replace("−", "-").translate(_SUPERSCRIPT), body)


def log_y(ax: Any) -> None:
    """A log y axis whose tick labels are plain text (10⁻³), not mathtext."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return plain_power(super().__call__(x, pos))

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def bins(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """At most MAX_POINTS points: bin means of the finite values, and the bins' min and max
    (None when not binned); a bin without a finite value is NaN.

    >>> xs, ys, lo, hi = bins(np.arange(600.0), np.arange(600.0))
    >>> (xs.size, float(ys[0]), float(lo[0]), float(hi[0]))
    (300, 0.5, 0.0, 1.0)
    """
    if x.size <= MAX_POINTS:
        return x, y, None, None
    starts = np.linspace(0, x.size, MAX_POINTS + 1).astype(int)[:-1]
    finite = np.isfinite(y)
    counts = np.add.reduceat(finite.astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.add.reduceat(np.where(finite, y, 0.0), starts) / counts
    lows = np.minimum.reduceat(np.where(finite, y, np.inf), starts)
    highs = np.maximum.reduceat(np.where(finite, y, -np.inf), starts)
    empty = counts == 0
    xs = np.add.reduceat(x, starts) / np.diff(np.append(starts, x.size))
    return xs, np.where(empty, np.nan, means), np.where(empty, np.nan, lows), np.where(empty, np.nan, highs)


def line(ax: Any, x: np.ndarray, y: np.ndarray, name: str, *, color: str) -> None:
    """One series as a line (binned when long, with its min–max band), steps on the x axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    xs, ys, lo, hi = bins(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    ax.plot(xs, ys, label=escape_mathtext(name), color=color, linewidth=1.2,
            marker="o" if xs.size <= 30 else None, markersize=3)  # fmt: skip
    if lo is not None:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def per_layer(table: pd.DataFrame, title: str, ylabel: str, key: str, *, log: bool, guide: float | None = None) -> str:
    """A step × layer table as one line per layer, or a heatmap for more than MAX_LINES layers."""
    labels = [label(c) for c in table.columns]
    many = len(labels) > MAX_LINES
    with figure(height=max(2.5, 0.25 * len(labels) + 1.2) if many else 3.2) as fig:
        ax = fig.subplots()
        if many:
            heatmap(fig, ax, table, labels, ylabel, log=log)
        else:
            _layer_lines(ax, table, labels, log=log)
            if guide is not None:
                ax.axhline(guide, color="0.5", linestyle="--", linewidth=0.8)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7, loc="best", frameon=False)
        ax.set_title(title)
        fig.tight_layout()
        return to_svg(fig, key)


def _layer_lines(ax: Any, table: pd.DataFrame, labels: list[str], *, log: bool) -> None:
    positive = False
    for i, column in enumerate(table.columns):
        values = table[column].to_numpy(dtype=float)
        if log:
            values = np.where(values > 0, values, np.nan)
        positive = positive or bool(np.isfinite(values).any())
        line(ax, table.index.to_numpy(), values, labels[i], color=f"C{i}")
    if log and positive:
        log_y(ax)


def heatmap(
    fig: Any, ax: Any, table: pd.DataFrame, labels: list[str], what: str, *, log: bool, cmap: str = "viridis"
) -> None:
    """Layers as rows, steps as columns (binned to MAX_POINTS), one raster image."""
    data = table.to_numpy(dtype=float).T  # layers x steps
    steps = table.index.to_numpy()
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.where(data > 0, np.log10(data), np.nan)
    data = np.where(np.isfinite(data), data, np.nan)
    if data.shape[1] > MAX_POINTS:
        edges = np.linspace(0, data.shape[1], MAX_POINTS + 1).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
            data = np.stack([np.nanmean(data[:, a:b], axis=1) for a, b in itertools.pairwise(edges)], axis=1)
    extent = (float(steps[0]) - 0.5, float(steps[-1]) + 0.5, len(labels) - 0.5, -0.5)
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", interpolation="nearest", cmap=cmap, extent=extent)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([escape_mathtext(name) for name in labels], fontsize=7)
    ax.set_xlabel("step")
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label(f"log10 {what}" if log else what, fontsize=8)


@contextlib.contextmanager
def figure(*, width: float = 7.0, height: float = 3.2) -> Iterator[Any]:
    """A matplotlib Figure (no pyplot: no global state) under tracer's SVG settings.

    Raises:
        PlotsUnavailableError: matplotlib is not installed.
    """
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailableError(f"plots need matplotlib: {INSTALL_HINT}") from None
    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",  # text stays text: small, searchable, selectable
            "svg.hashsalt": "tracer",  # deterministic ids
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "path.simplify": True,
        }
    ):
        yield Figure(figsize=(width, height), dpi=100)


_XML_HEAD = re.compile(r"^\s*<\?xml[^>]*\?>\s*(<!DOCTYPE[^>]*>\s*)?", re.DOTALL)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
# matplotlib's own `*{stroke-linejoin: round; ...}`: inline, it would style the whole page;
# tracer._render.STYLESHEET says the same for the figures alone
_STYLE = re.compile(r"<style[^>]*>.*?</style>\s*", re.DOTALL)
_IDS = re.compile(r'(\bid=")([^"]+)(")|(url\(#)([^)]+)(\))|(xlink:href="#)([^"]+)(")')


def to_svg(fig: Any, key: str) -> str:
    """The figure as an SVG element ready to inline: no XML prolog, no stylesheet, ids made unique."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", pad_inches=0.05, metadata={"Date": None, "Creator": None})
    text = _STYLE.sub("", _METADATA.sub("", _XML_HEAD.sub("", buffer.getvalue())))
    prefix = f"tr{key}{hashlib.sha1(text.encode()).hexdigest()[:6]}-"

    def rename(m: re.Match[str]) -> str:
        for i in (1, 4, 7):
            if m.group(i):
                return f"{m.group(i)}{prefix}{m.group(i + 1)}{m.group(i + 2)}"
        return m.group(0)  # pragma: no cover

    return _IDS.sub(rename, text).strip()
