"""Tensor -> row payload: statistics, flattened values, and walking nested structures.

The training thread calls :func:`capture`, which does only what cannot wait: a copy of a
small tensor (it may change in place later) or the statistics of a large one. The writer
thread calls :func:`finish` to turn that into column values.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

_EXACT_INT = 2**53  # float64 holds every integer up to this magnitude exactly
_ROW_OVERHEAD = 256  # rough bytes a row costs besides its values (queue accounting)
_MAX_DEPTH = 16
_COPY_FOR_STATS = 4096  # up to this many elements, copying beats computing stats in place


class Captured(NamedTuple):
    """What the training thread keeps of one tensor."""

    shape: tuple[int, ...]
    dtype: str
    numel: int
    stats: torch.Tensor | None  # float64 [mean, std, min, max, norm, nonfinite], large tensors
    values: torch.Tensor | None  # flattened CPU copy in the original dtype, small tensors
    nbytes: int
    keep: bool = True  # whether ``values`` go into the trace or only serve the statistics


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


class CopyPool:
    """Reusable CPU memory for the copies that wait in the writer's queue.

    A full capture copies every tensor it records, and the copy lives until a writer
    thread has encoded it. Fresh memory for each copy costs page faults on the training
    thread (a 4 MB copy takes 10× longer into new pages than into used ones) and leaves
    the allocator fragmented (allocated on one thread, freed on another). Copies of at
    least :data:`POOLED` elements come from here instead: each is a view of a block, and
    the block comes back to the pool when the view is garbage — when nothing, on any
    thread, can read it any more — so reuse is safe by construction. At most ``max_bytes``
    of free blocks are kept.
    """

    POOLED = 1 << 14
    # finish() hands NumPy a tensor's memory (``.numpy()`` references the storage, not the
    # tensor object) only for tensors of at most _COPY_FOR_STATS elements: never a pooled one

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: dict[tuple[torch.dtype, int], list[torch.Tensor]] = {}
        self._free_bytes = 0
        self._lock = threading.RLock()  # a finalizer may run inside empty() (garbage collection)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous CPU tensor (contents undefined).

        Use the returned object itself: a view made from it (``.view``, ``.reshape``)
        does not keep the block from going back to the pool.
        """
        numel = math.prod(shape)
        if numel < self.POOLED:
            return torch.empty(shape, dtype=dtype, device="cpu")  # whatever the default device
        key = (dtype, numel)
        with self._lock:
            blocks = self._free.get(key)
            block = blocks.pop() if blocks else None
            if block is not None:
                self._free_bytes -= block.nbytes
        if block is None:
            block = torch.empty(numel, dtype=dtype, device="cpu")
        view = block.view(shape)  # a new tensor object sharing the block's memory
        weakref.finalize(view, self._give_back, key, block).atexit = False
        return view

    def _give_back(self, key: tuple[torch.dtype, int], block: torch.Tensor) -> None:
        with self._lock:
            if self._free_bytes + block.nbytes <= self.max_bytes:
                blocks = self._free.get(key)
                if blocks is None:
                    blocks = self._free[key] = []
                blocks.append(block)
                self._free_bytes += block.nbytes


assert CopyPool.POOLED > _COPY_FOR_STATS


def capture(tensor: torch.Tensor, max_values: int | None, pool: CopyPool | None = None) -> Captured:
    """Snapshot ``tensor``: its values if it has at most ``max_values`` elements, else its stats.

    Copies come from ``pool`` when given (see :class:`CopyPool`)."""
    t = tensor.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    numel = t.numel()
    shape = tuple(t.shape)
    dtype = dtype_name(t.dtype)
    if t.device.type == "meta":
        return Captured(shape, dtype, numel, None, None, _ROW_OVERHEAD)
    keep = max_values is None or numel <= max_values
    if keep or (numel <= _COPY_FOR_STATS and t.device.type == "cpu"):
        # a small copy is cheaper than statistics here: the writer thread computes them
        if pool is None:
            values = torch.flatten(t).to("cpu", copy=True)
        else:
            values = pool.empty((numel,), t.dtype).copy_(t.reshape(-1))
        return Captured(shape, dtype, numel, None, values, _ROW_OVERHEAD + values.nbytes, keep)
    return Captured(shape, dtype, numel, _stats(t), None, _ROW_OVERHEAD)


def adopt(values: torch.Tensor, shape: tuple[int, ...]) -> Captured:
    """The row payload of a flat CPU tensor that tracer made itself and nothing else
    writes to (the float64 update of a parameter): kept as it is, not copied again."""
    return Captured(shape, dtype_name(values.dtype), values.numel(), None, values, _ROW_OVERHEAD + values.nbytes)


def _stats(t: torch.Tensor) -> torch.Tensor:
    """Statistics of a non-empty tensor, computed where it lives, as float64 [6]."""
    if t.is_complex():
        t = t.abs()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64 if not t.is_floating_point() else torch.float32)
    if t.device.type == "cpu":
        return _cpu_stats(t.reshape(-1))
    var, mean = torch.var_mean(t, correction=0)  # on an accelerator: no sync, one kernel
    lo, hi = torch.aminmax(t)
    nonfinite = torch.isfinite(t).logical_not_().sum()
    norm = torch.linalg.vector_norm(t)
    return torch.stack([mean, var.sqrt(), lo, hi, norm, nonfinite.to(t.dtype)]).to(torch.float64).cpu()


_BLOCK = 2048


def _cpu_stats(t: torch.Tensor) -> torch.Tensor:
    """``[mean, std, min, max, norm, nonfinite]`` from vectorised reductions.

    On CPU ``torch.var_mean`` (Welford, element by element) is ~15× slower than ``aminmax``,
    ``sum`` and ``vector_norm``; std = sqrt(E[x²] − mean²) instead, with a shifted second
    pass only where the mean dominates (cancellation).
    """
    n = t.numel()
    lo, hi = torch.aminmax(t)
    total, norm = _blocked(t)
    lo_, hi_, total_, norm_ = lo.item(), hi.item(), total.item(), norm.item()
    if not (math.isfinite(lo_) and math.isfinite(hi_) and math.isfinite(norm_)):
        nonfinite = int(torch.isfinite(t).logical_not_().sum())
        return torch.tensor([total_ / n, math.nan, lo_, hi_, norm_, nonfinite], dtype=torch.float64)
    mean = total_ / n
    mean_square = norm_ * norm_ / n
    var = mean_square - mean * mean
    if var <= 1e-3 * mean_square:
        s, q = _blocked(t - t.new_tensor(mean))
        var = q.item() ** 2 / n - (s.item() / n) ** 2
    return torch.tensor([mean, math.sqrt(max(var, 0.0)), lo_, hi_, norm_, 0.0], dtype=torch.float64)


def _blocked(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and L2 norm of a flat tensor in float64, at float32 speed: float32 partial
    results over blocks of 2048, combined in float64."""
    n = t.numel()
    m = n // _BLOCK * _BLOCK
    sums, norms = [], []
    if m:
        blocks = t[:m].view(-1, _BLOCK)
        sums.append(blocks.sum(1, dtype=t.dtype).double())
        norms.append(torch.linalg.vector_norm(blocks, dim=1).double())
    if m < n:
        sums.append(t[m:].sum(dtype=torch.float64).reshape(1))
        norms.append(torch.linalg.vector_norm(t[m:]).double().reshape(1))
    total = sums[0].sum() if len(sums) == 1 else torch.cat(sums).sum()
    norm = torch.linalg.vector_norm(norms[0] if len(norms) == 1 else torch.cat(norms))
    return total, norm


def finish(c: Captured) -> tuple[tuple[float | None, ...], np.ndarray | torch.Tensor | None]:
    """Writer side: ``(mean, std, min, max, norm, nonfinite)`` and the values to store, or None.

    The values are a float64 array, or for a large floating-point tensor the flat tensor
    itself: the writer converts it straight into its file buffer (one pass, no copy of
    its own).
    """
    if c.values is None:
        if c.stats is None:
            return (None,) * 6, None
        mean, std, lo, hi, norm, nonfinite = c.stats.tolist()
        return (mean, std, lo, hi, norm, int(nonfinite)), None
    v = c.values
    if v.is_complex():
        arr = v.abs().to(torch.float64).numpy()
        return _numpy_stats(arr), None  # complex values have no float64 column: stats of |z|
    if v.numel() > _COPY_FOR_STATS and v.is_floating_point():
        # large (full capture): vectorised float32 reductions, not six float64 numpy passes
        stats = _cpu_stats(v if v.dtype in (torch.float32, torch.float64) else v.float())
        mean, std, lo, hi, norm, nonfinite = stats.tolist()
        return (mean, std, lo, hi, norm, int(nonfinite)), v if c.keep else None
    arr = v.to(torch.float64).numpy()
    keep = arr if c.keep else None
    if keep is not None and not v.is_floating_point() and arr.size and np.abs(arr).max() > _EXACT_INT:
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
