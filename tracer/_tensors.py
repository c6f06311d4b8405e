"""Tensor -> row payload: statistics or a flattened copy (walking structures: :mod:`tracer._walk`).

The training thread calls :func:`capture`, which does only what cannot wait: a copy of a
small tensor (it may change in place later) or the statistics of a large one. The writer
thread calls :func:`finish` to turn that into column values.

What a row holds, by kind of tensor. ``capture`` never changes the tensor and draws no
random numbers; where nothing honest can be recorded it raises :class:`Unreadable`, whose
``reason`` says why in one sentence (the hook layer warns once and skips the row). The
schema has no layout column: a sparse or nested tensor shows up as the dense or
concatenated tensor described here.

Strided real tensors keep float64 values (exact; an integer beyond 2**53 keeps statistics
only); complex ones interleave real and imaginary parts, statistics of |z|; quantized ones
are recorded dequantized; sparse ones as their dense tensor (statistics from the stored
entries when large); nested ones as their components concatenated; ``FakeTensor``,
``__torch_dispatch__`` subclasses and raw-bit dtypes are :class:`Unreadable`. The rule for
each kind is in the README ("What a row holds for each kind of tensor") and tested in
``tests/test_tensors.py``.

Active ``TorchDispatchMode``s (``FakeTensorMode``, ``FlopCounterMode``, ...) and functorch
transforms are switched off while a tensor is read: tracer's own work is not counted,
faked or transformed.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils._python_dispatch import _disable_current_modes

from tracer._copy_pool import CopyPool
from tracer._stats import _GRAIN, _cpu_stats, _diff_stats, _numpy_stats, _stats, _with_zeros, serial

_EXACT_INT = 2**53  # float64 holds every integer up to this magnitude exactly
_ROW_OVERHEAD = 256  # rough bytes a row costs besides its values (queue accounting)
_MAX_DEPTH = 16
_COPY_FOR_STATS = 4096  # up to this many elements, copying beats computing stats in place
_SPARSE = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)
_functorch = torch._C._functorch
_transforms_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack


class Unreadable(Exception):
    """:func:`capture` cannot record this tensor; ``reason`` says why, in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Captured(NamedTuple):
    """What the training thread keeps of one tensor."""

    shape: tuple[int, ...]
    dtype: str
    numel: int
    stats: torch.Tensor | None  # float64 [mean, std, min, max, norm, nonfinite], large tensors
    values: torch.Tensor | None  # flattened CPU copy (a dtype of _PLAIN), small tensors
    nbytes: int
    keep: bool = True  # whether ``values`` go into the trace or only serve the statistics
    ready: Any = None  # a CUDA event: ``stats``/``values`` are being copied to host until it completes


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


# the dtypes whose strided tensors take the direct path (and the only dtypes of
# ``Captured.values``): float64 holds every value of them exactly (2 of them for complex)
_PLAIN: dict[torch.dtype, str] = {
    dtype: dtype_name(dtype)
    for dtype in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.complex128,
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    )
}  # fmt: skip
_NEWER = (
    "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
)  # fmt: skip
for _name in _NEWER:
    if isinstance(getattr(torch, _name, None), torch.dtype):  # newer dtypes: not in every torch
        _PLAIN[getattr(torch, _name)] = _name


assert CopyPool.POOLED > _COPY_FOR_STATS


def capture(tensor: torch.Tensor, max_values: int | None, pool: CopyPool | None = None) -> Captured:
    """Snapshot ``tensor``: its values if it has at most ``max_values`` elements, else its stats.

    Copies come from ``pool`` when given (see :class:`CopyPool`). Raises :class:`Unreadable`
    for a tensor that cannot be recorded (see the module docstring for each kind).
    """
    if _dispatch_modes() or _transforms_active():  # before any op: they would see it
        return _capture_unusual(tensor, max_values, pool)
    try:
        t = tensor.detach()
        dtype = _PLAIN.get(t.dtype)
        if not (
            dtype is None or type(t) is not torch.Tensor or t.layout is not torch.strided or t.is_nested or t.is_meta
        ):
            return _snapshot(t, tuple(t.shape), dtype, t.numel(), max_values, pool)
    except RuntimeError:
        if not _functorch.is_functorch_wrapped_tensor(tensor):
            raise
        t = tensor  # a vmap tensor that escaped its vmap: torch refuses even detach() of it
    return _capture_unusual(t, max_values, pool)


def adopt(values: torch.Tensor, shape: tuple[int, ...]) -> Captured:
    """The row payload of a flat CPU tensor that tracer made itself and nothing else
    writes to (the float64 or complex128 update of a parameter): kept as it is, not
    copied again."""
    return Captured(shape, dtype_name(values.dtype), values.numel(), None, values, _ROW_OVERHEAD + values.nbytes)


def difference_stats(after: torch.Tensor, before: torch.Tensor) -> Captured | None:
    """The row payload of the statistics of ``after − before`` (subtracted in their dtype),
    read in one pass of both, never written; None where that pass cannot read them (no
    numba, not float32/float64 CPU, not contiguous, a dispatch mode or transform active) or
    a copy is cheaper (<= 4096 elements): then :func:`capture` the difference. Example::

        c = difference_stats(p.detach(), snapshot)  # after optimizer.step()
    """
    if after.numel() <= _COPY_FOR_STATS or _dispatch_modes() or _transforms_active():
        return None
    stats = _diff_stats(after, before) if type(after) is type(before) is torch.Tensor else None
    if stats is None:
        return None
    return Captured(tuple(after.shape), dtype_name(after.dtype), after.numel(), stats, None, _ROW_OVERHEAD)


def _snapshot(
    t: torch.Tensor,
    shape: tuple[int, ...],
    dtype: str,
    numel: int,
    max_values: int | None,
    pool: CopyPool | None,
    fresh: bool = False,
) -> Captured:
    """A strided tensor ``t`` of a dtype in :data:`_PLAIN` with ``numel`` elements, recorded
    as ``shape`` and ``dtype``; ``fresh``: made by tracer, so a CPU one needs no copy."""
    keep = max_values is None or numel <= max_values
    if keep or (numel <= _COPY_FOR_STATS and t.is_cpu):
        # a small copy is cheaper than statistics here: the writer thread computes them
        if fresh and t.is_cpu:
            values = t.reshape(-1)
        elif t.device.type == "cuda":  # no sync: the writer waits for the copy
            values, ready = host_copy(t.reshape(-1))
            return Captured(shape, dtype, numel, None, values, _ROW_OVERHEAD + values.nbytes, keep, ready)
        else:  # serial: a parallel CPU copy waits for a second core, on a busy machine for ms
            with serial() if t.is_cpu and numel >= _GRAIN else contextlib.nullcontext():
                if pool is None:
                    values = torch.flatten(t).to("cpu", copy=True)
                else:
                    values = pool.empty((numel,), t.dtype).copy_(t.reshape(-1))
        return Captured(shape, dtype, numel, None, values, _ROW_OVERHEAD + values.nbytes, keep)
    stats = _stats(t)
    if stats.is_cpu:
        return Captured(shape, dtype, numel, stats, None, _ROW_OVERHEAD)
    host, ready = host_copy(stats) if stats.device.type == "cuda" else (stats.cpu(), None)
    return Captured(shape, dtype, numel, host, None, _ROW_OVERHEAD, True, ready)


def host_copy(t: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``t`` (on a CUDA device) copied into pinned host memory without waiting, and the CUDA
    event (recorded on the current stream) after which the copy may be read: the writer
    thread waits on it, the training thread never does."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def _capture_unusual(t: torch.Tensor, max_values: int | None, pool: CopyPool | None) -> Captured:
    """Everything but a plain strided tensor read with no transform or dispatch mode active."""
    with contextlib.ExitStack() as stack:
        if _dispatch_modes():
            stack.enter_context(_disable_current_modes())
        order = None
        if _transforms_active() or _functorch.is_functorch_wrapped_tensor(t):
            t, order = _unwrap_functorch(t)  # with the transforms on: they own the wrappers
            stack.enter_context(torch._C._DisableFuncTorch())  # else results of plain tensors get wrapped
        t = t.detach()
        if order is not None:
            t = t.permute(order)
        if t.is_nested:
            return _nested(t, max_values, pool)
        if type(t) is not torch.Tensor:
            t = _plain_subclass(t)
        if t.layout in _SPARSE:
            return _sparse(t, max_values, pool)
        if t.layout is not torch.strided:  # mkldnn: dense, in a blocked memory format
            return _data(t.to_dense(), tuple(t.shape), t.numel(), max_values, pool, fresh=True)
        return _data(t, tuple(t.shape), t.numel(), max_values, pool)


def _unwrap_functorch(t: torch.Tensor) -> tuple[torch.Tensor, list[int] | None]:
    """The plain tensor inside functorch wrappers, and the permutation of its dimensions
    that puts the batch dimensions of vmap first, outermost vmap first (None: no vmap)."""
    labels = list(range(t.dim()))  # what each dimension is: >= 0 the tensor's own, < 0 a batch
    batches = 0
    while _functorch.is_functorch_wrapped_tensor(t):
        if _functorch.is_batchedtensor(t):
            t, bdim = _functorch._unwrap_batched(t, _functorch.maybe_get_level(t))
            batches += 1  # wrappers come innermost transform first
            labels.insert(int(bdim or 0), -batches)
        elif _functorch.is_functionaltensor(t):
            torch._sync(t)  # pending updates of views applied to the wrapper, as any op on it would
            t = torch._from_functional_tensor(t)
        else:  # grad, vjp, jvp, jacrev, jacfwd: a wrapper of the same values
            t = _functorch.get_unwrapped(t)
    if not batches:
        return t, None
    order = [labels.index(-b) for b in range(batches, 0, -1)]
    return t, order + [labels.index(d) for d in range(len(labels) - batches)]


def _plain_subclass(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor of a subclass that keeps its values in its own storage."""
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(t, FakeTensor):
        raise Unreadable("a FakeTensor (torch.compile or FakeTensorMode tracing) has a shape and dtype but no values")
    if type(t).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
        raise Unreadable(
            f"a {type(t).__qualname__} is a tensor subclass with its own __torch_dispatch__, whose values "
            "are not in a plain tensor that tracer can read (record its plain tensor instead, e.g. "
            "DTensor.to_local())"
        )
    with torch._C.DisableTorchFunctionSubclass():
        return t.as_subclass(torch.Tensor)


def _data(
    t: torch.Tensor,
    shape: tuple[int, ...],
    numel: int,
    max_values: int | None,
    pool: CopyPool | None,
    fresh: bool = False,
) -> Captured:
    """A strided tensor of any dtype, recorded as ``shape`` with ``numel`` elements."""
    if t.is_meta:
        return Captured(shape, dtype_name(t.dtype), numel, None, None, _ROW_OVERHEAD)
    t, dtype, made = _readable(t)
    return _snapshot(t, shape, dtype, numel, max_values, pool, fresh or made)


def _readable(t: torch.Tensor) -> tuple[torch.Tensor, str, bool]:
    """``t`` in a dtype of :data:`_PLAIN` with the same numbers, the dtype to record, and
    whether the tensor is a new one."""
    dtype = _PLAIN.get(t.dtype)
    if dtype is not None:
        return t, dtype, False
    if t.is_quantized:
        return t.dequantize(), dtype_name(t.dtype), True
    if t.dtype is torch.complex32:
        return t.to(torch.complex64), "complex32", True  # exact; few ops exist for complex32
    if t.is_floating_point() or t.is_complex():  # a floating-point dtype newer than this list
        try:
            return t.to(torch.complex128 if t.is_complex() else torch.float64), dtype_name(t.dtype), True
        except RuntimeError:  # no conversion (float4_e2m1fn_x2: two packed 4-bit floats a byte)
            pass
    raise Unreadable(
        f"{dtype_name(t.dtype)} holds raw bits that torch has no arithmetic or conversion for, "
        "so there are no numbers to record"
    )


def _nested(t: torch.Tensor, max_values: int | None, pool: CopyPool | None) -> Captured:
    """A nested tensor as its components concatenated along their first dimension."""
    if t.layout is torch.jagged and t.is_contiguous() and getattr(t, "_ragged_idx", None) == 1:
        data = t.values()  # (n_0 + n_1 + ..., *rest) already: no copy
        return _data(data, tuple(data.shape), data.numel(), max_values, pool)
    if t.layout is torch.strided and t.is_contiguous():
        data = t.values()  # the buffer: the components one after another
        shape = _concatenated(t._nested_tensor_size().tolist())
        if data.numel() == math.prod(shape):
            return _data(data, shape, data.numel(), max_values, pool)
    parts = t.unbind()
    shape = _concatenated([list(p.shape) for p in parts])
    if parts:
        data = torch.cat([p.reshape(-1) for p in parts])
    else:
        data = torch.empty(0, dtype=t.dtype, device=t.device)
    return _data(data, shape, data.numel(), max_values, pool, fresh=True)


def _concatenated(sizes: list[list[int]]) -> tuple[int, ...]:
    """The shape of components of these sizes concatenated along their first dimension,
    or flattened and concatenated where they disagree past it."""
    if sizes and all(len(s) >= 1 and s[1:] == sizes[0][1:] for s in sizes):
        return (sum(s[0] for s in sizes), *sizes[0][1:])
    return (sum(math.prod(s) for s in sizes),)


def _sparse(t: torch.Tensor, max_values: int | None, pool: CopyPool | None) -> Captured:
    """A sparse tensor as its dense form: values when small enough, else statistics from the
    stored entries (not densified)."""
    shape = tuple(t.shape)
    numel = math.prod(shape)
    if t.is_meta:
        return Captured(shape, dtype_name(t.dtype), numel, None, None, _ROW_OVERHEAD)
    if max_values is None or numel <= max_values:
        return _data(t.to_dense(), shape, numel, max_values, pool, fresh=True)
    if t.layout is torch.sparse_coo:
        stored = (t if t.is_coalesced() else t.coalesce())._values()  # a duplicate entry is a sum
    else:
        stored = t.values()
    stored, dtype, _ = _readable(stored)
    return Captured(shape, dtype, numel, _with_zeros(stored, numel), None, _ROW_OVERHEAD)


def finish(c: Captured) -> tuple[tuple[float | None, ...], np.ndarray | torch.Tensor | None]:
    """Writer side: ``(mean, std, min, max, norm, nonfinite)`` and the values to store, or None.

    The values are a float64 array, or for a large floating-point or complex tensor a flat
    floating-point tensor: the writer converts it straight into its file buffer (one pass,
    no copy of its own). A complex tensor's values are its real and imaginary parts
    interleaved (twice ``numel`` floats), its statistics those of |z|.
    """
    if c.ready is not None:
        c.ready.synchronize()  # the host copy of a CUDA tensor (this thread waits, not training)
    if c.values is None:
        if c.stats is None:
            return (None,) * 6, None
        mean, std, lo, hi, norm, nonfinite = c.stats.tolist()
        return (mean, std, lo, hi, norm, int(nonfinite)), None
    v = c.values
    if v.is_complex():
        return _finish_complex(v, c.keep)
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


def _finish_complex(v: torch.Tensor, keep: bool) -> tuple[tuple[float | None, ...], np.ndarray | torch.Tensor | None]:
    """Statistics of |z| and the interleaved ``[re0, im0, re1, im1, ...]`` of a flat complex tensor."""
    if v.numel() > _COPY_FOR_STATS:
        mean, std, lo, hi, norm, nonfinite = _stats(v).tolist()
        return (mean, std, lo, hi, norm, int(nonfinite)), torch.view_as_real(v).reshape(-1) if keep else None
    z = v.to(torch.complex128).numpy()
    with np.errstate(all="ignore"):
        stats = _numpy_stats(np.abs(z))  # |z| in float64: exact to rounding (hypot)
        nonfinite = int(z.size - np.count_nonzero(np.isfinite(z)))  # a NaN or Inf part
    return (*stats[:5], nonfinite), z.view(np.float64) if keep else None
