"""Statistics of a tensor — ``[mean, std, min, max, norm, nonfinite]`` as float64 — computed
where it lives: on CPU in one read of the tensor by a numba kernel when numba is installed
(else vectorised reductions), one kernel each on an accelerator, NumPy for the small copies
a writer thread holds.

On CPU tracer's reductions run on the calling thread alone (:func:`serial`): torch's
parallel reductions wait for a second core, which on a busy machine costs milliseconds
per tensor; the user's thread setting is back before any of their code runs.

    >>> _stats(torch.tensor([1.0, 2.0, 3.0])).tolist()[:5]  # doctest: +SKIP
    [2.0, 0.816496580927726, 1.0, 3.0, 3.7416573867739413]
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

_BLOCK = 2048
_GRAIN = 32768  # at::internal::GRAIN_SIZE: torch runs smaller ops on the calling thread anyway
_CANCELS = 1e-3  # var <= this × mean square: E[x²] − mean² lost digits, shift and redo
_ONE_PASS = (torch.float32, torch.float64)  # the dtypes the one-pass kernels read
# below this largest magnitude the squares lose digits to underflow in the accumulators
_TINY = {torch.float32: 1e-15, torch.float64: 1e-140}


def _omp() -> Any:
    """``omp_set_num_threads`` of the OpenMP runtime torch runs its parallel ops on, or None."""
    try:
        fn = ctypes.CDLL(None).omp_set_num_threads
        fn.argtypes = [ctypes.c_int]
        fn.restype = None
    except (AttributeError, OSError, TypeError):  # no OpenMP in torch, or no global symbol table
        return None
    return fn


_set_threads: Any = _omp() if "OpenMP" in torch.__config__.parallel_info() else None
_checked = False  # whether _set_threads was seen to change torch's count


@contextlib.contextmanager
def serial() -> Iterator[None]:
    """Torch's CPU ops on this thread use one thread inside the block, as before after it.

    OpenMP keeps the thread count per thread, so this changes no other thread (unlike
    ``torch.set_num_threads``, which also resizes global pools and clears oneDNN's cache).

        >>> with serial():
        ...     torch.get_num_threads()
        1
    """
    global _set_threads, _checked
    fn = _set_threads
    n = torch.get_num_threads() if fn is not None else 1  # first: torch's per-thread initialisation
    if n <= 1:
        yield
        return
    fn(1)
    try:
        if not _checked:
            _checked = True
            if torch.get_num_threads() != 1:  # another OpenMP runtime than torch's: leave it alone
                _set_threads = None
        yield
    finally:
        fn(n)


def _stats(t: torch.Tensor) -> torch.Tensor:
    """Statistics of a non-empty tensor, computed where it lives, as float64 [6]; of |z| for
    a complex one, with ``nonfinite`` the elements that have a NaN or Inf part."""
    if t.is_cpu and t.numel() >= _GRAIN:
        with serial():
            return _any_stats(t)
    return _any_stats(t)


def _any_stats(t: torch.Tensor) -> torch.Tensor:
    if t.is_complex():
        stats = _any_stats(t.abs())
        nonfinite = torch.isfinite(t).logical_not_().sum()  # |z| overflows for some finite z
        return torch.cat([stats[:5], nonfinite.to(dtype=torch.float64).reshape(1)])
    if t.dtype not in _ONE_PASS:
        t = t.to(torch.float64 if not t.is_floating_point() else torch.float32)
    if t.is_cpu:
        return _cpu_stats(t.reshape(-1))
    var, mean = torch.var_mean(t, correction=0)  # on an accelerator: no sync, one kernel
    lo, hi = torch.aminmax(t)
    nonfinite = torch.isfinite(t).logical_not_().sum()
    norm = torch.linalg.vector_norm(t)
    # stays on the device: no host sync here (the capture copies it to host without waiting)
    return torch.stack([mean, var.sqrt(), lo, hi, norm, nonfinite.to(t.dtype)]).to(torch.float64)


def _cpu_stats(t: torch.Tensor) -> torch.Tensor:
    """``[mean, std, min, max, norm, nonfinite]`` of a flat, non-empty float32 or float64
    CPU tensor, read once when the numba kernels are there, else by three reductions.

    std = sqrt(E[x²] − mean²), with a shifted second pass only where the mean dominates
    (cancellation); non-finite or huge values go to :func:`_exact_stats`.
    """
    kernels = _kernels()
    if kernels is not None and t.is_contiguous():  # numba's loop: no torch threads to wait for
        lo, hi, total, square = kernels.one_pass(_numpy(t))
        return _finish(
            t.numel(), t.dtype, float(lo), float(hi), total, square, lambda m: kernels.shifted(_numpy(t), m), t
        )
    with serial() if t.numel() >= _GRAIN else contextlib.nullcontext():
        lo_t, hi_t = torch.aminmax(t)
        total_t, norm_t = _blocked(t)
        norm = norm_t.item()
        return _finish(t.numel(), t.dtype, lo_t.item(), hi_t.item(), total_t.item(), norm * norm, _shifted(t), t)


def _diff_stats(after: torch.Tensor, before: torch.Tensor) -> torch.Tensor | None:
    """Statistics of ``after − before`` (taken in their dtype) in one read of both, without
    writing the difference; None where no one-pass kernel reads them (numba missing, not
    float32/float64 on CPU, not contiguous): compute the difference and its :func:`_stats`."""
    if not (after.is_cpu and before.is_cpu and after.dtype in _ONE_PASS and before.dtype is after.dtype):
        return None
    if not (after.is_contiguous() and before.is_contiguous() and after.numel() == before.numel() > 0):
        return None
    kernels = _kernels()
    if kernels is None:
        return None
    a, b = _numpy(after.reshape(-1)), _numpy(before.reshape(-1))
    lo, hi, total, square = kernels.diff_pass(a, b)
    return _finish(
        after.numel(), after.dtype, float(lo), float(hi), total, square, lambda m: kernels.diff_shifted(a, b, m),
        lambda: after.reshape(-1) - before.reshape(-1),
    )  # fmt: skip


def _finish(
    n: int, dtype: torch.dtype, lo: float, hi: float, total: float, square: float, shifted: Any, data: Any
) -> torch.Tensor:
    """The row from one pass's min, max, sum and sum of squares; ``shifted(m)`` gives
    Σ(x − m) and Σ(x − m)², ``data`` the tensor (or a function making it) for the rare
    exact path."""
    finite = math.isfinite(square)
    if finite and lo == hi == 0.0:
        return torch.zeros(6, dtype=torch.float64)
    if not finite or max(-lo, hi) < _TINY[dtype]:  # NaN/Inf; squares past the range
        with serial():
            return _exact_stats(data() if callable(data) else data)
    mean = total / n
    mean_square = square / n
    var = mean_square - mean * mean
    if var <= _CANCELS * mean_square:
        s, q = shifted(mean)
        var = q / n - (s / n) ** 2
    return torch.tensor([mean, math.sqrt(max(var, 0.0)), lo, hi, math.sqrt(square), 0.0], dtype=torch.float64)


def _exact_stats(t: torch.Tensor) -> torch.Tensor:
    """The statistics of a flat float tensor in float64, scaled by its largest magnitude so
    that no finite value overflows; with NaN or Inf: mean and norm as float64 sums give
    them, std NaN, min and max as ``torch.aminmax`` gives them (NaN first)."""
    x = t.to(torch.float64)
    n = x.numel()
    nonfinite = int(torch.isfinite(x).logical_not_().sum())
    lo, hi = (v.item() for v in torch.aminmax(x))
    if nonfinite:
        norm = torch.linalg.vector_norm(x).item()
        return torch.tensor([x.sum().item() / n, math.nan, lo, hi, norm, nonfinite], dtype=torch.float64)
    scale = max(abs(lo), abs(hi))
    if scale == 0.0:
        return torch.zeros(6, dtype=torch.float64)
    y = x / scale
    mean = y.mean()
    var = (y - mean).square_().mean().item()
    norm = math.sqrt(torch.dot(y, y).item())
    return torch.tensor([mean.item() * scale, math.sqrt(var) * scale, lo, hi, norm * scale, 0.0], dtype=torch.float64)


def _shifted(t: torch.Tensor) -> Any:
    def sums(m: float) -> tuple[float, float]:
        s, q = _blocked(t - t.new_tensor(m))
        return s.item(), q.item() ** 2

    return sums


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


def _numpy(t: torch.Tensor) -> np.ndarray:
    """The NumPy view of a CPU tensor's memory (no copy), whatever its autograd state."""
    return t.detach().resolve_neg().resolve_conj().numpy()


# -- the one-pass kernels: plain Python here, compiled by numba on first use -----------
_KB = 1024  # elements per block of partial sums in the input's precision (float32: 8-wide)
_fmin: Any = min  # numba: llvm.minnum / maxnum, so that min and max vectorise (NaN is
_fmax: Any = max  # caught by the non-finite sum of squares, never by them)


def _one_pass(x: Any) -> Any:
    """min, max, Σx, Σx² of a flat non-empty array: block sums in its dtype, totals in float64."""
    n = x.size
    lo = x[0]
    hi = x[0]
    total = 0.0
    square = 0.0
    for start in range(0, n, _KB):
        end = min(start + _KB, n)
        s = np.float32(0.0)  # numba unifies it with the input's dtype
        q = np.float32(0.0)
        for i in range(start, end):
            v = x[i]
            lo = _fmin(lo, v)
            hi = _fmax(hi, v)
            s += v
            q += v * v
        total += np.float64(s)
        square += np.float64(q)
    return lo, hi, total, square


def _diff_pass(a: Any, b: Any) -> Any:
    """:func:`_one_pass` of ``a − b`` (subtracted in their dtype), never written anywhere."""
    n = a.size
    lo = a[0] - b[0]
    hi = lo
    total = 0.0
    square = 0.0
    for start in range(0, n, _KB):
        end = min(start + _KB, n)
        s = np.float32(0.0)
        q = np.float32(0.0)
        for i in range(start, end):
            v = a[i] - b[i]
            lo = _fmin(lo, v)
            hi = _fmax(hi, v)
            s += v
            q += v * v
        total += np.float64(s)
        square += np.float64(q)
    return lo, hi, total, square


def _shifted_pass(x: Any, m: float) -> Any:
    """Σ(x − m) and Σ(x − m)² in float64 (the second pass where the mean dominates)."""
    s = 0.0
    q = 0.0
    for i in range(x.size):
        d = np.float64(x[i]) - m
        s += d
        q += d * d
    return s, q


def _diff_shifted_pass(a: Any, b: Any, m: float) -> Any:
    s = 0.0
    q = 0.0
    for i in range(a.size):
        d = np.float64(a[i] - b[i]) - m
        s += d
        q += d * d
    return s, q


class _Kernels:
    def __init__(self, jit: Any) -> None:
        self.one_pass = jit(_one_pass)
        self.diff_pass = jit(_diff_pass)
        self.shifted = jit(_shifted_pass)
        self.diff_shifted = jit(_diff_shifted_pass)


def _minmax(name: str) -> Any:
    """A numba intrinsic: ``llvm.<name>`` of two float32s or two float64s, no-NaN flagged."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    def typer(typingctx: Any, a: Any, b: Any) -> Any:
        if a != b or a not in (types.float32, types.float64):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            kind = args[0].type
            suffix = "f32" if kind == ir.FloatType() else "f64"
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(kind, [kind, kind]), f"llvm.{name}.{suffix}"
            )
            return builder.call(fn, args, fastmath=("nnan", "nsz"))

        return a(a, b), codegen

    typer.__name__ = f"_{name}"
    return intrinsic(typer)


_KERNELS: Any = None
_TRIED = False


def _kernels() -> Any:
    """The numba kernels (compiled on first use, then cached on disk by numba), or None when
    numba is not installed, fails its check, or ``TRACER_NUMBA=0``."""
    global _KERNELS, _TRIED, _fmin, _fmax
    if _TRIED:
        return _KERNELS
    _TRIED = True
    if os.environ.get("TRACER_NUMBA", "1") == "0":
        return None
    try:
        import numba

        _fmin, _fmax = _minmax("minnum"), _minmax("maxnum")
        fastmath = {"reassoc", "contract"}
        try:
            kernels = _Kernels(numba.njit(cache=True, nogil=True, fastmath=fastmath, boundscheck=False))
        except RuntimeError:  # no writable cache directory
            kernels = _Kernels(numba.njit(nogil=True, fastmath=fastmath, boundscheck=False))
        probe = np.array([3.0, -1.0, 2.5], dtype=np.float32)
        if tuple(kernels.one_pass(probe)) != (-1.0, 3.0, 4.5, 16.25):
            raise RuntimeError("numba's one-pass statistics disagree with their definition")
    except Exception:  # numba missing or broken: the stock reductions, same results
        _fmin, _fmax = min, max
        return None
    _KERNELS = kernels
    return kernels


def _with_zeros(stored: torch.Tensor, numel: int) -> torch.Tensor:
    """Statistics of ``numel`` elements: the ``stored`` ones and zeros for the rest."""
    m = stored.numel()
    zeros = numel - m
    if m == 0:
        return torch.zeros(6, dtype=torch.float64)
    stats = _stats(stored)
    if zeros <= 0:
        return stats
    mean_s, std_s, lo, hi, norm, nonfinite = stats.tolist()
    mean = mean_s * (m / numel)
    # the variances of the two groups combined (no cancellation: each term is >= 0)
    var = (m * (std_s * std_s + (mean_s - mean) ** 2) + zeros * mean * mean) / numel
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # a NaN stays NaN: it comes first
    std = math.sqrt(var) if var >= 0 else math.nan
    return torch.tensor([mean, std, lo, hi, norm, nonfinite], dtype=torch.float64)


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
