"""Statistics of a tensor — ``[mean, std, min, max, norm, nonfinite]`` as float64 — computed
where it lives: vectorised reductions on CPU (float32 partial sums combined in float64),
one kernel each on an accelerator, NumPy for the small copies a writer thread holds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_BLOCK = 2048


def _stats(t: torch.Tensor) -> torch.Tensor:
    """Statistics of a non-empty tensor, computed where it lives, as float64 [6]; of |z| for
    a complex one, with ``nonfinite`` the elements that have a NaN or Inf part."""
    if t.is_complex():
        stats = _stats(t.abs())
        nonfinite = torch.isfinite(t).logical_not_().sum()  # |z| overflows for some finite z
        return torch.cat([stats[:5], nonfinite.to(device="cpu", dtype=torch.float64).reshape(1)])
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64 if not t.is_floating_point() else torch.float32)
    if t.is_cpu:
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
