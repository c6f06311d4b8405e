"""Tolerances of every comparison in tracer: ``torch.testing.assert_close``'s, per dtype.

>>> tolerances("float32")
(1.3e-06, 1e-05)
>>> tolerances("float32", "float64", atol=0.0)
(1.3e-06, 0.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

# torch.testing's defaults, used only when its private table cannot be imported
_FALLBACK_TOLERANCES = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex32": (1e-3, 1e-5),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}


def tolerances(*dtypes: str, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    """``(rtol, atol)``: the given ones, else ``torch.testing.assert_close``'s defaults.

    With several dtypes the loosest default wins, as ``assert_close`` does for two inputs of
    different dtypes. Giving only one of ``rtol``/``atol`` keeps the default of the other.
    """
    if rtol is not None and atol is not None:
        return float(rtol), float(atol)
    default_rtol, default_atol = _default_tolerances(tuple(sorted(set(dtypes))))
    return (
        default_rtol if rtol is None else float(rtol),
        default_atol if atol is None else float(atol),
    )


_tolerance_cache: dict[tuple[str, ...], tuple[float, float]] = {}


def _default_tolerances(dtypes: tuple[str, ...]) -> tuple[float, float]:
    cached = _tolerance_cache.get(dtypes)
    if cached is not None:
        return cached
    import torch

    torch_dtypes = [d for d in (getattr(torch, name, None) for name in dtypes) if isinstance(d, torch.dtype)]
    try:  # reuse torch.testing's own table rather than copying it
        from torch.testing._comparison import default_tolerances

        result = default_tolerances(*torch_dtypes) if torch_dtypes else (0.0, 0.0)
    except (ImportError, TypeError, ValueError):
        pairs = [_FALLBACK_TOLERANCES.get(name, (0.0, 0.0)) for name in dtypes]
        result = (max((p[0] for p in pairs), default=0.0), max((p[1] for p in pairs), default=0.0))
    _tolerance_cache[dtypes] = (float(result[0]), float(result[1]))
    return _tolerance_cache[dtypes]


def close(a: np.ndarray, b: np.ndarray, rtol: Any, atol: Any) -> np.ndarray:
    """``torch.isclose`` elementwise (``|a - b| <= atol + rtol·|b|``), NaN equal to NaN."""
    with np.errstate(all="ignore"):
        return (a == b) | (np.abs(a - b) <= atol + rtol * np.abs(b)) | (np.isnan(a) & np.isnan(b))
