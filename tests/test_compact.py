"""Small data files merged into large ones in the background: every row read exactly once,
at every moment, and a long run ends as a few files."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch
from torch import nn

import tracer
import tracer._compact as compact
from tracer._compact import Compactor, Part, uncovered


def _train(path, steps, *, flush_seconds=0.01, pause_every=5, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=path, flush_seconds=flush_seconds, **options) as run:
        for i in range(steps):
            opt.zero_grad()
            model(torch.randn(2, 3)).pow(2).mean().backward()
            opt.step()
            if i % pause_every == 0:
                time.sleep(flush_seconds * 1.5)  # let each flush be a file of its own
    return run


@pytest.fixture
def fanout_4(monkeypatch):
    monkeypatch.setattr(compact, "FANOUT", 4)


def test_a_part_name_says_the_range_of_file_numbers_it_holds():
    merged = Part.parse("part-00000-0a1b2c3d-000016-000031.parquet")
    one = Part.parse("part-00000-0a1b2c3d-000020.parquet")
    other_session = Part.parse("part-00000-ffffffff-000020.parquet")
    assert (merged.first, merged.last) == (16, 31) and merged.name() == "part-00000-0a1b2c3d-000016-000031.parquet"
    assert merged.covers(one) and not merged.covers(other_session) and not merged.covers(merged)
    assert Part.parse("part-00000-0a1b2c3d-000031-000016.parquet") is None  # a backwards range is no part
    assert Part.parse("notes.parquet") is None


def test_a_covered_file_is_not_listed(tmp_path):
    names = ["part-00000-0a1b2c3d-000000-000003.parquet", "part-00000-0a1b2c3d-000002.parquet",
             "part-00000-0a1b2c3d-000004.parquet", "part-00001-0a1b2c3d-000002.parquet", "mine.parquet"]  # fmt: skip
    kept = uncovered([tmp_path / n for n in names])
    assert [p.name for p in kept] == [names[0], names[2], names[3], names[4]]


def test_a_long_run_ends_as_a_few_files_with_every_row_once(tmp_path, fanout_4):
    path = tmp_path / "run"
    run = _train(path, 300)
    files = sorted(p.name for p in path.glob("*.parquet"))
    meta = json.loads((path / "_tracer.json").read_text())
    assert sorted(meta["files"]) == files  # the metadata names what is on disk
    assert any(Part.parse(f).last > Part.parse(f).first for f in files)  # merges happened
    df = tracer.load(path)
    assert len(df) == 300 * 25 and not df.duplicated(["rank", "seq"]).any()
    assert (df["seq"].diff().dropna() > 0).all()  # training order
    assert sorted(set(df["step"])) == list(range(300))
    assert run.step == 300
    small = sum(Part.parse(f).first == Part.parse(f).last for f in files)
    assert len(files) <= 3 * 4 + 1 and small <= 1, files  # at most FANOUT - 1 per level, leftovers merged


def test_a_reader_during_merges_sees_every_row_once_and_never_fewer(tmp_path, fanout_4):
    path = tmp_path / "run"
    counts: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def read_all():
        while not stop.is_set():
            if not (path / "_tracer.json").exists():
                time.sleep(0.005)
                continue
            try:
                df = tracer.load(path, columns=["step", "rank", "seq"])
            except tracer.TraceFormatError as exc:  # pragma: no cover - what this test is for
                problems.append(str(exc))
                continue
            if df.duplicated(["rank", "seq"]).any():
                problems.append(f"duplicated rows after {len(counts)} reads")
            counts.append(len(df))

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        _train(path, 200)
    finally:
        stop.set()
        reader.join()
    assert not problems, problems[:3]
    assert len(counts) > 5
    assert counts == sorted(counts)  # rows, once readable, stay readable
    assert len(tracer.load(path)) == 200 * 25


def test_a_crash_between_rename_and_deletion_reads_each_row_once(tmp_path):
    path = tmp_path / "run"
    _train(path, 40, pause_every=1, flush_seconds=0.02)
    files = sorted(path.glob("*.parquet"))
    assert len(files) >= 2
    before = tracer.load(path)
    # the state a kill leaves after the merged file is renamed but before its sources go
    shutil.copytree(path, tmp_path / "crashed")
    crashed = tmp_path / "crashed"
    sources = sorted(p.name for p in crashed.glob("*.parquet"))
    parts = [Part.parse(n) for n in sources]
    merged = Part(parts[0].rank, parts[0].session, min(p.first for p in parts), max(p.last for p in parts))
    merger = Compactor(crashed, int(parts[0].rank), parts[0].session)
    merger.close(final_merge=False)
    merger._write(sources, crashed / merged.name())
    after = tracer.load(crashed)
    assert len(after) == len(before) and not after.duplicated(["rank", "seq"]).any()
    assert after["seq"].tolist() == before["seq"].tolist()
    _train(crashed, 2, overwrite=True)  # overwrite removes the covered files too: they are tracer's
    assert len(tracer.load(crashed)) == 2 * 25


def test_a_file_merged_away_while_listed_is_read_from_the_merged_file(tmp_path, monkeypatch):
    import tracer._reader as reader

    path = tmp_path / "run"
    _train(path, 20, pause_every=1, flush_seconds=0.02, overwrite=False)
    expected = tracer.load(path)
    stale = reader.data_files(path)
    assert len(stale) >= 1
    ghost = path / "part-00000-00000000-000000.parquet"  # listed once, gone when read
    shutil.copy(stale[0], ghost)
    listings = iter([[ghost, *stale]])
    real = reader.data_files

    def listing_once(p):
        result = next(listings, None)
        if result is not None:
            ghost.unlink()
            return result
        return real(p)

    monkeypatch.setattr(reader, "data_files", listing_once)
    got = tracer.load(path)
    assert len(got) == len(expected) and got["seq"].tolist() == expected["seq"].tolist()


def test_a_failed_file_number_does_not_stop_merging(tmp_path):
    merger = Compactor(tmp_path, 0, "0a1b2c3d")
    try:
        assert merger._due() is None
        for index in range(compact.FANOUT):
            merger.done(index, None)  # no file: nothing to read, the range stays contiguous
    finally:
        merger.close(final_merge=False)
    assert merger.error is None
