"""Axes for :mod:`tracer._plot_draw`: ranges, round ticks and their labels, data → pixels.

>>> linear_ticks(0, 9, integer=True)
[0.0, 2.0, 4.0, 6.0, 8.0]
>>> [tick_text(v, log=True) for v in log_ticks(1e-4, 1.0)]
['10⁻⁴', '10⁻³', '10⁻²', '10⁻¹', '10⁰']
"""

from __future__ import annotations

import math

import numpy as np

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def nice(span: float, count: int = 5) -> float:
    """A round tick spacing (1, 2 or 5 × 10ⁿ) for about ``count`` ticks over ``span``."""
    raw = span / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if raw <= m * power)


def linear_ticks(lo: float, hi: float, *, integer: bool = False) -> list[float]:
    """Round ticks in [lo, hi]; whole numbers only with ``integer`` (steps).

    >>> linear_ticks(0, 9, integer=True)
    [0.0, 2.0, 4.0, 6.0, 8.0]
    >>> linear_ticks(3, 3, integer=True)
    [3.0]
    """
    if hi <= lo:
        return [float(lo)]
    step = nice(hi - lo)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    return [float(first + i * step) for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Decades in [lo, hi] (every k-th when there are many); 2 and 5 × 10ⁿ, or every
    multiple, when a decade or two is all there is.

    >>> log_ticks(1e-4, 1.0)
    [0.0001, 0.001, 0.01, 0.1, 1.0]
    >>> log_ticks(0.3, 0.8)
    [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    """
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))

    def within(ticks: list[float]) -> list[float]:
        return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]

    if b - a > 7:
        k = math.ceil((b - a + 1) / 6)
        return within([10.0**e for e in range(a, b + 1) if e % k == 0])
    for multiples in ((1,), (1, 2, 5), range(1, 10)):
        ticks = within([float(f"{m}e{e}") for e in range(a, b + 1) for m in multiples])
        if len(ticks) >= 3:
            return ticks
    return ticks or [lo]


def tick_text(value: float, *, log: bool = False, spacing: float = 0.0) -> str:
    """A tick label: ``0.25``, ``1500``, ``10⁻³``, ``2×10⁻⁵``.

    >>> [tick_text(v, log=True) for v in (1e-3, 2e-3, 1.0, 2e-5)]
    ['10⁻³', '0.002', '10⁰', '2×10⁻⁵']
    """
    if log or (value and (abs(value) >= 1e6 or abs(value) < 1e-4)):
        mantissa, exponent = f"{value:.1e}".split("e")
        power = "10" + str(int(exponent)).translate(_SUPERSCRIPT)
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        if log and mantissa != "1" and 1e-3 <= value < 1e4:
            return f"{value:g}"
        return power if mantissa == "1" else f"{mantissa}×{power}".replace("-", "−", 1)
    decimals = max(0, -math.floor(math.log10(spacing))) if spacing and spacing < 1 else 0
    return f"{value:.{decimals}f}".replace("-", "−")


class Scale:
    """Data → pixels on one axis (linear or log10)."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, *, log: bool = False, integer: bool = False) -> None:
        self.lo, self.hi, self.log, self.integer = lo, hi, log, integer
        a, b = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        self._a, self._k, self._p0 = a, (p1 - p0) / (b - a), p0

    def map(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.log10(np.where(v > 0, v, np.nan)) if self.log else v
        return self._p0 + (v - self._a) * self._k

    def __call__(self, v: float) -> float:
        return float(self.map(np.float64(v)))


def axis_range(values: np.ndarray, *, log: bool = False, pad: float = 0.05, least: float = 0.0) -> tuple[float, float]:
    """The axis range of ``values`` (padded), never empty: a single value gets room around it."""
    values = values[np.isfinite(values)] if values.size else values
    if log:
        values = values[values > 0]
        if not values.size:
            return 0.1, 10.0
        a, b = math.log10(values.min()), math.log10(values.max())
        a, b = (a - 0.5, b + 0.5) if b - a < 1e-9 else (a - pad * (b - a), b + pad * (b - a))
        return 10.0**a, 10.0**b
    if not values.size:
        return 0.0, 1.0
    a, b = float(values.min()), float(values.max())
    if b - a <= 1e-12 * max(abs(a), abs(b), 1e-300):
        room = least or (abs(a) * 0.1 or 1.0)
        return a - room, b + room
    return a - pad * (b - a), b + pad * (b - a)
