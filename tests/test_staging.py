"""Small tensors staged in batches (tracer._staging): the same rows as one tensor at a time."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer
from tracer import _staged_steps, _staging
from tracer._batch import Batch, _segment_stats
from tracer._hparams import DeferredHparams, as_text, hparams_json
from tracer._staging import Staging
from tracer._stats import _numpy_stats

KEY = ["step", "kind", "name", "call", "part"]


class _Sink:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.directory = Path("<memory>")
        self.max_queue_bytes = 1 << 20
        self.error = None

    def put(self, row) -> None:
        raise AssertionError("only batches expected")

    def put_batch(self, batch: Batch) -> None:
        self.batches.append(batch)


def test_segment_statistics_are_numpys_of_each_segment():
    rng = np.random.default_rng(0)
    segments = [
        rng.normal(size=7), np.array([]), np.array([3.0]), rng.normal(1e6, 1e-3, size=100),
        np.array([1.0, np.nan, 2.0]), np.array([np.inf, 1.0]), np.array([-np.inf, np.inf]), np.array([]),
        rng.normal(size=4096), np.zeros(5),
    ]  # fmt: skip
    flat = np.concatenate(segments)
    got = _segment_stats(flat, np.array([len(s) for s in segments]))
    for row, seg in zip(got, segments):
        want = _numpy_stats(seg)
        if seg.size == 0:
            assert np.isnan(row[:4]).all() and row[4] == 0 and row[5] == 0 and want[4] == 0
            continue
        np.testing.assert_array_equal(row[[0, 2, 3, 5]], np.array([want[0], want[2], want[3], want[5]], dtype=float))
        np.testing.assert_allclose(row[[1, 4]], [want[1], want[4]], rtol=1e-14)


class _Model(nn.Module):
    """Many small parameters (staged), one large (alone), two dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.ModuleList(nn.Linear(4, 4) for _ in range(6))
        self.wide = nn.Linear(4, 1500)  # 6,000 weights: more than a staged tensor
        self.head = nn.Linear(1500, 1).double()

    def forward(self, x):
        for layer in self.small:
            x = torch.relu(layer(x))  # a module's input is the previous one's output
        return self.head(self.wide(x).double())


def _trace(path: Path, *, staged: bool, monkeypatch, **options) -> pd.DataFrame:
    torch.manual_seed(0)
    model = _Model()
    params = list(model.parameters())
    opt = torch.optim.Adam([{"params": params[:6]}, {"params": params[6:], "lr": 1e-2}], lr=1e-3)
    x, y = torch.randn(3, 4), torch.randn(3, 1, dtype=torch.float64)
    with monkeypatch.context() as m:
        if not staged:
            m.setattr(_staged_steps, "FLOATS", {})  # modules' small tensors
            m.setattr(_staged_steps, "small_float", lambda t: False)  # the optimizer's
        with tracer.trace(model, opt, path=path, **options) as run:
            for _ in range(3):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    return tracer.load(run.path).sort_values(KEY).reset_index(drop=True)


@pytest.mark.parametrize("max_values", [1024, 0, None])
def test_staged_rows_are_the_rows_of_one_tensor_at_a_time(tmp_path, monkeypatch, max_values):
    staged = _trace(tmp_path / "staged", staged=True, monkeypatch=monkeypatch, max_values=max_values)
    alone = _trace(tmp_path / "alone", staged=False, monkeypatch=monkeypatch, max_values=max_values)
    assert len(staged) == len(alone) > 300
    for column in [*KEY, "dtype", "numel", "optimizer", "param_group", "hparams", "grad_enabled"]:
        assert staged[column].tolist() == alone[column].tolist(), column
    assert [tuple(s) for s in staged["shape"]] == [tuple(s) for s in alone["shape"]]
    assert staged["values"].isna().tolist() == alone["values"].isna().tolist()
    for a, b in zip(staged["values"], alone["values"]):
        if a is not None:
            np.testing.assert_array_equal(a, b)  # the same numbers exactly
    # the statistics: an update kept as statistics only is exact in float64 when staged, in
    # the parameter's dtype alone (float32 rounding of the difference)
    stats = ["mean", "std", "min", "max", "norm"]
    rough = (staged["kind"] == "update") & staged["values"].isna()
    np.testing.assert_allclose(staged.loc[~rough, stats], alone.loc[~rough, stats], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(staged.loc[rough, stats], alone.loc[rough, stats], rtol=1e-5, atol=1e-12)
    assert staged["nonfinite"].tolist() == alone["nonfinite"].tolist()
    assert staged["seq"].is_unique


def test_a_parameter_alone_in_its_dtype_is_copied_not_viewed():
    p = torch.ones(3)
    copy = Staging.flatten([p])  # torch's flatten_dense_tensors returns a view for one tensor
    p.add_(1)
    assert copy.tolist() == [1.0, 1.0, 1.0]


def test_rows_go_to_the_writer_when_the_oldest_is_a_quarter_of_flush_seconds_old():
    sink = _Sink()
    slow = Staging(sink, flush_seconds=3600)
    gid, slot = slow.copy(torch.ones(2))
    slow.row((0, 0, "activation", "fc", 0, "", "Linear", (2,), "float32", 2, True, True, None, None, None, gid, slot))
    assert sink.batches == []  # young: still staged
    slow.seal()
    assert [1] == [len(b) for b in sink.batches]
    eager = Staging(sink, flush_seconds=0.0)
    gid, slot = eager.copy(torch.full((3,), 2.0))
    eager.row((0, 1, "activation", "fc", 0, "", "Linear", (3,), "float32", 3, True, True, None, None, None, gid, slot))
    assert [1, 1] == [len(b) for b in sink.batches]  # old at once: sealed by the row itself
    cols, packed = sink.batches[1].encode()
    assert [2.0, 2.0, 2.0] == packed.flat.tolist() and [3] == packed.lengths.tolist() and not packed.missing.any()
    assert cols["mean"].to_pylist() == [2.0] and cols["std"].to_pylist() == [0.0]


def test_copies_fill_buffers_and_go_on_in_a_new_one_when_full(monkeypatch):
    monkeypatch.setattr(_staging, "CHUNK", 8)
    sink = _Sink()
    staging = Staging(sink, flush_seconds=3600)
    tensors = [torch.full((3,), float(i)) for i in range(5)] + [torch.arange(10.0)]  # the last: > CHUNK
    for i, t in enumerate(tensors):
        gid, slot = staging.copy(t)
        staging.row((0, i, "activation", "m", i, "", "Linear", (t.numel(),), "float32", t.numel(), True, True, None,
                     None, None, gid, slot))  # fmt: skip
    staging.seal()
    (batch,) = sink.batches
    assert [6, 6, 3, 10] == [f.numel() for f in batch.flats]  # 2 + 2 + 1 copies of 3, then the large one alone
    cols, packed = batch.encode()
    assert packed.flat.tolist() == torch.cat(tensors).tolist()
    assert cols["mean"].to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0, 4.5]


def test_a_copy_is_not_reused_across_batches(tmp_path):
    # flush_seconds tiny: every row seals its own batch, so the cached copy of an output (the
    # next module's input) belongs to an earlier batch and must be copied again
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t", flush_seconds=1e-6) as run:
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    df = tracer.load(run.path)
    out0 = df[(df.kind == "activation") & (df.name == "0")]["values"].iloc[0]
    in1 = df[(df.kind == "input") & (df.name == "1")]["values"].iloc[0]
    np.testing.assert_array_equal(out0, in1)


def test_a_batch_that_cannot_be_made_is_skipped_with_a_warning(tmp_path, monkeypatch):
    def broken(flats):
        raise RuntimeError("no host memory")

    monkeypatch.setattr(_staging, "_to_host", broken)
    model, x, y, loss_fn, opt = make_reference()
    ref_model, *_, ref_opt = make_reference()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with tracer.trace(model, opt, path=tmp_path / "t") as run:
            train_reference(model, x, y, loss_fn, opt, steps=2)
    train_reference(ref_model, x, y, loss_fn, ref_opt, steps=2)
    assert torch.equal(model.weight, ref_model.weight)  # training went on, unchanged
    assert ["tracer skipped staged rows of 'small tensors': no host memory; training goes on"] == [
        str(w.message) for w in seen
    ]
    assert run.path.is_dir()


def test_deferred_hyper_parameters_read_as_the_same_text():
    lr = torch.tensor(0.5)
    group = {"params": [], "lr": lr, "betas": (torch.tensor(0.9), 0.999), "foreach": None}
    deferred = DeferredHparams(group)
    lr.fill_(0.25)  # (on CUDA the copy is taken when the hparams are recorded; on CPU it is the tensor)
    assert str(deferred) == hparams_json({**group, "lr": torch.tensor(0.25)})
    assert as_text(deferred) == str(deferred) and as_text("{}") == "{}" and as_text(None) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("lr", [1e-3, "tensor"])
def test_a_traced_cuda_step_makes_no_host_sync(tmp_path, lr):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8)).cuda()
    rate = torch.tensor(1e-3, device="cuda") if lr == "tensor" else lr
    opt = torch.optim.AdamW(model.parameters(), lr=rate, capturable=lr == "tensor")
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 8, device="cuda")

    def step():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    step()  # optimizer state made before the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()  # the untraced step: torch itself must not sync, or there is nothing to check
    except RuntimeError as exc:
        pytest.skip(f"the untraced step syncs already: {exc}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a sync inside a hook would be caught and warned
                for _ in range(2):
                    step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    df = tracer.load(run.path)
    assert {0, 1, 2} == set(df.step) and {"grad", "param", "update", "state", "activation"} <= set(df.kind)
    assert df[df.kind == "grad"]["norm"].notna().all()


def test_batches_joined_encode_as_each_alone(tmp_path):
    """The writer encodes a file's batches together: the same columns and values as each
    batch encoded alone, one after the other (rows, and an optimizer's blocks)."""
    sink = _Sink()
    model, x, y, loss_fn, opt = make_reference()
    from tracer._hooks import Recorder
    from tracer._selection import module_infos, param_infos

    everything = lambda name: True  # noqa: E731
    kinds = frozenset({"input", "activation", "activation_grad", "loss", "grad", "param", "update", "state"})
    recorder = Recorder(sink, kinds=kinds, max_values=None, every=1, params=param_infos(model, [opt], everything),
                        modules=module_infos(model, everything), optimizers=[opt])  # fmt: skip
    recorder.install()
    try:
        train_reference(model, x, y, loss_fn, opt, steps=3)
    finally:
        recorder.finish()
        recorder.uninstall()
    assert len(sink.batches) == 3 and all(b.blocks and b.rows for b in sink.batches)

    def table(cols, packed):  # a batch's rows (in any order: a file's are sorted when read) by seq
        ends = np.cumsum(packed.lengths)
        values = [packed.flat[e - n : e].tolist() for e, n in zip(ends, packed.lengths)]
        rows = zip(*[c.to_pylist() for c in cols.values()], values)
        return sorted(rows, key=lambda row: row[list(cols).index("seq")])

    joined = table(*Batch.joined(sink.batches).encode())
    alone = sorted((r for b in sink.batches for r in table(*b.encode())), key=lambda row: row[1])
    assert joined == alone and len(joined) > 20


def test_clones_are_flattened_a_few_at_a_time(monkeypatch):
    monkeypatch.setattr(_staging, "CLONES", 2)
    sink = _Sink()
    staging = Staging(sink, flush_seconds=3600)
    tensors = [torch.full((2, 3), float(i)).t() for i in range(5)]  # not contiguous: copied as they read
    for i, t in enumerate(tensors):
        gid, slot = staging.copy(t)
        staging.row((0, i, "activation", "m", i, "", "Linear", (3, 2), "float32", 6, True, True, None,
                     None, None, gid, slot))  # fmt: skip
        t.add_(100)  # changed in place after its row: the row keeps the value it had
    staging.seal()
    (batch,) = sink.batches
    assert [12, 12, 6] == [f.numel() for f in batch.flats]
    _, packed = batch.encode()
    assert packed.flat.tolist() == torch.cat([(t - 100).reshape(-1) for t in tensors]).tolist()
