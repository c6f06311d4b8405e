"""Corrupt, foreign and hostile traces: clear errors naming the file, never a hang or code."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _reference import trace_reference
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_cli import (
    assert_clean_or_one_error_line,
    assert_one_error_line,
    command_line,
    subcommands,
)
from test_store import _KILL_SCRIPT

import tracer
from tracer._schema import SCHEMA


def _data_file(trace):
    return next(trace.glob("part-*.parquet"))


def test_truncated_file_is_named_and_can_be_skipped(reference_trace):
    good = _data_file(reference_trace)
    data = good.read_bytes()
    bad = reference_trace / "part-00000-cut-000001.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(tracer.TraceFormatError, match="part-00000-cut-000001.parquet"):
        tracer.load(reference_trace)
    with pytest.warns(RuntimeWarning, match="skipped corrupt trace file .*cut-000001"):
        df = tracer.load(reference_trace, errors="skip")
    assert 10 == len(df)
    with pytest.raises(ValueError, match="errors must be 'raise' or 'skip'"):
        tracer.load(reference_trace, errors="ignore")


def test_bad_metadata_is_a_clear_error(reference_trace):
    (reference_trace / "_tracer.json").write_text("{not json")
    with pytest.raises(tracer.TraceFormatError, match="_tracer.json.*not valid trace metadata"):
        tracer.load(reference_trace)


def test_a_column_name_that_is_not_utf8_is_a_clear_error(reference_trace):
    path = _data_file(reference_trace)
    data = path.read_bytes()
    i = data.index(b"\x07element") + 1  # a column name (Thrift: length, then UTF-8 bytes)
    path.write_bytes(data[:i] + b"\x80" + data[i + 1 :])
    with pytest.raises(tracer.TraceFormatError, match=f"corrupt trace file .*{path.name}"):
        tracer.load(reference_trace)


def test_a_schema_version_that_is_not_utf8_is_a_clear_error(reference_trace):
    path = _data_file(reference_trace)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"tracer.schema_version": b"\xa8"}), path)
    with pytest.raises(tracer.TraceFormatError, match="unreadable schema version"):
        tracer.load(reference_trace)


# derandomize: the same 60 examples in every run, so CI never fails by chance; a longer
# random fuzz (150,000 mutations) found the two non-UTF-8 cases tested above
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=10_000),
    noise=st.binary(min_size=0, max_size=64),
    where=st.sampled_from(["truncate", "overwrite", "append", "random"]),
    command=st.sampled_from(subcommands()),
)
def test_fuzz_corrupt_data_files_never_crash_load(reference_trace, tmp_path, cut, noise, where, command):
    path = _data_file(reference_trace)
    original = path.read_bytes()
    if where == "truncate":
        mutated = original[: cut % max(len(original), 1)]
    elif where == "overwrite":
        i = cut % max(len(original), 1)
        mutated = original[:i] + noise + original[i + len(noise) :]
    elif where == "append":
        mutated = original + noise
    else:
        mutated = noise
    path.write_bytes(mutated)
    try:
        try:
            df = tracer.load(reference_trace)  # either loads (the change was harmless) ...
            assert {"step", "kind", "values"} <= set(df.columns)
        except tracer.TraceFormatError as exc:  # ... or says which file is bad
            assert path.name in str(exc) or "could not read trace" in str(exc)
        assert_clean_or_one_error_line(command_line(command, reference_trace, reference_trace, tmp_path))
    finally:
        path.write_bytes(original)


# --------------------------------------------------------------------------- damaged rows


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Two SGD steps of the reference example: one data file of 20 rows."""
    return trace_reference(tmp_path_factory.mktemp("rows") / "good", steps=2)


def _damaged(good: Path, where: Path, column: str, row: int, value) -> Path:
    """A copy of ``good`` whose data file holds ``value`` in ``column`` at ``row``."""
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(good, where)
    file = _data_file(where)
    table = pq.read_table(file)
    cells = table[column].to_pylist()
    cells[row] = value
    loose = pa.schema([f.with_nullable(True) for f in SCHEMA], metadata=SCHEMA.metadata)  # nulls allowed
    arrays = [pa.array(cells, SCHEMA.field(c).type) if c == column else table[c] for c in SCHEMA.names]
    pq.write_table(pa.Table.from_arrays(arrays, schema=loose), file)
    return where


def _row_of(good: Path, kind: str, name: str) -> int:
    table = pq.read_table(_data_file(good))
    return next(
        i
        for i, (k, n) in enumerate(zip(table["kind"].to_pylist(), table["name"].to_pylist()))
        if (k, n) == (kind, name)
    )


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "column, kind, name, value, says",
    [
        ("name", "loss", "loss", None, "name is null"),
        ("step", "loss", "loss", 2**62, "step is 4611686018427387904, not a count"),
        ("step", "loss", "loss", -1, "step is -1, not a count"),
        ("call", "loss", "loss", 2**63 - 1, "call is 9223372036854775807"),
        ("part", "loss", "loss", None, "part is null"),
        ("rank", "loss", "loss", -3, "rank is -3"),
    ],
)
def test_a_bad_cell_every_command_reads_is_one_clear_line_everywhere(good, tmp_path, column, kind, name, value, says):
    trace = _damaged(good, tmp_path / "bad", column, _row_of(good, kind, name), value)
    file = _data_file(trace).name
    with pytest.raises(tracer.TraceFormatError, match=f"corrupt trace file .*{file}.*: the loss row"):
        tracer.load(trace)
    for words in subcommands():
        assert_one_error_line(command_line(words, trace, good, tmp_path), file, says)


@pytest.mark.parametrize(
    "column, kind, name, value, says",
    [
        ("shape", "grad", "weight", None, "the grad row of 'weight' at step 0 (seq 4): shape is null"),
        ("shape", "grad", "weight", [3], "shape [3] does not hold numel = 2 elements"),
        ("shape", "grad", "weight", [2**62, 0], "shape [4611686018427387904, 0] has a negative or huge dimension"),
        ("numel", "grad", "weight", 3, "shape [1, 2] does not hold numel = 3 elements"),
        ("values", "grad", "weight", [1.0, 2.0, 3.0], "it stores 3 values, not numel = 2 (float64)"),
        ("dtype", "grad", "weight", "complex128", "it stores 2 values, not 2 x numel = 4 (complex128)"),
        ("hparams", "update", "weight", "[1]", "hparams must be a JSON object (got a list)"),
        ("hparams", "update", "weight", "null", "hparams must be a JSON object (got null)"),
        ("hparams", "update", "weight", '{"lr": 0.01', "hparams is not valid JSON"),
        ("hparams", "update", "weight", DEEP, "hparams is not valid JSON: it is nested too deeply"),
    ],
)
def test_a_bad_cell_is_a_clear_error_naming_the_file(good, tmp_path, column, kind, name, value, says):
    trace = _damaged(good, tmp_path / "bad", column, _row_of(good, kind, name), value)
    file = _data_file(trace).name
    with pytest.raises(tracer.TraceFormatError) as info:
        tracer.load(trace)
    assert f"corrupt trace file {str(trace / file)!r}" in str(info.value) and says in str(info.value)
    assert_one_error_line(command_line(("report",), trace, good, tmp_path), file, says)
    for words in subcommands():  # a command that does not read the column may run
        assert_clean_or_one_error_line(command_line(words, trace, good, tmp_path))
    with pytest.warns(RuntimeWarning, match=f"skipped corrupt trace file .*{file}"):
        assert tracer.load(trace, errors="skip").empty


def test_a_filter_that_leaves_the_bad_row_out_reads_the_rest(good, tmp_path):
    trace = _damaged(good, tmp_path / "bad", "shape", _row_of(good, "grad", "weight"), [3])
    assert 2 == len(tracer.load(trace, kind="loss"))


# a damaged cell: (column, strategy of bad values); rows are drawn from all 20
_COUNT = st.integers(-(2**63), -1) | st.integers(2**53, 2**63 - 1)
_NOT_AN_OBJECT = st.text(max_size=12).filter(lambda t: not isinstance(_json_or_none(t), dict)) | st.sampled_from(
    ["[]", "1", '"lr"', "true", "null", "NaN", DEEP, '{"lr": ' + DEEP + "}"]
)
DAMAGES = st.one_of(
    st.tuples(st.sampled_from([f.name for f in SCHEMA if not f.nullable]), st.none()),
    st.tuples(st.sampled_from(["step", "seq", "call", "rank", "numel", "param_group"]), _COUNT),
    st.tuples(st.just("shape"), st.lists(st.integers(0, 4), max_size=4).filter(lambda s: _product(s) not in (1, 2))),
    st.tuples(st.just("shape"), st.lists(_COUNT, min_size=1, max_size=3)),
    st.tuples(st.just("values"), st.lists(st.floats(), min_size=3, max_size=6)),
    st.tuples(st.just("hparams"), _NOT_AN_OBJECT),
)


def _json_or_none(text):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _product(shape):
    out = 1
    for s in shape:
        out *= s
    return out


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(damage=DAMAGES, row=st.integers(0, 19), command=st.sampled_from(subcommands()))
def test_fuzz_a_bad_cell_anywhere(good, tmp_path_factory, damage, row, command):
    column, value = damage
    table = pq.read_table(_data_file(good))
    if column == "shape":  # the reference rows have 1 or 2 elements; a shape must not hold them
        assume(_product(value) != table["numel"][row].as_py() or any(v < 0 or v >= 2**53 for v in value))
    scratch = tmp_path_factory.mktemp("cell")
    trace = _damaged(good, scratch / "bad", column, row, value)
    with pytest.raises(tracer.TraceFormatError, match="corrupt trace file .*part-"):
        tracer.load(trace)
    assert_one_error_line(command_line(("report",), trace, good, scratch), "corrupt trace file")
    assert_clean_or_one_error_line(command_line(command, trace, good, scratch))


# --------------------------------------------------------------------------- names that are not UTF-8


def _undecodable(parent: Path, name: bytes) -> Path:
    """``parent / name`` for a name that is not UTF-8 (skips where the file system refuses it)."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(parent), name)))
    try:
        path.touch()
        path.unlink()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    return path


@pytest.mark.parametrize("layout", ["file", "directory"])
def test_a_data_file_name_that_is_not_utf8_is_named_and_can_be_skipped(good, tmp_path, layout):
    trace = tmp_path / "t"
    shutil.copytree(good, trace)
    if layout == "file":
        odd = _undecodable(trace, b"part-00000-\xff-000001.parquet")
    else:
        folder = _undecodable(trace, b"rank\xfe")
        folder.mkdir()
        odd = folder / "part-00001-x-000001.parquet"
    shutil.copy(_data_file(good), odd)
    with pytest.raises(tracer.TraceFormatError, match="has a name that is not valid UTF-8") as info:
        tracer.load(trace)
    assert repr(str(odd)) in str(info.value)
    with pytest.warns(RuntimeWarning, match="skipped trace file .* not valid UTF-8"):
        assert 20 == len(tracer.load(trace, errors="skip"))
    for words in subcommands():
        err = assert_one_error_line(command_line(words, trace, good, tmp_path), "not valid UTF-8")
        assert "\\udcff" in err or "\\udcfe" in err  # the undecodable byte, escaped


def test_other_files_with_names_that_are_not_utf8_are_ignored(good, tmp_path):
    trace = tmp_path / "t"
    shutil.copytree(good, trace)
    folder = _undecodable(trace, b"notes\xff")
    folder.mkdir()
    (folder / "read-me.txt").write_text("not a data file")
    assert 20 == len(tracer.load(trace))
    code = assert_clean_or_one_error_line(command_line(("summary",), trace, good, tmp_path))
    assert 0 == code


def test_a_trace_path_that_is_not_utf8_prints_escaped(good, tmp_path):
    trace = _undecodable(tmp_path, b"trace\xff")
    shutil.copytree(good, trace)
    err = assert_one_error_line(["summary", str(trace)], "not valid UTF-8", "\\udcff")
    assert "\udcff" not in err


@pytest.mark.slow
def test_repeated_sigkill_never_leaves_a_half_written_data_file(tmp_path):
    rng = random.Random(7)
    for attempt in range(4):
        path = tmp_path / f"k{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            proc.stdout.readline()  # training is under way
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        for file in path.glob("*.parquet"):
            assert not file.name.startswith(".")
        df = tracer.load(path)  # every finished file loads
        assert df.empty or df.step.min() == 0
