"""`tracer._tensors`: what `capture` records of every kind of tensor torch makes, and `finish`.

Each kind is made the way users meet it where torch has a module for it (the nested fast
path of nn.TransformerEncoder, the sparse gradient of nn.Embedding, modules run inside
torch.func transforms), and checked against float64 arithmetic done here.
"""

from __future__ import annotations

import gc
import math
import threading
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tracer._schema import Row
from tracer._store import Writer
from tracer._tensors import CopyPool, Unreadable, adopt, capture, finish

F = torch._C._functorch


# ----------------------------------------------------------------------------- helpers


def _finish_elsewhere(c):
    """``finish`` on another thread, as the writer runs it (no transform or mode of ours)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(finish(c)))
    thread.start()
    thread.join()
    assert out, "finish raised on the writer thread"
    return out[0]


def _reference(values):
    """(mean, std, min, max, norm, nonfinite) of a float64 array, computed plainly."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    return (a.mean(), a.std(), a.min(), a.max(), math.sqrt(float(np.dot(a, a))), 0)


def _assert_stats(expected, got, rel=1e-12):
    """Statistics equal to ``rel`` (the mean's error relative to the spread where that is larger)."""
    assert len(got) == 6
    assert expected[5] == got[5]
    assert got[0] == pytest.approx(expected[0], rel=rel, abs=rel * expected[1])
    assert got[1:5] == pytest.approx(expected[1:5], rel=rel, abs=1e-300)


def _interleaved(z):
    return np.stack([z.real.reshape(-1), z.imag.reshape(-1)], axis=1).reshape(-1).astype(np.float64)


def _quiet(make):
    """Make a tensor whose construction torch itself warns about (deprecated or prototype APIs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def _coo(indices, values, size):
    return torch.sparse_coo_tensor(indices, values, size, check_invariants=True)  # explicit: torch warns otherwise


@pytest.fixture(params=[None, "pool"])
def pool(request):
    return None if request.param is None else CopyPool(64 << 20)


# ----------------------------------------------------------------------------- plain tensors


def test_strided_float_values_and_stats_are_exact(pool):
    t = torch.tensor([[1.0, -2.0], [3.5, 0.25]], dtype=torch.float64)
    c = capture(t, 4, pool)
    assert ((2, 2), "float64", 4) == (c.shape, c.dtype, c.numel)
    stats, values = _finish_elsewhere(c)
    assert [1.0, -2.0, 3.5, 0.25] == values.tolist()
    assert (0.6875, np.std([1.0, -2.0, 3.5, 0.25]), -2.0, 3.5, math.sqrt(17.3125), 0) == stats


def test_requires_grad_views_are_recorded_and_left_alone(pool):
    lin = nn.Linear(3, 4, dtype=torch.float64)
    w = lin.weight
    with torch.no_grad():
        made_in_no_grad = w[1]
    views = {
        "slice": w[1:],
        "transpose": w.t(),
        "expand": lin.bias[:1].expand(5, 4),
        "unbind": w.unbind(0)[2],
        "no_grad view": made_in_no_grad,
        "diagonal": w.diagonal(),
    }
    version, data = w._version, w.detach().clone()
    for name, v in views.items():
        for max_values in (None, 0):
            c = capture(v, max_values, pool)
            assert tuple(v.shape) == c.shape, name
            stats, values = _finish_elsewhere(c)
            expected = v.detach().reshape(-1).numpy()
            if max_values is None:
                assert expected.tolist() == values.tolist(), name
            assert _reference(expected)[2:4] == stats[2:4], name
    assert version == w._version and torch.equal(data, w) and w.grad is None and w.requires_grad
    assert all(v.requires_grad for v in views.values() if v is not made_in_no_grad)


def test_large_tensors_keep_statistics_computed_in_place():
    t = torch.arange(10_000, dtype=torch.float64) - 2000.5
    c = capture(t, 100)
    assert c.values is None and c.stats is not None
    stats, values = _finish_elsewhere(c)
    assert values is None
    _assert_stats(_reference(t.numpy()), stats)


def test_capture_draws_no_random_numbers_and_changes_nothing():
    t = torch.randn(5000)
    state = torch.random.get_rng_state()
    before = t.clone()
    for max_values in (None, 0, 10):
        _finish_elsewhere(capture(t, max_values, CopyPool(1 << 20)))
        _finish_elsewhere(capture(t.to(torch.complex64), max_values))
        _finish_elsewhere(capture(t.to_sparse(), max_values))
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(before, t) and 0 == t._version


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a torch built without oneDNN")
def test_mkldnn_tensors_are_recorded_dense(pool):
    t = torch.arange(6.0).reshape(2, 3)
    m = t.to_mkldnn()
    for max_values in (None, 0):
        c = capture(m, max_values, pool)
        assert ((2, 3), "float32", 6) == (c.shape, c.dtype, c.numel)
        stats, values = _finish_elsewhere(c)
        assert _reference(t) == stats
        assert (values is None) == (max_values == 0)
    assert [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] == _finish_elsewhere(capture(m, None, pool))[1].tolist()


def test_meta_tensors_record_shape_and_dtype_only():
    c = capture(torch.empty(3, 2, device="meta", dtype=torch.bfloat16), None)
    assert ((3, 2), "bfloat16", 6, None, None) == (c.shape, c.dtype, c.numel, c.stats, c.values)
    assert ((None,) * 6, None) == _finish_elsewhere(c)


def test_float8_values_are_exact_through_the_writer(tmp_path):
    t = torch.linspace(-4, 4, 5000).to(torch.float8_e4m3fn)
    rows = [_row(0, capture(t, None)), _row(1, capture(t[:10], 10))]
    table = _write_and_read(tmp_path, rows)
    expected = t.to(torch.float64).tolist()
    assert expected == table["values"][0] and expected[:10] == table["values"][1]
    assert ["float8_e4m3fn"] * 2 == table["dtype"]


@pytest.mark.parametrize("name", ["bits8", "bits16", "bits1x8", "uint4", "int3", "float4_e2m1fn_x2"])
def test_raw_bit_dtypes_are_unreadable(name):
    dtype = getattr(torch, name)
    t = torch.zeros(16, dtype=torch.uint8).view(dtype)
    with pytest.raises(Unreadable, match=f"^{name} holds raw bits .* no numbers to record$") as info:
        capture(t, None)
    assert info.value.reason == str(info.value)
    assert isinstance(info.value, Exception)


# ----------------------------------------------------------------------------- complex


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_values_are_interleaved_and_stats_are_of_abs(dtype, pool):
    z = torch.tensor([[3 + 4j, -1 + 0j], [0 - 2j, 0.5 + 0.5j]], dtype=dtype)
    c = capture(z, 4, pool)
    assert ((2, 2), str(dtype).removeprefix("torch."), 4) == (c.shape, c.dtype, c.numel)
    stats, values = _finish_elsewhere(c)
    assert [3.0, 4.0, -1.0, 0.0, 0.0, -2.0, 0.5, 0.5] == values.tolist()
    assert 8 == values.size and np.float64 == values.dtype
    magnitude = np.array([5.0, 1.0, 2.0, math.sqrt(0.5)])
    assert (magnitude.mean(), magnitude.std(), math.sqrt(0.5), 5.0, math.sqrt(30.5), 0) == stats


def test_complex_views_are_interleaved_in_row_major_order(pool):
    z = (torch.arange(6, dtype=torch.float64) + 1j * torch.arange(6, dtype=torch.float64) * 10).reshape(2, 3)
    c = capture(z.t(), None, pool)
    assert (3, 2) == c.shape
    _, values = _finish_elsewhere(c)
    assert _interleaved(z.t().numpy()).tolist() == values.tolist()


def test_max_values_counts_complex_elements():
    z = torch.tensor([1 + 1j, 2 - 1j, 3j], dtype=torch.complex128)
    _, kept = _finish_elsewhere(capture(z, 3))
    assert 6 == kept.size
    stats, none = _finish_elsewhere(capture(z, 2))
    assert none is None
    assert stats[3] == 3.0 and stats[4] == pytest.approx(math.sqrt(2 + 5 + 9), rel=1e-15)


def test_complex_nonfinite_counts_a_nan_or_inf_part_not_an_overflowing_abs():
    # |3e38 + 3e38j| overflows float32 but both parts are finite: not counted
    parts = [(math.nan, 0.0), (1.0, math.inf), (3e38, 3e38), (1.0, 1.0)]
    small = torch.tensor([complex(a, b) for a, b in parts], dtype=torch.complex64)
    stats, values = _finish_elsewhere(capture(small, None))
    assert 2 == stats[5]
    assert np.isnan(values[0]) and values[3] == math.inf and values[4] == np.float32(3e38)
    big = torch.ones(5000, dtype=torch.complex64)
    big[:4] = small
    stats, _ = _finish_elsewhere(capture(big, 0))  # statistics on the training thread
    assert 2 == stats[5]


@pytest.mark.parametrize("dtype, rel", [(torch.complex64, 1e-6), (torch.complex128, 1e-12)])
def test_large_complex_stats_match_float64_abs(dtype, rel):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, dtype=dtype, generator=g) + (2 + 1j)
    reference = _reference(np.abs(z.numpy().astype(np.complex128)))
    stats, values = _finish_elsewhere(capture(z, 100))
    assert values is None
    _assert_stats(reference, stats, rel)
    stats, values = _finish_elsewhere(capture(z, None, CopyPool(64 << 20)))  # kept: the writer's stats
    _assert_stats(reference, stats, rel)
    assert isinstance(values, torch.Tensor) and 40_000 == values.numel()
    assert torch.equal(torch.view_as_real(z).reshape(-1), values)


def test_complex32_is_read_as_complex64_and_named_complex32(pool):
    z = _quiet(lambda: torch.tensor([1 + 2j, -0.5 + 0j], dtype=torch.complex64).to(torch.complex32))
    c = capture(z, None, pool)
    assert ((2,), "complex32", 2) == (c.shape, c.dtype, c.numel)
    stats, values = _finish_elsewhere(c)
    assert [1.0, 2.0, -0.5, 0.0] == values.tolist()
    assert math.sqrt(5) == stats[3]


def test_adopt_takes_a_complex128_update():
    before = torch.tensor([1 + 1j, 2 + 0j], dtype=torch.complex64)
    after = torch.tensor([1.5 + 0.5j, 2 - 1j], dtype=torch.complex64)
    update = (after.to(torch.complex128) - before).reshape(-1)
    c = adopt(update, (2,))
    assert ((2,), "complex128", 2) == (c.shape, c.dtype, c.numel)
    assert c.values is update  # not copied again
    stats, values = _finish_elsewhere(c)
    assert [0.5, -0.5, 0.0, -1.0] == values.tolist()
    assert (math.sqrt(0.5), 1.0, math.sqrt(1.5)) == (stats[2], stats[3], stats[4])


# ----------------------------------------------------------------------------- nested


def _encoder(d_model, seq):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model, 2, 2 * d_model, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    lengths = [seq - 2, seq - 1, seq]
    mask = torch.arange(seq)[None, :] >= torch.tensor(lengths)[:, None]  # True = padding
    x = torch.randn(3, seq, d_model)
    outputs = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: outputs.setdefault(name, out))
        for name, m in [("layer", enc.layers[0]), ("linear1", enc.layers[0].linear1)]
    ]
    with torch.no_grad():
        _quiet(lambda: enc(x, src_key_padding_mask=mask))  # torch warns: prototype nested API
    for h in hooks:
        h.remove()
    return outputs, lengths


def test_transformer_encoder_fast_path_is_recorded_as_its_tokens(pool):
    outputs, lengths = _encoder(8, 5)
    for name, width in (("layer", 8), ("linear1", 16)):
        out = outputs[name]
        assert out.is_nested  # torch's fast path: what the sub-modules pass on
        c = capture(out, None, pool)
        assert ((sum(lengths), width), "float32", sum(lengths) * width) == (c.shape, c.dtype, c.numel)
        stats, values = _finish_elsewhere(c)
        tokens = torch.cat(out.unbind()).double().numpy()
        assert tokens.reshape(-1).tolist() == values.tolist()
        assert _reference(tokens)[2:4] == stats[2:4]
        _assert_stats(_reference(tokens), stats)


def test_large_nested_tensor_keeps_statistics():
    outputs, lengths = _encoder(64, 40)
    out = outputs["layer"]
    c = capture(out, 1000)
    assert (sum(lengths), 64) == c.shape and c.values is None and c.stats is not None
    stats, _ = _finish_elsewhere(c)
    _assert_stats(_reference(torch.cat(out.unbind()).double()), stats, rel=1e-5)


def test_nested_components_that_disagree_past_the_first_dimension_are_flattened(pool):
    a, b = torch.arange(6.0).reshape(2, 3), -torch.arange(20.0).reshape(4, 5)
    nt = _quiet(lambda: torch.nested.nested_tensor([a, b]))
    for t in (nt, nt.transpose(1, 2)):  # the second is not contiguous
        c = capture(t, None, pool)
        assert ((26,), 26) == (c.shape, c.numel)
        _, values = _finish_elsewhere(c)
        assert torch.cat([p.reshape(-1) for p in t.unbind()]).tolist() == values.tolist()


def test_jagged_nested_tensors(pool):
    parts = [torch.arange(8.0).reshape(2, 4), torch.arange(12.0).reshape(3, 4) + 100]
    nj = torch.nested.nested_tensor(parts, layout=torch.jagged, requires_grad=True)
    c = capture(nj, None, pool)
    assert ((5, 4), "float32", 20) == (c.shape, c.dtype, c.numel)
    _, values = _finish_elsewhere(c)
    assert torch.cat(parts).reshape(-1).tolist() == values.tolist()

    base = torch.arange(24.0).reshape(3, 8)  # a jagged view with holes: not contiguous
    narrow = torch.nested.narrow(base, 1, torch.tensor([0, 2, 1]), torch.tensor([3, 2, 5]), layout=torch.jagged)
    c = capture(narrow, None, pool)
    assert ((10,), 10) == (c.shape, c.numel)
    _, values = _finish_elsewhere(c)
    assert [0, 1, 2, 10, 11, 17, 18, 19, 20, 21] == values.tolist()

    transposed = nj.transpose(1, 2)  # components (4, 2) and (4, 3)
    c = capture(transposed, 0)
    assert ((20,), 20) == (c.shape, c.numel)
    _assert_stats(_reference(torch.cat(parts).numpy()), _finish_elsewhere(c)[0])


# ----------------------------------------------------------------------------- quantized


def test_quantized_tensors_are_recorded_dequantized(pool):
    x = torch.tensor([-1.0, -0.26, 0.0, 0.5, 3.0])
    cases = {
        "qint8": lambda: torch.quantize_per_tensor(x, 0.25, 2, torch.qint8),
        "quint8": lambda: torch.quantize_per_tensor(x, 0.5, 10, torch.quint8),
        "qint32": lambda: torch.quantize_per_tensor(x, 0.125, 0, torch.qint32),
        "quint4x2": lambda: torch.quantize_per_tensor(x[:4], 0.5, 4, torch.quint4x2),
    }
    for name, make in cases.items():
        q = _quiet(make)
        c = capture(q, None, pool)
        assert (tuple(q.shape), name, q.numel()) == (c.shape, c.dtype, c.numel)
        stats, values = _finish_elsewhere(c)
        expected = q.dequantize().double().numpy()
        assert expected.tolist() == values.tolist(), name
        _assert_stats(_reference(expected), stats)
    scales, zero_points = torch.tensor([0.5, 0.25]), torch.tensor([0, 3])
    q = _quiet(lambda: torch.quantize_per_channel(torch.randn(2, 3000), scales, zero_points, 0, torch.quint8))
    for max_values in (None, 0):
        c = capture(q, max_values, pool)
        assert ((2, 3000), "quint8") == (c.shape, c.dtype)
        _assert_stats(_reference(q.dequantize().double()), _finish_elsewhere(c)[0], rel=1e-6)


# ----------------------------------------------------------------------------- sparse


def test_embedding_sparse_gradient_is_its_dense_form(pool):
    emb = nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
    with torch.no_grad():
        emb.weight.copy_(torch.arange(30.0).reshape(10, 3))
    (emb(torch.tensor([1, 1, 4])) * torch.tensor([[1.0], [2.0], [-3.0]], dtype=torch.float64)).sum().backward()
    g = emb.weight.grad
    assert g.layout is torch.sparse_coo and not g.is_coalesced()  # index 1 twice
    dense = g.to_dense()
    c = capture(g, None, pool)
    assert ((10, 3), "float64", 30) == (c.shape, c.dtype, c.numel)
    stats, values = _finish_elsewhere(c)
    assert dense.reshape(-1).tolist() == values.tolist()
    assert _reference(dense) == stats

    c = capture(g, 0, pool)  # statistics from the stored entries, not densified
    assert c.values is None
    stats, _ = _finish_elsewhere(c)
    _assert_stats(_reference(dense), stats)
    assert (-3.0, 3.0) == stats[2:4]
    assert not g.is_coalesced()  # untouched


@pytest.mark.parametrize("layout", ["csr", "csc", "bsr", "bsc", "coo_hybrid"])
def test_compressed_and_hybrid_sparse_layouts(layout, pool):
    dense = torch.tensor(
        [[0.0, 2.0, 0.0, 0.0], [0.0, -1.5, 0.0, 0.0], [4.0, 0.0, 0.0, 0.25], [0.0, 0.0, 0.0, 7.0]],
        dtype=torch.float64,
    )
    make = {
        "csr": lambda: dense.to_sparse_csr(),
        "csc": lambda: dense.to_sparse_csc(),
        "bsr": lambda: dense.to_sparse_bsr((2, 2)),
        "bsc": lambda: dense.to_sparse_bsc((2, 2)),
        "coo_hybrid": lambda: dense.to_sparse(sparse_dim=1),
    }
    s = _quiet(make[layout])  # torch warns: CSR support in beta
    assert s.layout is not torch.strided
    c = capture(s, 16, pool)
    assert ((4, 4), "float64", 16) == (c.shape, c.dtype, c.numel)
    stats, values = _finish_elsewhere(c)
    assert dense.reshape(-1).tolist() == values.tolist()
    c = capture(s, 15, pool)
    stats, values = _finish_elsewhere(c)
    assert values is None
    _assert_stats(_reference(dense), stats)
    assert (-1.5, 7.0) == stats[2:4]


def test_sparse_statistics_special_cases():
    positive = _coo(torch.tensor([[1, 3]]), torch.tensor([2.0, 5.0]), (6,))
    stats, _ = _finish_elsewhere(capture(positive, 0))
    assert (0.0, 5.0) == stats[2:4]  # the implicit zeros are the minimum
    empty = _coo(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0), (6,))
    assert ((0.0, 0.0, 0.0, 0.0, 0.0, 0), None) == _finish_elsewhere(capture(empty, 0))
    nan = _coo(torch.tensor([[0, 2]]), torch.tensor([math.nan, 1.0]), (5,))
    stats, _ = _finish_elsewhere(capture(nan, 0))
    assert 1 == stats[5] and math.isnan(stats[0]) and math.isnan(stats[2])
    complex_ = _coo(torch.tensor([[0, 2]]), torch.tensor([3 + 4j, 1j], dtype=torch.complex128), (4,))
    c = capture(complex_, 0)
    stats, _ = _finish_elsewhere(c)
    assert "complex128" == c.dtype
    assert (1.5, 0.0, 5.0, math.sqrt(26.0)) == (stats[0], stats[2], stats[3], stats[4])  # of |z| = 5, 0, 1, 0
    _, values = _finish_elsewhere(capture(complex_, None))
    assert [3.0, 4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0] == values.tolist()


def test_a_huge_sparse_tensor_is_never_densified():
    huge = _coo(
        torch.tensor([[0, 999_999], [5, 999_998]]), torch.tensor([1.0, -2.0], dtype=torch.float64), (10**6, 10**6)
    )
    c = capture(huge, 1000)  # 10**12 dense elements: 4 TB if densified
    assert ((10**6, 10**6), 10**12, None) == (c.shape, c.numel, c.values)
    stats, _ = _finish_elsewhere(c)
    assert (-1e-12, -2.0, 1.0, math.sqrt(5.0), 0) == (stats[0], stats[2], stats[3], stats[4], stats[5])
    assert stats[1] == pytest.approx(math.sqrt(5e-12 - 1e-24), rel=1e-9)


# ----------------------------------------------------------------------------- inference mode


def test_inference_mode_tensors(pool):
    with torch.inference_mode():
        small, large = torch.arange(5.0), torch.arange(20_000.0, dtype=torch.float64)
        caps = [capture(small, None, pool), capture(large, None, pool), capture(large, 10, pool)]
    assert small.is_inference()
    with pytest.raises(RuntimeError, match="Inference tensors do not track version counter"):
        _ = small._version  # the hook layer's problem, not capture's
    caps.append(capture(large, None, pool))  # outside inference mode: an inference tensor still
    assert list(range(5)) == _finish_elsewhere(caps[0])[1].tolist()
    for c in caps[1:]:
        _assert_stats(_reference(large), _finish_elsewhere(c)[0])


def test_a_pool_block_made_in_inference_mode_is_reused_outside_it():
    pool = CopyPool(64 << 20)
    with torch.inference_mode():
        c = capture(torch.ones(20_000), None, pool)
    del c
    gc.collect()  # the block goes back to the pool
    c = capture(torch.full((20_000,), 2.0), None, pool)  # reuses the block, outside inference mode
    assert (2.0, 0.0, 2.0, 2.0) == _finish_elsewhere(c)[0][:4]


# ----------------------------------------------------------------------------- subclasses, modes


def test_fake_tensors_are_unreadable():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.randn(3, 4)
        with pytest.raises(Unreadable, match="^a FakeTensor .* has a shape and dtype but no values$"):
            capture(fake, None)
    with pytest.raises(Unreadable, match="FakeTensor"):
        capture(fake, 0)


def test_a_real_tensor_read_under_fake_tensor_mode_is_recorded_and_the_mode_kept():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    real = torch.arange(20_000.0, dtype=torch.float64)
    head = real[:4]
    with FakeTensorMode():
        caps = [capture(real, None, CopyPool(64 << 20)), capture(real, 10), capture(head, None)]
        assert isinstance(torch.empty(2), FakeTensor)  # the mode is back
    assert [0.0, 1.0, 2.0, 3.0] == _finish_elsewhere(caps[2])[1].tolist()
    for c in caps[:2]:
        _assert_stats(_reference(real), _finish_elsewhere(c)[0])


class _Log(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def test_dispatch_modes_do_not_see_tracers_work():
    t = torch.randn(20_000)
    with _Log() as log:
        t2 = t * 2
        c = capture(t2, 10)
        d = capture(t2, None, CopyPool(64 << 20))
    assert [torch.ops.aten.mul.Tensor] == log.ops  # the user's op only
    _assert_stats(_reference(t2), _finish_elsewhere(c)[0], rel=1e-6)
    assert t2.tolist() == _finish_elsewhere(d)[1].tolist()


class _Tagged(torch.Tensor):
    """A subclass that only overrides __torch_function__ (the default)."""


class _Wrapper(torch.Tensor):
    """A wrapper subclass: its values live in ``inner``, not in its own storage."""

    @staticmethod
    def __new__(cls, inner):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(x):
            return x.inner if isinstance(x, _Wrapper) else x

        out = func(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in (kwargs or {}).items()})
        return _Wrapper(out) if isinstance(out, torch.Tensor) else out


def test_subclasses(pool):
    tagged = torch.arange(3.0).as_subclass(_Tagged)
    c = capture(tagged, None, pool)
    assert type(c.values) is torch.Tensor
    assert [0.0, 1.0, 2.0] == _finish_elsewhere(c)[1].tolist()
    param = nn.Parameter(torch.arange(2.0))
    assert [0.0, 1.0] == _finish_elsewhere(capture(param, None, pool))[1].tolist()
    with pytest.raises(Unreadable, match=r"^a _Wrapper is a tensor subclass with its own __torch_dispatch__"):
        capture(_Wrapper(torch.arange(3.0)), None, pool)


# ----------------------------------------------------------------------------- torch.func


def _linear():
    """An nn.Linear whose forward hook captures its input and output (handle, captures)."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, dtype=torch.float64)
    seen = []
    handle = lin.register_forward_hook(lambda m, args, out: seen.append((capture(args[0], None), capture(out, 0))))
    return lin, handle, seen


def test_inside_grad_a_module_output_is_recorded_as_the_tensor_it_wraps():
    lin, handle, seen = _linear()
    params = dict(lin.named_parameters())
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss(p, x):
        return torch.func.functional_call(lin, p, (x,)).pow(2).sum()

    grads = torch.func.grad(loss)(params, x)
    handle.remove()
    ((inp, out),) = seen
    assert x.tolist() == _finish_elsewhere(inp)[1].tolist()
    assert (2,) == out.shape
    _assert_stats(_reference(lin(x).detach()), _finish_elsewhere(out)[0])
    untraced = torch.func.grad(loss)(params, x)
    assert all(torch.equal(untraced[k], v) for k, v in grads.items())  # the transform is undisturbed


def test_inside_vmap_the_whole_batch_is_recorded_batch_first():
    lin, _, seen = _linear()
    x = torch.arange(12.0, dtype=torch.float64).reshape(3, 4) / 7  # 4 examples along dim 1
    out = torch.vmap(lin, in_dims=1)(x)
    ((inp, act),) = seen
    assert ((4, 3), (4, 2)) == (inp.shape, act.shape)
    assert x.t().reshape(-1).tolist() == _finish_elsewhere(inp)[1].tolist()
    _assert_stats(_reference(out.detach()), _finish_elsewhere(act)[0])


def test_nested_vmaps_put_the_outermost_batch_first():
    x = torch.arange(24.0).reshape(2, 3, 4)
    caps = []

    def f(v):
        caps.append(capture(v, None))
        return v.sin()

    torch.vmap(torch.vmap(f, in_dims=1), in_dims=2)(x)
    (c,) = caps
    assert (4, 3, 2) == c.shape
    assert x.permute(2, 1, 0).reshape(-1).tolist() == _finish_elsewhere(c)[1].tolist()


def test_per_sample_gradients_vmap_of_grad():
    lin, handle, seen = _linear()
    params = {k: v.detach() for k, v in lin.named_parameters()}
    x = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)

    def loss(p, xi):
        return torch.func.functional_call(lin, p, (xi,)).sum()

    torch.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    handle.remove()
    ((inp, out),) = seen
    assert (2, 3) == inp.shape and (2, 2) == out.shape
    assert x.reshape(-1).tolist() == _finish_elsewhere(inp)[1].tolist()
    _assert_stats(_reference(lin(x).detach()), _finish_elsewhere(out)[0])


def test_plain_tensors_read_inside_a_transform_stay_plain():
    outside = torch.arange(20_000.0, dtype=torch.float64)
    caps = []

    def f(x):
        caps.extend([capture(outside, None), capture(outside, 10), capture(outside, None, CopyPool(64 << 20))])
        return (x * 2).sum()

    torch.func.grad(f)(torch.ones(3))
    for c in caps:
        assert c.values is None or not F.is_functorch_wrapped_tensor(c.values)
        _assert_stats(_reference(outside), _finish_elsewhere(c)[0])


def test_escaped_functorch_tensors():
    leaked = {}

    def batched(x):
        leaked["vmap"] = x * 1
        return x

    def graded(x):
        leaked["grad"] = x * 3
        return x.sum()

    torch.vmap(batched, in_dims=1)(torch.arange(6.0).reshape(2, 3))
    torch.func.grad(graded)(torch.arange(3.0))
    c = capture(leaked["vmap"], None)
    assert (3, 2) == c.shape
    assert [0.0, 3.0, 1.0, 4.0, 2.0, 5.0] == _finish_elsewhere(c)[1].tolist()
    assert [0.0, 3.0, 6.0] == _finish_elsewhere(capture(leaked["grad"], None))[1].tolist()


def test_functionalize_reads_the_value_after_pending_view_updates():
    caps = []

    def f(x):
        x.view(-1).add_(1)  # pending on x until it is read
        caps.append(capture(x, None))
        return x * 2

    out = torch.func.functionalize(f)(torch.zeros(2, 2))
    assert torch.equal(torch.full((2, 2), 2.0), out)
    ((c),) = caps
    assert [1.0] * 4 == _finish_elsewhere(c)[1].tolist()


# ----------------------------------------------------------------------------- the real writer


def _row(seq, captured, name="x"):
    return Row(0, seq, "activation", name, 0, "", "Module", captured, False)


def _write_and_read(tmp_path, rows):
    writer = Writer(tmp_path, flush_seconds=0.1)
    for row in rows:
        writer.put(row)
    writer.close()
    assert writer.error is None
    table = pq.read_table(sorted(tmp_path.glob("part-*.parquet"))).sort_by("seq")
    return table.to_pydict()


def test_round_trip_through_the_writer(tmp_path):
    z64 = torch.tensor([1 + 2j, -3 - 4j], dtype=torch.complex64)
    z128 = torch.complex(torch.arange(5000.0, dtype=torch.float64), -torch.arange(5000.0, dtype=torch.float64))
    update = (z64.to(torch.complex128) * 1j).reshape(-1)
    outputs, lengths = _encoder(8, 5)
    q = _quiet(lambda: torch.quantize_per_tensor(torch.tensor([0.5, -1.0]), 0.5, 0, torch.qint8))
    sparse = _coo(torch.tensor([[0, 2]]), torch.tensor([3.0, -1.0]), (4,))
    rows = [
        _row(0, capture(z64, None)),
        _row(1, capture(z128, None, CopyPool(64 << 20))),  # large and kept: a tensor for the buffer
        _row(2, adopt(update, (2,))),
        _row(3, capture(z128, 10)),
        _row(4, capture(outputs["layer"], None)),
        _row(5, capture(q, None)),
        _row(6, capture(sparse, None)),
        _row(7, capture(sparse, 2)),
    ]
    got = _write_and_read(tmp_path, rows)
    assert list(range(8)) == got["seq"]
    assert ["complex64", "complex128", "complex128", "complex128", "float32", "qint8", "float32", "float32"] == got[
        "dtype"
    ]
    assert [[2], [5000], [2], [5000], [sum(lengths), 8], [2], [4], [4]] == got["shape"]
    assert [2, 5000, 2, 5000, sum(lengths) * 8, 2, 4, 4] == got["numel"]
    values = got["values"]
    assert [1.0, 2.0, -3.0, -4.0] == values[0]
    assert _interleaved(z128.numpy()).tolist() == values[1]
    assert [-2.0, 1.0, 4.0, -3.0] == values[2]  # i·z
    assert values[3] is None
    assert torch.cat(outputs["layer"].unbind()).reshape(-1).tolist() == values[4]
    assert [0.5, -1.0] == values[5]
    assert [3.0, 0.0, -1.0, 0.0] == values[6] and values[7] is None
    assert [5.0, math.sqrt(5.0)] == [got["max"][0], got["min"][0]]
    assert got["norm"][1] == pytest.approx(math.sqrt(2 * sum(i * i for i in range(5000))), rel=1e-12)
    assert got["norm"][3] == pytest.approx(got["norm"][1], rel=1e-12)
    assert [0.5, 0.5] == [got["mean"][6], got["mean"][7]]  # dense and from the stored entries
