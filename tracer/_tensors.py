"""Tensor -> row payload: statistics, flattened values, and walking nested structures.

The training thread calls :func:`capture`, which does only what cannot wait: a copy of a
small tensor (it may change in place later) or the statistics of a large one. The writer
thread calls :func:`finish` to turn that into column values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

_EXACT_INT = 2**53  # float64 holds every integer up to this magnitude exactly
_ROW_OVERHEAD = 256  # rough bytes a row costs besides its values (queue accounting)
_MAX_DEPTH = 16


class Captured(NamedTuple):
    """What the training thread keeps of one tensor."""

    shape: tuple[int, ...]
    dtype: str
    numel: int
    stats: torch.Tensor | None  # float64 [mean, std, min, max, norm, nonfinite], large tensors
    values: torch.Tensor | None  # flattened CPU copy in the original dtype, small tensors
    nbytes: int


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def capture(tensor: torch.Tensor, max_values: int | None) -> Captured:
    """Snapshot ``tensor``: its values if it has at most ``max_values`` elements, else its stats."""
    t = tensor.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    numel = t.numel()
    shape = tuple(t.shape)
    dtype = dtype_name(t.dtype)
    if t.device.type == "meta":
        return Captured(shape, dtype, numel, None, None, _ROW_OVERHEAD)
    if max_values is None or numel <= max_values:
        values = torch.flatten(t).to("cpu", copy=True)
        return Captured(shape, dtype, numel, None, values, _ROW_OVERHEAD + values.nbytes)
    return Captured(shape, dtype, numel, _stats(t), None, _ROW_OVERHEAD)


def _stats(t: torch.Tensor) -> torch.Tensor:
    """Statistics of a non-empty tensor, computed where it lives, as float64 [6]."""
    if t.is_complex():
        t = t.abs()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64 if not t.is_floating_point() else torch.float32)
    var, mean = torch.var_mean(t, correction=0)
    lo, hi = torch.aminmax(t)
    stats = torch.stack([mean, var, lo, hi]).to(torch.float64)
    n = t.numel()
    norm = torch.sqrt(n * (stats[1] + stats[0] * stats[0]))  # no extra pass over the data
    if t.device.type == "cpu" and math.isfinite(stats[0].item()) and math.isfinite(stats[1].item()):
        nonfinite = torch.zeros((), dtype=torch.float64)
    else:
        nonfinite = torch.isfinite(t).logical_not_().sum().to(torch.float64)
        norm = torch.linalg.vector_norm(t).to(torch.float64)  # derived norm is unsafe here
    return torch.stack([stats[0], stats[1].sqrt(), stats[2], stats[3], norm, nonfinite]).cpu()


def finish(c: Captured) -> tuple[tuple[float | None, ...], np.ndarray | None]:
    """Writer side: ``(mean, std, min, max, norm, nonfinite)`` and the float64 values or None."""
    if c.values is None:
        if c.stats is None:
            return (None,) * 6, None
        mean, std, lo, hi, norm, nonfinite = c.stats.tolist()
        return (mean, std, lo, hi, norm, int(nonfinite)), None
    v = c.values
    if v.is_complex():
        arr = v.abs().to(torch.float64).numpy()
        return _numpy_stats(arr), None  # complex values have no float64 column: stats of |z|
    arr = v.to(torch.float64).numpy()
    keep = arr
    if not v.is_floating_point() and arr.size and np.abs(arr).max() > _EXACT_INT:
        keep = None  # an int64 beyond 2**53 has no exact float64: store no wrong values
    return _numpy_stats(arr), keep


def _numpy_stats(arr: np.ndarray) -> tuple[float | None, ...]:
    if arr.size == 0:
        return (None, None, None, None, 0.0, 0)
    with np.errstate(all="ignore"):
        finite = np.isfinite(arr)
        nonfinite = int(arr.size - np.count_nonzero(finite))
        return (
            float(arr.mean()),
            float(arr.std()),
            float(arr.min()),
            float(arr.max()),
            float(np.sqrt(np.dot(arr, arr))),
            nonfinite,
        )


def walk(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(part, tensor)`` for every tensor inside ``obj``; other leaves are skipped.

    Parts are dotted paths: list/tuple index, namedtuple field, dict key, dataclass field.

    >>> [p for p, _ in walk((torch.ones(1), (torch.ones(1), torch.ones(1))))]
    ['0', '1.0', '1.1']
    """
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
        return
    if depth >= _MAX_DEPTH:
        return
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        items: Any = zip(obj._fields, obj)
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif isinstance(obj, dict):
        items = obj.items()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    else:
        return
    for key, value in items:
        yield from walk(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)
