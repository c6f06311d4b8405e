"""`tracer._stats`: the statistics of a tensor against float64 NumPy arithmetic done here,
on both CPU paths (the numba one-pass kernels when numba is installed, the stock torch
reductions always), and `serial`, which keeps tracer's reductions on the calling thread.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from tracer import _stats
from tracer._tensors import capture, difference_stats, finish

HAVE_NUMBA = _stats._kernels() is not None


@pytest.fixture(params=["stock", "numba"])
def path(request, monkeypatch):
    """Run the test on one CPU path: the stock reductions or the numba kernels."""
    if request.param == "numba":
        if not HAVE_NUMBA:
            pytest.skip("numba is not installed (the optional one-pass kernels)")
    else:
        monkeypatch.setattr(_stats, "_KERNELS", None)
    return request.param


def _reference(values) -> list[float]:
    """[mean, std, min, max, norm, nonfinite] of the values as float64, plainly (NaN-aware)."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    with np.errstate(all="ignore"):
        nonfinite = int(a.size - np.count_nonzero(np.isfinite(a)))
        if nonfinite:
            return [a.sum() / a.size, math.nan, a.min(), a.max(), math.sqrt(np.dot(a, a)), nonfinite]
        scale = np.abs(a).max() or 1.0
        b = a / scale
        return [a.mean(), b.std() * scale, a.min(), a.max(), math.sqrt(np.dot(b, b)) * scale, 0]


def _check(got: torch.Tensor, expected: list[float], rel: float) -> None:
    """Equal to ``rel``: the mean relative to the spread where that is larger; min, max and
    the non-finite count exactly (NaN where the reference has NaN)."""
    g = got.tolist()
    assert got.dtype == torch.float64 and len(g) == 6
    for i in (2, 3, 5):
        assert (math.isnan(g[i]) and math.isnan(expected[i])) or g[i] == expected[i], (i, g, expected)
    for i in (0, 1, 4):
        e = expected[i]
        if not math.isfinite(e):
            assert (math.isnan(g[i]) and math.isnan(e)) or g[i] == e, (i, g, expected)
            continue
        scale = max(abs(e), expected[1]) if i == 0 else abs(e)
        assert abs(g[i] - e) <= rel * scale + 1e-300, (i, g, expected)


_G = torch.Generator().manual_seed(0)
CASES = {
    "randn": lambda dt: torch.randn(300_001, generator=_G, dtype=dt),
    "1e4 + randn (mean dominates)": lambda dt: 1e4 + torch.randn(100_003, generator=_G, dtype=dt),
    "1 + 1e-4 randn (LayerNorm-like)": lambda dt: 1 + 1e-4 * torch.randn(100_000, generator=_G, dtype=dt),
    "relu": lambda dt: torch.relu(torch.randn(70_000, generator=_G, dtype=dt)),
    "constant": lambda dt: torch.full((50_000,), 0.1, dtype=dt),
    "zeros": lambda dt: torch.zeros(50_000, dtype=dt),
    "tiny (1e-30)": lambda dt: 1e-30 * torch.randn(50_000, generator=_G, dtype=dt),
    "huge (1e30, squares overflow float32)": lambda dt: 1e30 * torch.randn(50_000, generator=_G, dtype=dt),
    "one element": lambda dt: torch.tensor([-2.5], dtype=dt),
}


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("case", list(CASES))
def test_statistics_match_float64_references(case, dtype, rel, path):
    t = CASES[case](dtype)
    _check(_stats._stats(t), _reference(t.numpy()), rel)


def test_float64_values_beyond_the_square_range_keep_exact_statistics(path):
    t = torch.tensor([1e200, -3e200, 2e200, 5e199] * 5000, dtype=torch.float64)
    got = _stats._stats(t)
    _check(got, _reference(t.numpy()), 1e-12)
    assert math.isfinite(got[1].item()) and math.isfinite(got[4].item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_values_are_counted_and_propagate(bad, dtype, path):
    t = torch.randn(20_000, generator=_G, dtype=dtype)
    t[[7, 12_345]] = bad
    got = _stats._stats(t)
    _check(got, _reference(t.numpy()), 1e-6)
    assert got[5].item() == 2 and math.isnan(got[1].item())


def test_nan_and_inf_together(path):
    t = torch.ones(10_000)
    t[3], t[9_000], t[9_001] = math.inf, -math.inf, math.nan
    got = _stats._stats(t).tolist()
    assert got[5] == 3 and all(math.isnan(v) for v in (got[0], got[1], got[2], got[3], got[4]))


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool]
)
def test_other_dtypes_are_read_exactly(dtype, path):
    t = (torch.randn(30_000, generator=_G) * 50).to(dtype)
    _check(_stats._stats(t), _reference(t.to(torch.float64).numpy()), 2e-6)


def test_int64_beyond_float32_precision(path):
    t = torch.arange(40_000, dtype=torch.int64) * 1_000_003 + 2**40
    _check(_stats._stats(t), _reference(t.numpy()), 1e-12)


@pytest.mark.parametrize("dtype, rel", [(torch.complex64, 2e-6), (torch.complex128, 1e-12)])
def test_complex_statistics_are_of_abs(dtype, rel, path):
    z = torch.randn(20_000, generator=_G, dtype=dtype) + (3 - 1j)
    abs_z = np.abs(z.numpy().astype(np.complex128))
    got = _stats._stats(z)
    ref = _reference(abs_z)  # |z| in float64: tracer's |z| rounds in the tensor's dtype
    assert got.tolist() == pytest.approx(ref, rel=rel)
    z[5] = complex(math.inf, 0)
    got = _stats._stats(z)
    assert got[5].item() == 1 and got[3].item() == math.inf


def test_non_contiguous_and_requires_grad_tensors(path):
    w = torch.randn(300, 400, generator=_G, requires_grad=True)
    for t in (w.detach().t(), w.detach()[:, ::3], w):
        with torch.no_grad():
            got = _stats._stats(t)
        _check(got, _reference(t.detach().numpy()), 2e-6)


def test_an_empty_tensor_through_capture_and_finish():
    stats, values = finish(capture(torch.empty(0, 3), 0))
    assert stats == (None, None, None, None, 0.0, 0) and values.size == 0


def test_both_paths_agree_on_the_same_tensor(monkeypatch):
    if not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    t = torch.randn(1 << 18, generator=_G) * 3 + 0.5
    fast = _stats._stats(t)
    monkeypatch.setattr(_stats, "_KERNELS", None)
    stock = _stats._stats(t)
    assert fast[2:4].tolist() == stock[2:4].tolist()
    assert fast.tolist() == pytest.approx(stock.tolist(), rel=1e-6)


# ----------------------------------------------------------------------------- updates


def _update_pair(n=100_000, dtype=torch.float32):
    before = torch.randn(n, generator=_G, dtype=dtype)
    after = before - 1e-3 * torch.randn(n, generator=_G, dtype=dtype)
    return after, before


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_difference_statistics_are_those_of_the_difference_and_write_nothing(dtype, rel):
    after, before = _update_pair(dtype=dtype)
    a0, b0 = after.clone(), before.clone()
    c = difference_stats(after, before)
    if not HAVE_NUMBA:
        assert c is None
        return
    assert c is not None and c.values is None and c.numel == after.numel() and c.shape == (100_000,)
    _check(c.stats, _reference((after - before).numpy()), rel)  # subtracted in float32, as before
    assert torch.equal(after, a0) and torch.equal(before, b0)


def test_difference_statistics_of_nonfinite_and_overflowing_updates():
    if not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    after, before = _update_pair(20_000)
    after[3], before[4], after[5], before[5] = math.nan, math.inf, 3e38, -3e38  # 3e38 − (−3e38) = inf
    got = difference_stats(after, before).stats
    _check(got, _reference((after - before).numpy()), 1e-6)
    assert got[5].item() == 3


def test_difference_statistics_decline_what_one_pass_cannot_read():
    after, before = _update_pair(10_000)
    assert difference_stats(after.half(), before.half()) is None
    assert difference_stats(after[::2], before[::2]) is None
    assert difference_stats(after, before.double()) is None


# ----------------------------------------------------------------------------- serial


@pytest.fixture
def two_threads():
    """torch on 2 intra-op threads for the test (another test module may have set 1)."""
    if _stats._set_threads is None:
        pytest.skip("torch does not run its CPU ops on OpenMP here")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_serial_uses_one_thread_inside_and_restores_the_setting(two_threads):
    before = torch.get_num_threads()
    seen = []
    other = threading.Event()
    inside = threading.Event()

    def elsewhere():
        inside.wait(10)
        seen.append(torch.get_num_threads())
        other.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with _stats.serial():
        assert torch.get_num_threads() == 1
        inside.set()
        other.wait(10)
    thread.join()
    assert torch.get_num_threads() == before
    assert seen and seen[0] > 1  # another thread keeps its own count
    with pytest.raises(ZeroDivisionError), _stats.serial():
        raise ZeroDivisionError
    assert torch.get_num_threads() == before


def test_serial_leaves_the_users_results_bit_identical(two_threads):
    torch.manual_seed(0)
    x = torch.randn(1 << 20)
    want = x.sum(), (x * 2).cumsum(0)
    with _stats.serial():
        _stats._stats(x)
    got = x.sum(), (x * 2).cumsum(0)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
