"""Parquet on disk: the trace directory and the background writers (reading: :mod:`tracer._reader`).

Layout of a trace directory::

    _tracer.json                               metadata (never ends in .parquet)
    part-<rank>-<session>-<index>.parquet      finished data files, one per flush
    .part-<rank>-<session>-<index>.tmp         a file being written (renamed when complete)
    ._tracer.json.<8 hex>.tmp                  metadata being written (renamed when complete)

``<rank>`` is 5 digits or more, ``<session>`` 8 hex digits, ``<index>`` 6 digits or more.
A data file is tracer's own when its name has this form and its footer carries
``tracer.schema_version`` (or ``_tracer.json`` lists it under ``"files"``); tracer deletes
no other file, and refuses a directory that holds other Parquet files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tracer._reader import data_files
from tracer._schema import COLUMNS, KINDS, META_FILE, SCHEMA, STRING_COLUMNS
from tracer._tensors import Captured, finish

_STAT_COLUMNS = ["step", "seq", "kind", "name", "call", "rank"]
_DATA_NAME = re.compile(r"part-\d{5,}-[0-9a-f]{8}-\d{6,}\.parquet")
_DATA_TMP_NAME = re.compile(r"\.part-\d{5,}-[0-9a-f]{8}-\d{6,}\.tmp")
_META_TMP_NAME = re.compile(re.escape(f".{META_FILE}.") + r"[0-9a-f]{8}\.tmp")
_VERSION_KEY = b"tracer.schema_version"  # in every data file's footer (see SCHEMA)


# --------------------------------------------------------------------------- directory


def is_trace(path: Path) -> bool:
    """True when ``path`` is a directory that holds a tracer trace (metadata or tracer's data files)."""
    if not path.is_dir():
        return False
    if (path / META_FILE).is_file():
        return True
    listed = _listed_files(path)
    return any(_is_own_data_file(file, listed) for file in path.iterdir())


def check_destination(path: Path, *, overwrite: bool) -> None:
    """Refuse, before anything is written, a path that cannot take a new trace.

    Raises FileExistsError when ``path`` is a file, holds Parquet files tracer did not
    write (whatever ``overwrite``: ``tracer.load`` would read them), or holds a trace and
    ``overwrite`` is False.
    """
    _own_files_to_replace(path, overwrite=overwrite)


def prepare_directory(path: Path, *, overwrite: bool) -> None:
    """Make ``path`` ready for a new trace by every rank: refused as by :func:`check_destination`,
    then (``overwrite``) the old trace's own files of every rank deleted, no other file."""
    own = _own_files_to_replace(path, overwrite=overwrite)
    own.sort(key=lambda file: file.name == META_FILE)  # the metadata last: it lists the files
    for file in own:
        file.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)


def _own_files_to_replace(path: Path, *, overwrite: bool) -> list[Path]:
    """The files of the trace at ``path`` (every rank's), or FileExistsError (see check_destination)."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"trace path {str(path)!r} is a file; pass a directory path")
    if not path.is_dir():
        return []
    listed = _listed_files(path)
    own = [file for file in path.iterdir() if _is_own_file(file, listed)]
    own_set = set(own)
    foreign = [file for file in data_files(path) if file not in own_set]
    if foreign:
        raise _holds_foreign_parquet(path, foreign)
    if own and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} already holds a trace; pass overwrite=True to replace it or choose another path"
        )
    return own


def _holds_foreign_parquet(path: Path, foreign: list[Path]) -> FileExistsError:
    names = sorted(str(file.relative_to(path)) for file in foreign)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return FileExistsError(
        f"{str(path)!r} holds Parquet files that tracer did not write ({shown}); choose an empty "
        "or new directory (overwrite=True deletes only tracer's own files)"
    )


def _is_own_file(file: Path, listed: set[str]) -> bool:
    """True for a file tracer wrote into a trace directory (see the module docstring)."""
    name = file.name
    if name == META_FILE or _DATA_TMP_NAME.fullmatch(name) or _META_TMP_NAME.fullmatch(name):
        return file.is_file()
    return _is_own_data_file(file, listed)


def _is_own_data_file(file: Path, listed: set[str]) -> bool:
    if not _DATA_NAME.fullmatch(file.name) or not file.is_file():
        return False
    return file.name in listed or has_tracer_footer(file)


def has_tracer_footer(file: Path) -> bool:
    """Whether ``file`` is a Parquet file whose footer carries tracer's schema version."""
    try:
        metadata = pq.read_schema(file).metadata or {}
    except (OSError, pa.ArrowException, UnicodeDecodeError):
        return False  # unreadable: only the metadata's list can vouch for it
    return _VERSION_KEY in metadata


def _listed_files(path: Path) -> set[str]:
    """The data file names ``_tracer.json`` lists under ``"files"`` (none when it cannot be read)."""
    try:
        files = json.loads((path / META_FILE).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in files if isinstance(name, str)} if isinstance(files, list) else set()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` as JSON in one rename: readers see the old file or the new one.

    On failure (a full disk) the temporary file is removed and the OSError re-raised.
    """
    text = json.dumps(data, indent=2, sort_keys=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- writing

Row = tuple  # (step, seq, kind, name, call, part, module_type, Captured, grad_enabled,
#             optimizer, param_group, hparams)
_Queued = tuple  # (Row, nbytes, time.monotonic() when it was put)


class FileWritten(NamedTuple):
    """One finished data file, as told to ``Writer(on_file=...)`` (internal: tests, measurements)."""

    name: str  # as in Writer.files
    rows: int
    oldest_put: float  # time.monotonic() when its oldest row was put
    started: float  # when writing it started
    renamed: float  # just after it was renamed into place: readable from then on


class _WriteTime:
    """How long writing a file takes, learnt from the files written so far.

    A file's cost is taken as linear in a weight: its rows' bytes, plus a byte-equivalent
    per row (Python work dominates small rows) and per file. The seconds per unit of weight
    are tracked like TCP's round-trip time (RFC 6298): a smoothed mean and mean deviation;
    the estimate, mean + 4 deviations, still covers a file slower than usual.
    """

    # measured on a busy 2-core server: ~70 us a small row, ~5 ns a byte of values, ~2 ms a file
    ROW_WEIGHT = 16 << 10
    FILE_WEIGHT = 512 << 10

    def __init__(self, seconds_per_weight: float = 10e-9) -> None:
        self._mean = seconds_per_weight  # until a file is timed: about twice what was measured
        self._deviation = seconds_per_weight / 2
        self.timed = False  # whether a file was timed yet

    @classmethod
    def weight(cls, rows: int, nbytes: int) -> float:
        return nbytes + cls.ROW_WEIGHT * rows + cls.FILE_WEIGHT

    def seconds(self, weight: float) -> float:
        """The estimated seconds a file of ``weight`` takes to write."""
        return (self._mean + 4 * self._deviation) * weight

    def weight_in(self, seconds: float) -> float:
        """The weight whose estimated write time is ``seconds``."""
        return seconds / (self._mean + 4 * self._deviation)

    def record(self, weight: float, seconds: float) -> None:
        error = seconds / weight - self._mean
        self._mean += error / 8
        self._deviation += (abs(error) - self._deviation) / 4
        self.timed = True


class Writer:
    """Writes rows to Parquet files on background threads, through a bounded queue.

    ``put`` blocks while more than ``max_queue_bytes`` wait to be written, so memory stays
    flat whatever the run length. A row is readable (its file renamed into place) at most
    ``flush_seconds`` after it was put, as long as the writers keep up: a file starts when
    the oldest waiting row's age plus the estimated time to write the waiting rows (see
    :class:`_WriteTime`) reaches ``flush_seconds``, less a margin, and takes no more rows
    than it can write in time (rows already late excepted: one larger file catches up
    faster than many small ones). A file also starts as soon as a quarter of the bound is
    queued. ``threads`` files are encoded at once (default: 2 where there are 2 cores or
    more): Parquet encoding, not the disk, is what limits a full capture, and pyarrow
    encodes without the GIL. Files may then finish out of order; every row has its
    ``seq``, and ``tracer.load`` returns training order.

    ``files`` lists the names of the finished data files, in the order they finished.
    ``on_file`` (internal: tests and measurements) is called on a writer thread with a
    :class:`FileWritten` for each.
    """

    def __init__(
        self,
        directory: Path,
        *,
        rank: int = 0,
        flush_seconds: float = 1.0,
        max_queue_bytes: int = 64 << 20,
        compression: str = "zstd",
        threads: int | None = None,
        on_file: Callable[[FileWritten], None] | None = None,
    ) -> None:
        self.directory = directory
        self.rank = rank
        self.flush_seconds = flush_seconds
        self.max_queue_bytes = max_queue_bytes
        self.compression = compression
        self.error: BaseException | None = None
        self.rows_written = 0
        self.files_written = 0
        self.files: list[str] = []
        self._on_file = on_file
        self._session = uuid.uuid4().hex[:8]
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0  # put and not yet written (waiting or being encoded)
        self._waiting_bytes = 0  # in the queue, not yet taken by a thread
        self._file_bytes = max(max_queue_bytes // 4, 1)  # a file is written at least this often
        self._write_time = _WriteTime()
        self._poll_seconds = min(max(flush_seconds / 20, 0.001), 0.05)  # new rows move a file's start
        self._margin = 2 * self._poll_seconds  # a due file may be noticed a poll late
        self._rows_put = 0
        self._rows_taken = 0  # rows 0.._rows_taken-1 (in put order) were taken by a thread
        self._in_flight: dict[int, int] = {}  # file index -> put index of its first row
        self._next_file = 0
        self._flushing = 0
        self._closing = False
        self._cond = threading.Condition()
        count = threads if threads is not None else min(2, os.cpu_count() or 1)
        self._threads = [
            threading.Thread(target=self._run, name=f"tracer-writer-{i}", daemon=True) for i in range(max(count, 1))
        ]
        for thread in self._threads:
            thread.start()

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- training thread ------------------------------------------------------------
    def put(self, row: Row) -> None:
        nbytes = row[7].nbytes
        with self._cond:
            while self._queued_bytes > self.max_queue_bytes and self._alive():
                self._cond.wait(0.1)
            was_empty = not self._queue
            self._queue.append((row, nbytes, time.monotonic()))
            self._queued_bytes += nbytes
            self._waiting_bytes += nbytes
            self._rows_put += 1
            if was_empty or self._waiting_bytes >= self._file_bytes:
                self._cond.notify_all()  # a writer times the next file; it polls from then on

    def flush(self) -> None:
        """Block until every row put so far is in a finished file."""
        with self._cond:
            target = self._rows_put
            self._flushing += 1
            self._cond.notify_all()
            try:
                # files finish out of order: wait until no row before ``target`` is queued
                # or being written, not for a count of rows
                while self._alive() and (
                    self._rows_taken < target or any(first < target for first in self._in_flight.values())
                ):
                    self._cond.wait(0.1)
            finally:
                self._flushing -= 1

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    # -- writer threads ---------------------------------------------------------------
    def _run(self) -> None:
        values = ValuesBuffer()
        while True:
            with self._cond:
                batch = self._wait_for_file()
                if batch is None:
                    return  # closing and the queue is empty: every row is written
                batch_bytes = sum(nbytes for _, nbytes, _ in batch)
                count = len(batch)
                index = self._next_file
                self._next_file += 1
                self._in_flight[index] = self._rows_taken
                self._rows_taken += count
            oldest_put = batch[0][2]
            written = False
            started = renamed = time.monotonic()
            try:
                written = self._write([row for row, _, _ in batch], index, values)
                renamed = time.monotonic()
                del batch[:]  # the captured tensors go now, not when the next batch replaces them
                if written and self._on_file is not None:
                    self._on_file(FileWritten(f"{self._file_name(index)}.parquet", count, oldest_put, started, renamed))
                values.shrink(4 * ROW_GROUP_BYTES)
                if batch_bytes >= _TRIM_BYTES:
                    _release_free_memory()
            except BaseException as exc:  # noqa: BLE001 - reported to the training thread
                if self.error is None:
                    self.error = exc
            finally:
                with self._cond:
                    self._queued_bytes -= batch_bytes
                    del self._in_flight[index]
                    if written:
                        self.files.append(f"{self._file_name(index)}.parquet")
                        self.files_written += 1
                        self.rows_written += count
                        self._write_time.record(_WriteTime.weight(count, batch_bytes), renamed - started)
                    self._cond.notify_all()

    def _wait_for_file(self) -> list[_Queued] | None:
        """Wait (holding the lock) until a file is due and take its rows; None once closing and empty."""
        while True:
            if not self._queue:
                if self._closing:
                    return None
                self._cond.wait()  # put notifies when the queue stops being empty
                continue
            now = time.monotonic()
            wait = self._start_time() - now
            if wait <= 0 or self._closing or self._flushing or self._waiting_bytes >= self._file_bytes:
                return self._take(now)
            self._cond.wait(min(wait, self._poll_seconds))  # new rows bring the start forward

    def _start_time(self) -> float:
        """When the next file must start for the oldest waiting row to be readable in time."""
        seconds = self._write_time.seconds(_WriteTime.weight(len(self._queue), self._waiting_bytes))
        if not self._write_time.timed:  # a guess, and the first file pays pyarrow's warm-up
            seconds = max(seconds, self.flush_seconds / 2)
        return self._queue[0][2] + self.flush_seconds - self._margin - seconds

    def _take(self, now: float) -> list[_Queued]:
        """The next file's rows, oldest first: about a quarter of the queue bound at most (a
        whole full queue at once would multiply its memory: float64 values, Arrow buffers,
        encoding), and no more than can be written before the oldest is ``flush_seconds`` old,
        but every late row."""
        time_left = self._queue[0][2] + self.flush_seconds - self._margin - now
        # at least twice a file's own cost: tiny files would make the writer fall behind
        max_weight = max(self._write_time.weight_in(time_left), 2 * _WriteTime.FILE_WEIGHT)
        late = now - self.flush_seconds + self._margin  # rows put before this are late already
        batch: list[_Queued] = []
        nbytes = 0
        while self._queue and nbytes <= self._file_bytes:
            _, size, put = self._queue[0]
            if batch and put > late and _WriteTime.weight(len(batch) + 1, nbytes + size) > max_weight:
                break
            batch.append(self._queue.popleft())
            nbytes += size
        self._waiting_bytes -= nbytes
        return batch

    def _file_name(self, index: int) -> str:
        """File number ``index``'s name, without ``.parquet`` (see the module docstring)."""
        return f"part-{self.rank:05d}-{self._session}-{index:06d}"

    def _write(self, rows: list[Row], index: int, values: ValuesBuffer) -> bool:
        """Write ``rows`` to file number ``index``; False when nothing was written."""
        if self.error is not None:
            return False  # already failed: rows are dropped, the error is raised to the user
        name = self._file_name(index)
        tmp = self.directory / f".{name}.tmp"
        try:
            grouped = sum(row[7].nbytes for row in rows) > ROW_GROUP_BYTES
            if grouped:  # see row_groups
                rows.sort(key=lambda row: (_KIND_ORDER.get(row[2], len(KINDS)), row[3]))
            columns, row_values = encode_rows(rows, self.rank)
            groups = row_groups(rows, row_values) if grouped else [(0, len(rows))]
            with pq.ParquetWriter(
                tmp,
                SCHEMA,
                compression=self.compression,
                compression_level=1 if self.compression == "zstd" else None,  # speed over ratio
                use_dictionary=list(STRING_COLUMNS),  # not the floats: dictionary encoding is slow there
                use_byte_stream_split=["values.list.element"],  # float64 of float32 data compresses well
                write_statistics=_STAT_COLUMNS,
            ) as file:
                for start, stop in groups:
                    # values are converted one row group at a time, into memory reused for
                    # the next group once this one is encoded
                    group = [
                        values.list_array(row_values[start:stop]) if c == "values" else columns[c].slice(start, stop - start)
                        for c in COLUMNS
                    ]
                    file.write_table(pa.Table.from_arrays(group, schema=SCHEMA), row_group_size=stop - start)
            os.replace(tmp, self.directory / f"{name}.parquet")
        except BaseException as exc:  # noqa: BLE001 - reported to the training thread
            self.error = exc
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False
        return True


_TRIM_BYTES = 4 << 20


def _load_malloc_trim() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError, ImportError):
        return None


_MALLOC_TRIM = _load_malloc_trim() if sys.platform.startswith("linux") else None


def _release_free_memory() -> None:
    """Give the pages that the written batch freed back to the OS (glibc keeps them in its
    arenas otherwise: fragmentation from tensors allocated by one thread and freed by
    another grows the RSS by hundreds of MB in a full capture)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


MAX_LIST_VALUES = 2**31 - 1
"""A tensor with more elements keeps its statistics only: ``list<float64>`` offsets are int32."""

ROW_GROUP_BYTES = 16 << 20
"""A file whose rows hold more than this is written in row groups of about this size."""
_MIN_GROUP_BYTES = 1 << 20
_KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}


def row_groups(rows: Sequence[Row], values: Sequence[np.ndarray | torch.Tensor | None]) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the row groups of a large file.

    The rows of a large file are sorted by kind, then name (training order within a name);
    a row group never spans two kinds, holds at most about :data:`ROW_GROUP_BYTES` of values,
    and ends where a name ends once it holds 1 MiB (a large tensor gets groups of its own).
    The min/max statistics of ``kind``, ``name`` and ``step`` then let a filtered read
    (``load(path, kind="loss")``, ``name=``, ``step=``) skip the groups it does not need.
    ``tracer.load`` restores training order.
    """
    groups, start, size = [], 0, 0
    for i, (row, v) in enumerate(zip(rows, values)):
        if i > start and (
            row[2] != rows[start][2]
            or size >= ROW_GROUP_BYTES
            or (size >= _MIN_GROUP_BYTES and row[3] != rows[i - 1][3])
        ):
            groups.append((start, i))
            start, size = i, 0
        size += 64 + (0 if v is None else 8 * _size(v))  # float64 values + the rest of a row
    groups.append((start, len(rows)))
    return groups


def encode_rows(rows: Sequence[Row], rank: int) -> tuple[dict[str, pa.Array], list[np.ndarray | torch.Tensor | None]]:
    """Every column but ``values`` as Arrow arrays (in :data:`SCHEMA`), and each row's values
    to store (see :func:`finish`), for :class:`ValuesBuffer`."""
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS if c != "values"}
    values: list[np.ndarray | torch.Tensor | None] = []
    stat_names = ("mean", "std", "min", "max", "norm", "nonfinite")
    for step, seq, kind, name, call, part, module_type, cap, grad_enabled, opt, group, hp in rows:
        cap: Captured
        stats, vals = finish(cap)
        cols["step"].append(step)
        cols["seq"].append(seq)
        cols["kind"].append(kind)
        cols["name"].append(name)
        cols["call"].append(call)
        cols["part"].append(part)
        cols["module_type"].append(module_type)
        cols["shape"].append(cap.shape)
        cols["dtype"].append(cap.dtype)
        cols["numel"].append(cap.numel)
        for key, value in zip(stat_names, stats):
            cols[key].append(value)
        cols["rank"].append(rank)
        cols["grad_enabled"].append(grad_enabled)
        cols["optimizer"].append(opt)
        cols["param_group"].append(group)
        cols["hparams"].append(hp)
        if vals is not None and _size(vals) >= MAX_LIST_VALUES:
            vals = None  # a list<float64> cannot hold it: statistics only (README, Limits)
        values.append(vals)
    return {c: pa.array(v, type=SCHEMA.field(c).type) for c, v in cols.items()}, values


class ValuesBuffer:
    """The float64 memory behind a row group's ``values`` column, reused for the next one.

    Values are converted straight into it (float32 -> float64 in one torch copy), instead
    of a float64 copy per tensor, a concatenation, and fresh pages every time: a full
    capture spends its time encoding Parquet, not allocating. A row group's array is a view
    of this memory: it must be written before the next ``list_array`` call.
    """

    def __init__(self) -> None:
        self._flat = np.empty(0, dtype=np.float64)

    def list_array(self, values: Sequence[np.ndarray | torch.Tensor | None]) -> pa.Array:
        """``values`` (each under :data:`MAX_LIST_VALUES`, a row group's) as a ``list<float64>`` array."""
        lengths = np.array([0 if v is None else _size(v) for v in values], dtype=np.int64)
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total > self._flat.size:
            self._flat = np.empty(max(total, self._flat.size * 5 // 4), dtype=np.float64)
        flat = self._flat[:total]
        target = torch.from_numpy(flat)
        for v, start, stop in zip(values, offsets[:-1].tolist(), offsets[1:].tolist()):
            if isinstance(v, torch.Tensor):
                target[start:stop].copy_(v)  # exact: every float16/bfloat16/float32 is a float64
            elif v is not None:
                flat[start:stop] = v
        mask = pa.array([v is None for v in values], type=pa.bool_())
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat), mask=mask)

    def shrink(self, max_bytes: int) -> None:
        """Let go of the memory if one huge tensor made it larger than ``max_bytes``."""
        if self._flat.nbytes > max_bytes:
            self._flat = np.empty(0, dtype=np.float64)


def _size(v: np.ndarray | torch.Tensor) -> int:
    return v.numel() if isinstance(v, torch.Tensor) else v.size
