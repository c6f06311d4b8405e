"""The trace directory on disk: overwrite rules, atomic files, load errors, crash safety."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer
import tracer._encode
from tracer._schema import COLUMNS as SCHEMA_NAMES
from tracer._schema import Row


def _trace_once(path, **kwargs):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=path, **kwargs) as run:
        train_reference(model, x, y, loss_fn, opt)
    return run


def test_layout_only_finished_files_end_in_parquet(reference_trace):
    names = sorted(p.name for p in reference_trace.iterdir())
    assert "_tracer.json" == names[0]
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in names[1:])
    meta = json.loads((reference_trace / "_tracer.json").read_text())
    assert meta["complete"] is True and 1 == meta["steps"]
    (optimizer,) = meta["optimizers"]
    assert {"class": "SGD", "qualname": "torch.optim.sgd.SGD", "bases": []}.items() <= optimizer.items()
    weight = {"name": "weight", "shape": [1, 2], "dtype": "float64", "requires_grad": True,
              "optimizer": 0, "param_group": 0}  # fmt: skip
    assert weight == meta["parameters"][0]
    schema = pq.read_schema(next(reference_trace.glob("*.parquet")))
    assert str(tracer.SCHEMA_VERSION).encode() == schema.metadata[b"tracer.schema_version"]


def test_existing_trace_is_refused_without_overwrite(reference_trace):
    before = sorted(p.name for p in reference_trace.iterdir())
    with pytest.raises(FileExistsError, match="already holds a trace; pass overwrite=True"):
        _trace_once(reference_trace)
    assert before == sorted(p.name for p in reference_trace.iterdir())


def test_overwrite_replaces_the_trace_and_keeps_foreign_files(reference_trace):
    (reference_trace / "notes.txt").write_text("mine")
    (reference_trace / "sub").mkdir()
    (reference_trace / "sub" / "keep.bin").write_bytes(b"x")
    old = {p.name for p in reference_trace.glob("part-*.parquet")}
    _trace_once(reference_trace, overwrite=True)
    assert "mine" == (reference_trace / "notes.txt").read_text()
    assert (reference_trace / "sub" / "keep.bin").exists()
    new = {p.name for p in reference_trace.glob("part-*.parquet")}
    assert not old & new
    assert 1 == len(tracer.load(reference_trace, kind="loss"))


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_of_other_parquet_files_is_refused(tmp_path, overwrite):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "data.parquet")
    pq.write_table(pa.table({"a": [2]}), tmp_path / "part-00000.parquet")  # Spark's, Hive's
    with pytest.raises(
        FileExistsError, match=r"holds Parquet files that tracer did not write \(data.parquet, part-00000.parquet\)"
    ):
        _trace_once(tmp_path, overwrite=overwrite)
    assert ["data.parquet", "part-00000.parquet"] == sorted(p.name for p in tmp_path.iterdir())


def _foreign_parquet(path, name):
    """A Parquet file that pyarrow wrote at ``path / name``: no tracer footer."""
    pq.write_table(pa.table({"step": [0]}), path / name)
    return path / name


def test_a_tracer_like_name_without_tracer_footer_is_not_a_trace(tmp_path):
    from tracer._directory import check_destination, is_trace

    _foreign_parquet(tmp_path, "part-00000-0123abcd-000000.parquet")
    assert not is_trace(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="tracer did not write .part-00000-0123abcd-000000.parquet"):
            check_destination(tmp_path, overwrite=overwrite)
    assert (tmp_path / "part-00000-0123abcd-000000.parquet").exists()


def test_a_trace_without_metadata_is_a_trace(reference_trace):
    from tracer._directory import check_destination, is_trace

    (reference_trace / "_tracer.json").unlink()  # e.g. a rank other than 0 wrote only data
    assert is_trace(reference_trace)
    with pytest.raises(FileExistsError, match="already holds a trace"):
        check_destination(reference_trace, overwrite=False)
    check_destination(reference_trace, overwrite=True)


def test_foreign_parquet_beside_a_trace_is_refused_and_nothing_deleted(reference_trace):
    _foreign_parquet(reference_trace, "part-00000-0123abcd-000000.parquet")
    (reference_trace / "sub").mkdir()
    _foreign_parquet(reference_trace / "sub", "part-0000.parquet")  # tracer.load would read it too
    before = sorted(p.name for p in reference_trace.rglob("*"))
    for overwrite in (False, True):
        shown = re.escape(f"(part-00000-0123abcd-000000.parquet, {os.path.join('sub', 'part-0000.parquet')})")
        with pytest.raises(FileExistsError, match=f"did not write {shown}"):
            _trace_once(reference_trace, overwrite=overwrite)
    assert before == sorted(p.name for p in reference_trace.rglob("*"))


def test_overwrite_deletes_every_ranks_files_and_only_those(tmp_path):
    from tracer._directory import prepare_directory
    from tracer._store import Writer
    from tracer._tensors import capture

    path = tmp_path / "t"
    _trace_once(path)
    rank1 = Writer(path, rank=1, flush_seconds=60)
    rank1.put(Row(0, 0, "loss", "", 0, "", None, capture(torch.ones(1), None)))
    rank1.close()
    (path / ".part-00002-89abcdef-000000.tmp").write_bytes(b"half")  # a killed rank's file
    (path / "._tracer.json.0123abcd.tmp").write_text("{")  # killed while writing the metadata
    kept = ["notes.txt", "part-00000-notes.txt", ".part-x.tmp", "_tracer.json.bak", "part-00000-0123abcd-000000.csv"]
    for name in kept:
        (path / name).write_text("mine")
    with pytest.raises(FileExistsError, match="already holds a trace"):
        prepare_directory(path, overwrite=False)
    assert rank1.files and all((path / name).exists() for name in rank1.files)
    prepare_directory(path, overwrite=True)  # rank 0 prepares for every rank
    assert sorted(kept) == sorted(p.name for p in path.iterdir())


def test_a_listed_data_file_is_deleted_even_when_its_footer_is_unreadable(reference_trace):
    from tracer._directory import prepare_directory

    (data,) = reference_trace.glob("part-*.parquet")
    meta = json.loads((reference_trace / "_tracer.json").read_text())
    assert [data.name] == meta["files"]  # what the session writes from Writer.files
    data.write_bytes(data.read_bytes()[:100])  # truncated: no footer left to vouch for it
    prepare_directory(reference_trace, overwrite=True)
    assert [] == list(reference_trace.iterdir())


def test_an_unlisted_data_file_with_an_unreadable_footer_is_kept(reference_trace):
    from tracer._directory import prepare_directory

    (data,) = reference_trace.glob("part-*.parquet")
    data.write_bytes(b"PAR1 not parquet")
    meta = json.loads((reference_trace / "_tracer.json").read_text())
    meta["files"] = []
    (reference_trace / "_tracer.json").write_text(json.dumps(meta))
    with pytest.raises(FileExistsError, match=f"did not write .{data.name}"):
        prepare_directory(reference_trace, overwrite=True)
    assert data.exists() and (reference_trace / "_tracer.json").exists()


def _leftovers(path):
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".tmp"))


def test_write_json_atomic_removes_its_temporary_file_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from tracer._directory import write_json_atomic

    target = tmp_path / "_tracer.json"
    write_json_atomic(target, {"v": 1})
    write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)  # half of it made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        write_json_atomic(target, {"v": 2})
    monkeypatch.undo()
    assert [] == _leftovers(tmp_path)
    assert {"v": 1} == json.loads(target.read_text())  # the old file, whole


def test_write_json_atomic_removes_its_temporary_file_when_the_rename_fails(tmp_path):
    from tracer._directory import write_json_atomic

    target = tmp_path / "_tracer.json"
    target.mkdir()  # a directory in the way: the rename fails
    (target / "x").write_text("")
    with pytest.raises(OSError):
        write_json_atomic(target, {"v": 1})
    assert [] == _leftovers(tmp_path)


def test_a_file_path_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        _trace_once(tmp_path / "f")


def test_filtered_load(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt, steps=4)
    assert {"grad"} == set(tracer.load(run, kind="grad").kind)
    assert [2] == tracer.load(run, kind="loss", step=2).step.tolist()
    assert [1, 2] == tracer.load(run, kind="loss", step=slice(1, 3)).step.tolist()
    assert [0, 3] == tracer.load(run, kind="loss", step=[0, 3]).step.tolist()
    assert ["weight"] * 4 == tracer.load(run, kind="grad", name="weight").name.tolist()
    assert {"weight", "bias"} == set(tracer.load(run, kind="grad", name="*").name)
    cols = tracer.load(run, kind="loss", columns=["step", "values"])
    assert ["step", "values"] == list(cols.columns)
    with pytest.raises(ValueError, match=r"unknown columns \['nope'\]"):
        tracer.load(run, columns=["nope"])


def _mlp_trace(path, steps=3, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 32, dtype=torch.float64), torch.randn(16, 32, dtype=torch.float64)
    with tracer.trace(model, opt, path=path, max_values=None, flush_seconds=60, **kwargs):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()


def test_large_files_are_grouped_by_kind_and_name_and_load_restores_training_order(tmp_path, monkeypatch):
    _mlp_trace(tmp_path / "plain")
    monkeypatch.setattr(tracer._encode, "ROW_GROUP_BYTES", 16 << 10)
    monkeypatch.setattr(tracer._encode, "_MIN_GROUP_BYTES", 4 << 10)
    _mlp_trace(tmp_path / "grouped")

    (file,) = (tmp_path / "grouped").glob("*.parquet")
    meta = pq.ParquetFile(file).metadata
    assert meta.num_row_groups > 8
    kind_col, name_col = SCHEMA_NAMES.index("kind"), SCHEMA_NAMES.index("name")
    for i in range(meta.num_row_groups):
        kind = meta.row_group(i).column(kind_col).statistics
        assert kind.has_min_max and kind.min == kind.max  # a group never spans two kinds
    weight_groups = [
        meta.row_group(i).column(name_col).statistics
        for i in range(meta.num_row_groups)
        if meta.row_group(i).column(kind_col).statistics.min == "grad"
    ]
    assert {(g.min, g.max) for g in weight_groups} >= {("0.weight", "0.weight"), ("2.weight", "2.weight")}

    plain, grouped = tracer.load(tmp_path / "plain"), tracer.load(tmp_path / "grouped")
    assert list(grouped.seq) == sorted(grouped.seq) and list(grouped.step) == sorted(grouped.step)
    columns = [c for c in plain.columns if c not in ("values", "shape")]
    pd.testing.assert_frame_equal(plain[columns], grouped[columns])
    for a, b in zip(plain["values"], grouped["values"]):
        assert np.array_equal(a, b)
    assert not grouped["values"][0].flags.writeable  # a view of the Arrow buffer, not a copy

    grads = tracer.load(tmp_path / "grouped", kind="grad", name="2.weight")
    assert grads.step.tolist() == [0, 1, 2]
    assert tracer.load(tmp_path / "grouped", kind="loss", step=1).step.tolist() == [1]


def test_load_errors_name_the_problem(tmp_path, reference_trace):
    with pytest.raises(tracer.TraceFormatError, match="does not exist"):
        tracer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(tracer.TraceFormatError, match="is not a trace"):
        tracer.load(tmp_path / "empty")
    bad = reference_trace / "part-00000-broken-000009.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(tracer.TraceFormatError, match="corrupt trace file .*part-00000-broken-000009"):
        tracer.load(reference_trace)
    bad.unlink()
    meta = json.loads((reference_trace / "_tracer.json").read_text())
    meta["schema_version"] = 99
    (reference_trace / "_tracer.json").write_text(json.dumps(meta))
    with pytest.raises(tracer.TraceFormatError, match="schema v99, newer than this tracer reads"):
        tracer.load(reference_trace)
    with pytest.raises(TypeError, match="a trace is a path, a tracer.Run"):
        tracer.load(3)


def test_a_parquet_file_without_the_trace_schema_is_refused(reference_trace):
    pq.write_table(pa.table({"step": [1]}), reference_trace / "part-00000-foreign-000001.parquet")
    with pytest.raises(tracer.TraceFormatError, match="not a tracer data file"):
        tracer.load(reference_trace)


def test_hostile_module_names_round_trip_and_stay_inside(tmp_path):
    names = ["/etc/passwd", "<script>alert(1)</script>", "new\nline", "é" * 300, "a/b\\c", "x" * 10_000]
    model = nn.ModuleDict({n: nn.Linear(1, 1) for n in names})
    with tracer.trace(model, path=tmp_path / "t") as run:
        for n in names:
            model[n](torch.ones(1, 1))
    assert ["t"] == [p.name for p in tmp_path.iterdir()]
    assert names == tracer.load(run, kind="activation").name.tolist()


def test_writer_flushes_while_training_runs(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t", flush_seconds=0.05) as run:
        train_reference(model, x, y, loss_fn, opt)
        deadline = time.monotonic() + 5
        while not list(run.path.glob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(run.path.glob("*.parquet")), "nothing flushed within the flush interval"


@pytest.mark.parametrize("threads", [1, 2])
def test_writer_threads_write_every_row_once_and_flush_waits_for_them(tmp_path, threads):
    from tracer._store import Writer
    from tracer._tensors import capture

    writer = Writer(tmp_path, flush_seconds=60, max_queue_bytes=1 << 16, threads=threads)  # many small files
    tensors = [torch.full((1000,), float(i), dtype=torch.float64) for i in range(60)]
    for i, t in enumerate(tensors[:40]):
        writer.put(Row(0, i, "grad", f"p{i}", 0, "", None, capture(t, None)))
    writer.flush()  # returns only when every row put so far is in a finished file
    assert 40 == sum(pq.ParquetFile(f).metadata.num_rows for f in tmp_path.glob("*.parquet"))
    for i, t in enumerate(tensors[40:], start=40):
        writer.put(Row(1, i, "grad", f"p{i}", 0, "", None, capture(t, None)))
    writer.close()
    assert writer.files_written > 2 and writer.rows_written == 60 and writer.error is None
    assert sorted(writer.files) == sorted(p.name for p in tmp_path.iterdir())
    assert writer.merges >= 1 and len(writer.files) < writer.files_written  # small files merged (tracer._compact)
    frame = tracer.load(tmp_path)
    assert frame.seq.tolist() == list(range(60))
    assert [float(v[0]) for v in frame["values"]] == [float(i) for i in range(60)]


def test_flush_waits_for_an_earlier_file_that_finishes_last(tmp_path, monkeypatch):
    import threading

    from tracer._store import Writer
    from tracer._tensors import capture

    gate = threading.Event()
    write = Writer._write

    def slow_first_file(self, rows, index, values):
        if index == 0:
            gate.wait(10)
        return write(self, rows, index, values)

    monkeypatch.setattr(Writer, "_write", slow_first_file)
    writer = Writer(tmp_path, flush_seconds=60, max_queue_bytes=1 << 16, threads=2)  # 2 rows a file
    rows = [
        (0, i, "grad", f"p{i}", 0, "", None, capture(torch.ones(1000, dtype=torch.float64), None)) for i in range(4)
    ]
    for row in rows[:2]:
        writer.put(Row(*row))
    deadline = time.monotonic() + 5
    while 0 not in writer._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    flushed = threading.Thread(target=writer.flush)  # must wait for file 0 (rows 0 and 1)
    flushed.start()
    for row in rows[2:]:  # file 1, written at once by the other thread
        writer.put(Row(*row))
    time.sleep(0.3)
    assert flushed.is_alive(), "flush returned before file 0 was written"
    gate.set()
    flushed.join(10)
    assert not flushed.is_alive()
    writer.close()
    assert tracer.load(tmp_path).seq.tolist() == [0, 1, 2, 3]


def _row(seq, step=0):
    from tracer._tensors import capture

    return Row(step, seq, "grad", f"p{seq % 8}", 0, "", None, capture(torch.ones(4), None))


def _slow_writes(monkeypatch, *, per_file, per_row):
    """Make every file take ``per_file + per_row * rows`` seconds longer: a slow machine."""
    from tracer._store import Writer

    write = Writer._write

    def slow_write(self, rows, index, values):
        time.sleep(per_file + per_row * len(rows))
        return write(self, rows, index, values)

    monkeypatch.setattr(Writer, "_write", slow_write)


def _ages(directory, files, put_at):
    """Each file's age when it became readable: its rename time less its oldest row's put time."""
    return [f.renamed - min(put_at[s] for s in pq.read_table(directory / f.name, columns=["seq"])["seq"].to_pylist())
            for f in files]  # fmt: skip


def test_a_row_is_readable_within_flush_seconds_of_its_put_when_writing_is_slow(tmp_path, monkeypatch):
    from tracer._store import Writer

    flush = 0.5
    # ~0.2 s to write the ~450 rows of one flush interval: a file started at the flush
    # deadline (as before) renames its oldest row ~0.7 s after it was put
    _slow_writes(monkeypatch, per_file=0.05, per_row=0.25e-3)
    files, put_at = [], {}
    writer = Writer(tmp_path, flush_seconds=flush, on_file=files.append, compact=False)  # files read by name
    seq, end = 0, time.monotonic() + 3.5
    while time.monotonic() < end:
        for _ in range(20):  # a training step's rows, then the rest of the step
            put_at[seq] = time.monotonic()
            writer.put(_row(seq, step=seq // 20))
            seq += 1
        time.sleep(0.02)
    last_put = time.monotonic()
    writer.close()
    assert writer.error is None and writer.rows_written == seq
    timely = [f for f in files if f.renamed <= last_put]  # close() writes the rest at once
    ages = _ages(tmp_path, timely, put_at)
    assert len(timely) >= 4, f"only {len(timely)} files: the test did not run long enough"
    assert max(ages) <= flush + 0.1, f"rows became readable {max(ages):.3f} s after they were put"
    assert all(f.oldest_put >= put_at[0] and f.renamed > f.started for f in files)


def test_a_file_takes_no_more_rows_than_it_can_write_in_time(tmp_path, monkeypatch):
    from tracer._store import Writer

    flush = 0.5
    _slow_writes(monkeypatch, per_file=0.0, per_row=0.5e-3)  # 1,200 rows: 0.6 s in one file
    files, put_at = [], {}
    writer = Writer(tmp_path, flush_seconds=flush, threads=2, on_file=files.append, compact=False)
    for seq in range(100):  # one file first, so the writer knows how long rows take here
        put_at[seq] = time.monotonic()
        writer.put(_row(seq))
    writer.flush()
    calibration = len(files)
    for seq in range(100, 1300):  # then a burst: too much for one file in time
        put_at[seq] = time.monotonic()
        writer.put(_row(seq, step=1))
    writer.close()
    burst = files[calibration:]
    assert writer.error is None and sum(f.rows for f in burst) == 1200
    assert len(burst) >= 2
    assert max(f.renamed - f.started for f in burst) <= flush
    first = min(burst, key=lambda f: f.started)
    assert _ages(tmp_path, [first], put_at)[0] <= flush + 0.1


def test_a_tensor_too_large_for_a_list_keeps_its_statistics(tmp_path, monkeypatch):
    monkeypatch.setattr(tracer._encode, "MAX_LIST_VALUES", 100)
    model = nn.Linear(10, 20)  # weight: 200 elements, bias: 20
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t", max_values=None, capture=["param"]) as run:
        model(torch.ones(1, 10)).sum().backward()
        opt.step()
    params = tracer.load(run).set_index("name")
    assert params.loc["weight", "values"] is None and params.loc["weight", "norm"] > 0
    assert len(params.loc["bias", "values"]) == 20


def test_copies_are_made_on_the_cpu_whatever_the_default_device():
    from tracer._tensors import CopyPool, capture

    pool = CopyPool(1 << 30)
    big, small = torch.arange(CopyPool.POOLED + 1.0), torch.arange(10.0)
    with torch.device("meta"):
        assert pool.empty((CopyPool.POOLED,), torch.float32).device.type == "cpu"
        assert capture(big, None, pool).values.device.type == "cpu"
        assert capture(small, None, pool).values.device.type == "cpu"


def test_write_failure_is_raised_and_training_is_untouched(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    path = tmp_path / "t"
    with (
        pytest.raises(tracer.TraceWriteError, match="could not write"),
        tracer.trace(model, opt, path=path, flush_seconds=0.01) as run,
    ):
        train_reference(model, x, y, loss_fn, opt)
        run.flush()
        for f in path.iterdir():
            f.unlink()
        path.rmdir()  # the directory disappears mid-run
        train_reference(model, x, y, loss_fn, opt)
        run.flush()  # the writer fails here, on its thread
        train_reference(model, x, y, loss_fn, opt)  # raised at the next step boundary
        pytest.fail("the write error was not raised")
    # raised at the end of the step during which the writer failed (the second or the
    # third: a file may start before the second step ends), after that step's update
    assert run.step in (2, 3)
    plain, x, y, loss_fn, plain_opt = make_reference()
    train_reference(plain, x, y, loss_fn, plain_opt, steps=run.step)
    assert torch.equal(plain.weight, model.weight)  # every update happened, untouched


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch, tracer
    from torch import nn
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=sys.argv[1], flush_seconds=0.1) as run:
        step = 0
        while True:
            opt.zero_grad()
            model(torch.ones(2, 4)).sum().backward()
            opt.step()
            step += 1
            if step % 10 == 0:
                print(step, flush=True)
            time.sleep(0.002)
    """
)


@pytest.mark.slow
def test_sigkill_mid_run_leaves_a_loadable_trace(tmp_path):
    path = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        last = 0
        deadline = time.monotonic() + 60
        while last < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
        time.sleep(0.3)  # let at least one more flush happen after `last`
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert last >= 200, "the traced subprocess did not get going"
    assert not [p for p in path.iterdir() if p.suffix == ".parquet" and p.name.startswith(".")]
    df = tracer.load(path)
    assert df.step.max() >= last - 1  # at most ~flush_seconds of steps lost
    assert {"input", "activation", "loss", "grad", "param", "update"} <= set(df.kind)


def test_a_schema_version_1_file_reads_with_the_later_columns_null(reference_trace, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from tracer._schema import V1_COLUMNS

    old = tmp_path / "v1"
    shutil.copytree(reference_trace, old)
    for file in old.glob("*.parquet"):
        table = pq.read_table(file).select(list(V1_COLUMNS))
        pq.write_table(table.replace_schema_metadata({b"tracer.schema_version": b"1"}), file)
    df = tracer.load(old)
    new = tracer.load(reference_trace)
    assert list(new.columns) == list(df.columns)
    assert df["rule_error"].isna().all() and df["placements"].isna().all()
    assert new["values"].map(list).tolist() == df["values"].map(list).tolist()
