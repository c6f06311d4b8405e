"""Drawing for :mod:`tracer._plots`: charts written as SVG elements directly, no figure library.

Why not matplotlib's ``savefig``: five figures of a 10,000-step trace took about 2 s, nearly
all of it in tick and text layout; writing the few elements a chart needs takes milliseconds.
Long series stay small: a line never has more than :data:`MAX_POINTS` points (longer runs
are binned: the bin mean as the line, the bin's min–max as a band), and more than
:data:`MAX_LINES` layers become a heatmap (one inline PNG, coloured by matplotlib's
colormaps: the only part that imports matplotlib). Text stays text.

>>> chart = Chart(700, 320)                                       # doctest: +SKIP
>>> chart.lines(chart.box(), [Line(steps, loss, "loss")], title="Loss per step", ylabel="loss")  # doctest: +SKIP
>>> svg = chart.svg()                                             # doctest: +SKIP
"""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib.util
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tracer._errors import TracerError
from tracer._escape import escape_text
from tracer._plot_ticks import Scale, axis_range, linear_ticks, log_ticks, nice, tick_text

MAX_POINTS = 300
"""Most points of one line: longer series are binned to this many (about a plot's width in pixels)."""

MAX_LINES = 8
"""Most layers drawn as lines; more become a heatmap."""

INSTALL_HINT = "pip install 'torch-tracer[plots]'"

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
"""Line colours, in order (matplotlib's ``tab10``): series ``i`` is ``COLORS[i % 10]``."""

_FONT = 11  # px: tick labels and legend; titles and axis labels a little larger


class PlotsUnavailableError(TracerError, ImportError):
    """matplotlib is not installed, so plots cannot be drawn."""


def require_plots() -> None:
    """Raise :class:`PlotsUnavailableError` unless matplotlib can be imported (found, not imported)."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise PlotsUnavailableError(f"plots need matplotlib: {INSTALL_HINT}")


def label(name: str) -> str:
    """A module or layer name as a plot shows it (the root module is ``(model)``)."""
    return "(model)" if name == "" else name


def text_width(text: str, size: float = _FONT) -> float:
    """About how wide ``text`` is in pixels in a sans-serif font (for margins and legends)."""
    return 0.58 * size * len(text)


def _x(text: str) -> str:
    """Text as SVG character data: shown verbatim, on one line."""
    return html.escape(escape_text(text), quote=True)


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


# --------------------------------------------------------------------------- the chart


@dataclasses.dataclass
class Line:
    """One series: ``x`` (steps) and ``y``, drawn binned with its min–max band when long."""

    x: np.ndarray
    y: np.ndarray
    name: str
    color: str = COLORS[0]
    dashed: bool = False


@dataclasses.dataclass(frozen=True)
class Box:
    """A panel's plotting area, in pixels from the top left of the chart."""

    left: float
    top: float
    width: float
    height: float
    gutter: float = 48  # room left of the area for the tick labels


class Chart:
    """An SVG drawing of one or more panels; :meth:`svg` is the ``<svg>`` element."""

    def __init__(self, width: float = 700, height: float = 320) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, text: str, *, size: float = _FONT, anchor: str = "start", **attrs: Any) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>{_x(text)}</text>')

    def box(self, left: float = 0, top: float = 0, width: float | None = None, height: float | None = None,
            *, ylabels: float = 48, legend: float = 0) -> Box:  # fmt: skip
        """The plotting area of a panel placed at (left, top) of this size, leaving room for
        the title, the axis labels, ``ylabels`` pixels of tick labels and ``legend`` below."""
        width = self.width - left if width is None else width
        height = self.height - top if height is None else height
        inner_left = left + 22 + ylabels
        return Box(inner_left, top + 26, width - (inner_left - left) - 12, height - 26 - 42 - legend, ylabels)

    def svg(self) -> str:
        """The chart as one inline ``<svg>`` element: no ids, no stylesheet, nothing fetched."""
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width:.0f}" height="{self.height:.0f}" '
            f'viewBox="0 0 {self.width:.0f} {self.height:.0f}" font-family="system-ui,-apple-system,Segoe UI,'
            f'DejaVu Sans,sans-serif" fill="#1b1f24">'
        )
        return head + '<rect width="100%" height="100%" fill="#fff"/>' + "".join(self.parts) + "</svg>"

    # -- panels ----------------------------------------------------------------------
    def lines(
        self,
        box: Box,
        lines: Sequence[Line],
        *,
        title: str,
        ylabel: str,
        log: bool = False,
        guide: float | None = None,
        mark: tuple[float, str] | None = None,
        legend: bool = True,
    ) -> None:
        """A panel of lines over steps: axes, round ticks (whole steps), the lines with their
        bands, a dashed ``guide`` level, a dashed vertical ``mark`` (step, text), a legend below."""
        drawn = [
            (ln, *bins(np.asarray(ln.x, float), _positive(ln.y) if log else np.asarray(ln.y, float))) for ln in lines
        ]
        xs = np.concatenate([d[1] for d in drawn]) if drawn else np.zeros(0)
        ys = (
            [d[2] for d in drawn]
            + [d[3] for d in drawn if d[3] is not None]
            + [d[4] for d in drawn if d[4] is not None]
        )
        values = np.concatenate([np.asarray(y, float) for y in ys]) if ys else np.zeros(0)
        values = values[np.isfinite(values)]
        if guide is not None:
            values = np.append(values, guide)
        sx = Scale(*axis_range(xs[np.isfinite(xs)], pad=0.02, least=0.5), box.left, box.left + box.width, integer=True)
        lo, hi = axis_range(values, log=log)
        sy = Scale(lo, hi, box.top + box.height, box.top, log=log)
        self._axes(box, sx, sy, title, ylabel)
        if guide is not None:
            gy = sy(guide)
            self.add(f'<line x1="{box.left:.1f}" x2="{box.left + box.width:.1f}" y1="{gy:.1f}" y2="{gy:.1f}" '
                     'stroke="#888" stroke-width="1" stroke-dasharray="5 3"/>')  # fmt: skip
        for ln, x, y, low, high in drawn:
            px, py = sx.map(x), sy.map(y)
            if low is not None and high is not None:
                self._band(px, sy.map(low), sy.map(high), ln.color)
            dash = ' stroke-dasharray="6 3"' if ln.dashed else ""
            for a, b in _runs(np.isfinite(py)):
                pts = " ".join(f"{u:.1f},{v:.1f}" for u, v in zip(px[a:b], py[a:b]))
                self.add(f'<polyline points="{pts}" fill="none" stroke="{ln.color}" stroke-width="1.5"{dash}/>')
            if x.size <= 30:
                self.add("".join(f'<circle cx="{u:.1f}" cy="{v:.1f}" r="2.5" fill="{ln.color}"/>'
                                 for u, v in zip(px, py) if math.isfinite(v)))  # fmt: skip
        if mark is not None:
            mx = sx(mark[0])
            self.add(f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{box.top:.1f}" y2="{box.top + box.height:.1f}" '
                     f'stroke="{COLORS[3]}" stroke-width="1" stroke-dasharray="4 3"/>')  # fmt: skip
            self.text(mx + 4, box.top + 12, mark[1], fill=COLORS[3])
        if legend and lines:
            self.legend(box, [(ln.name, ln.color, ln.dashed) for ln in lines])

    def legend(self, box: Box, entries: Sequence[tuple[str, str, bool]]) -> None:
        """Entries (name, colour, dashed) flowed in rows under the panel's x-axis label."""
        x, y = box.left, box.top + box.height + 52
        for name, color, dashed in entries:
            width = 28 + text_width(name)
            if x > box.left and x + width > box.left + box.width:
                x, y = box.left, y + 16
            dash = ' stroke-dasharray="6 3"' if dashed else ""
            self.add(f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y - 4:.1f}" y2="{y - 4:.1f}" '
                     f'stroke="{color}" stroke-width="2"{dash}/>')  # fmt: skip
            self.text(x + 22, y, name)
            x += width + 12

    @staticmethod
    def legend_height(entries: Sequence[str], width: float) -> float:
        """The height :meth:`legend` needs for these names in a panel ``width`` wide."""
        rows, x = 1, 0.0
        for name in entries:
            w = 28 + text_width(name)
            if x and x + w > width:
                rows, x = rows + 1, 0.0
            x += w + 12
        return 16.0 * rows + 8

    def heatmap(self, box: Box, data: np.ndarray, steps: np.ndarray, labels: Sequence[str], *, title: str,
                what: str, log: bool, cmap: str = "viridis") -> None:  # fmt: skip
        """Rows (layers) × steps (binned to MAX_POINTS) as one PNG image, with a colour bar."""
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.where(data > 0, np.log10(data), np.nan) if log else np.asarray(data, float)
        data = np.where(np.isfinite(data), data, np.nan)
        if data.shape[1] > MAX_POINTS:
            edges = np.linspace(0, data.shape[1], MAX_POINTS + 1).astype(int)[:-1]
            counts = np.add.reduceat(np.isfinite(data), edges, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                data = np.add.reduceat(np.nan_to_num(data), edges, axis=1) / np.where(counts, counts, np.nan)
        finite = data[np.isfinite(data)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        bar = Box(box.left + box.width + 10, box.top, 12, box.height)
        self._image(box, _colours((data - lo) / (hi - lo), cmap))
        self._image(bar, _colours(np.linspace(1, 0, 64)[:, None], cmap))
        sx = Scale(float(steps[0]) - 0.5, float(steps[-1]) + 0.5, box.left, box.left + box.width, integer=True)
        self._frame(box)
        self._xticks(box, sx)
        row = box.height / len(labels)
        for i, name in enumerate(labels):
            self.text(box.left - 5, box.top + (i + 0.5) * row + 3.5, name, size=9, anchor="end")
        sb = Scale(lo, hi, bar.top + bar.height, bar.top)
        for t in linear_ticks(lo, hi):
            self.text(bar.left + 16, sb(t) + 3.5, tick_text(t, spacing=nice(hi - lo)), size=9)
        self.text(box.left + box.width / 2, box.top - 9, title, size=13, anchor="middle", font_weight="600")
        self.text(bar.left + 6, bar.top - 6, f"log10 {what}" if log else what, size=9, anchor="middle")
        self.text(box.left + box.width / 2, box.top + box.height + 34, "step", size=12, anchor="middle")

    def bars(self, box: Box, edges: np.ndarray, counts: np.ndarray, *, title: str, xlabel: str) -> None:
        """A histogram: ``counts`` between consecutive ``edges``."""
        sx = Scale(*axis_range(edges, pad=0.0, least=0.5), box.left, box.left + box.width)
        sy = Scale(0.0, float(max(counts.max(), 1)) * 1.05, box.top + box.height, box.top)
        self._axes(box, sx, sy, title, "count", xlabel=xlabel, integer_x=False, title_size=11)
        base = sy(0.0)
        self.add("".join(
            f'<rect x="{sx(a):.2f}" y="{sy(c):.2f}" width="{max(sx(b) - sx(a), 0.5):.2f}" height="{base - sy(c):.2f}" '
            f'fill="{COLORS[0]}"/>' for a, b, c in zip(edges[:-1], edges[1:], counts) if c
        ))  # fmt: skip

    # -- pieces ----------------------------------------------------------------------
    def _axes(self, box: Box, sx: Scale, sy: Scale, title: str, ylabel: str, *, xlabel: str = "step",
              integer_x: bool = True, title_size: float = 13) -> None:  # fmt: skip
        self._frame(box)
        self._xticks(box, sx)
        yt = log_ticks(sy.lo, sy.hi) if sy.log else linear_ticks(sy.lo, sy.hi)
        spacing = 0.0 if sy.log else (yt[1] - yt[0] if len(yt) > 1 else abs(yt[0]) or 1.0)
        for t in yt:
            y = sy(t)
            self.add(
                f'<line x1="{box.left:.1f}" x2="{box.left + box.width:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
            )
            self.text(box.left - 5, y + 4, tick_text(t, log=sy.log, spacing=spacing), anchor="end")
        self.text(box.left + box.width / 2, box.top - 9, title, size=title_size, anchor="middle", font_weight="600")
        self.text(box.left + box.width / 2, box.top + box.height + 34, xlabel, size=12, anchor="middle")
        cy = box.top + box.height / 2
        x = box.left - box.gutter - 8
        self.text(x, cy, ylabel, size=12, anchor="middle", transform=f"rotate(-90 {x:.1f} {cy:.1f})")

    def _frame(self, box: Box) -> None:
        b = box.top + box.height
        self.add(
            f'<path d="M{box.left:.1f},{box.top:.1f}V{b:.1f}H{box.left + box.width:.1f}" fill="none" stroke="#57606a"/>'
        )

    def _xticks(self, box: Box, sx: Scale) -> None:
        ticks = (
            linear_ticks(math.ceil(sx.lo), math.floor(sx.hi), integer=True)
            if sx.integer
            else linear_ticks(sx.lo, sx.hi)
        )
        spacing = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        b = box.top + box.height
        for t in ticks:
            x = sx(t)
            self.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{b:.1f}" y2="{b + 4:.1f}" stroke="#57606a"/>')
            self.text(x, b + 16, tick_text(t, spacing=spacing), anchor="middle")

    def _band(self, px: np.ndarray, low: np.ndarray, high: np.ndarray, color: str) -> None:
        for a, c in _runs(np.isfinite(low) & np.isfinite(high)):
            pts = [f"{u:.1f},{v:.1f}" for u, v in zip(px[a:c], high[a:c])]
            pts += [f"{u:.1f},{v:.1f}" for u, v in zip(px[a:c][::-1], low[a:c][::-1])]
            self.add(f'<polygon points="{" ".join(pts)}" fill="{color}" fill-opacity="0.2"/>')

    def _image(self, box: Box, rgba: np.ndarray) -> None:
        uri = "data:image/png;base64," + base64.b64encode(png(rgba)).decode("ascii")
        self.add(f'<image x="{box.left:.1f}" y="{box.top:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" '
                 f'preserveAspectRatio="none" style="image-rendering:pixelated" href="{uri}"/>')  # fmt: skip


def _positive(y: np.ndarray) -> np.ndarray:
    """A log axis shows positive values only: the others are gaps."""
    y = np.asarray(y, dtype=float)
    return np.where(y > 0, y, np.nan)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _colours(unit: np.ndarray, cmap: str) -> np.ndarray:
    """RGBA bytes of values in [0, 1] through a matplotlib colormap; NaN is transparent."""
    require_plots()
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.nan_to_num(np.clip(unit, 0, 1)), bytes=True)
    rgba[~np.isfinite(unit)] = 0
    return rgba


def png(rgba: np.ndarray) -> bytes:
    """An RGBA uint8 array (rows × columns × 4) as PNG bytes."""
    rows, columns = rgba.shape[:2]
    raw = b"".join(b"\x00" + bytes(row) for row in np.ascontiguousarray(rgba, dtype=np.uint8))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", columns, rows, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
