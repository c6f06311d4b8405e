"""The background writers: rows queued by the training thread, written to Parquet files
on writer threads, each file renamed into place when complete (the directory and its
files: :mod:`tracer._directory`; encoding: :mod:`tracer._encode`)."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from tracer import _encode
from tracer._batch import Batch
from tracer._compact import Compactor
from tracer._encode import KIND_ORDER, ValuesBuffer, encode_rows, row_groups
from tracer._schema import COLUMNS, KINDS, SCHEMA, STRING_COLUMNS, Row
from tracer._stats import serial

_STAT_COLUMNS = ["step", "seq", "kind", "name", "call", "rank"]


# --------------------------------------------------------------------------- writing

_Queued = tuple  # (Row or Batch, nbytes, time.monotonic() when it was put)


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
        compact: bool = True,
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
        self._waiting_rows = 0  # the rows of those (a Batch holds many)
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
        self._compactor = (
            Compactor(directory, rank, self._session, compression=compression, on_merge=self._merged)
            if compact
            else None
        )

    def _merged(self, sources: list[str], merged: str) -> None:
        """The compactor merged ``sources`` into ``merged``: ``files`` names what is on disk."""
        with self._cond:
            gone = set(sources)
            self.files[:] = [name for name in self.files if name not in gone]
            self.files.append(merged)

    @property
    def merges(self) -> int:
        """How many merges of small files into large ones were done (see :mod:`tracer._compact`)."""
        return 0 if self._compactor is None else self._compactor.merges

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- training thread ------------------------------------------------------------
    def put(self, row: Row) -> None:
        self._enqueue(row, row.captured.nbytes)

    def put_batch(self, batch: Batch) -> None:
        """Queue the staged rows of ``batch`` (see :mod:`tracer._staging`) as one entry,
        due ``flush_seconds`` after its oldest row was recorded (not after now)."""
        self._enqueue(batch, batch.nbytes, batch.since)

    def _enqueue(self, item: Row | Batch, nbytes: int, since: float | None = None) -> None:
        with self._cond:
            while self._queued_bytes > self.max_queue_bytes and self._alive():
                self._cond.wait(0.1)
            was_empty = not self._queue
            now = time.monotonic()
            self._queue.append((item, nbytes, now if since is None else min(since, now)))
            self._queued_bytes += nbytes
            self._waiting_bytes += nbytes
            self._waiting_rows += len(item) if isinstance(item, Batch) else 1
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
        if self._compactor is not None:
            self._compactor.close(final_merge=self.error is None)

    # -- writer threads ---------------------------------------------------------------
    def _run(self) -> None:
        with serial():  # torch's ops here on one thread: the writer must not take the training's cores
            self._loop()

    def _loop(self) -> None:
        values = ValuesBuffer()
        freed, trimmed = 0, time.monotonic()  # bytes written since the pages were last given back
        while True:
            with self._cond:
                batch = self._wait_for_file()
                if batch is None:
                    return  # closing and the queue is empty: every row is written
                batch_bytes = sum(nbytes for _, nbytes, _ in batch)
                count = sum(len(item) if isinstance(item, Batch) else 1 for item, _, _ in batch)
                index = self._next_file
                self._next_file += 1
                self._in_flight[index] = self._rows_taken
                self._rows_taken += len(batch)  # queue entries (a Batch is one)
            oldest_put = batch[0][2]
            written = False
            started = renamed = time.monotonic()
            try:
                written = self._write([row for row, _, _ in batch], index, values)
                renamed = time.monotonic()
                del batch[:]  # the captured tensors go now, not when the next batch replaces them
                if written and self._on_file is not None:
                    self._on_file(FileWritten(f"{self._file_name(index)}.parquet", count, oldest_put, started, renamed))
                values.shrink(4 * _encode.ROW_GROUP_BYTES)
                freed += batch_bytes
                # at most once a second (a trim locks the allocator's arenas, which the
                # training thread allocates from), but after every large file
                if freed >= _TRIM_BYTES and (freed >= 16 * _TRIM_BYTES or time.monotonic() - trimmed >= 1.0):
                    _release_free_memory()
                    freed, trimmed = 0, time.monotonic()
            except BaseException as exc:
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
                if self._compactor is not None:
                    self._compactor.done(index, f"{self._file_name(index)}.parquet" if written else None)

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
        seconds = self._write_time.seconds(_WriteTime.weight(self._waiting_rows, self._waiting_bytes))
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
        nbytes = rows = 0
        while self._queue and nbytes <= self._file_bytes:
            item, size, put = self._queue[0]
            n = len(item) if isinstance(item, Batch) else 1
            if batch and put > late and _WriteTime.weight(rows + n, nbytes + size) > max_weight:
                break
            batch.append(self._queue.popleft())
            nbytes += size
            rows += n
        self._waiting_bytes -= nbytes
        self._waiting_rows -= rows
        return batch

    def _file_name(self, index: int) -> str:
        """File number ``index``'s name, without ``.parquet`` (see the module docstring)."""
        return f"part-{self.rank:05d}-{self._session}-{index:06d}"

    def _write(self, rows: list[Row | Batch], index: int, values: ValuesBuffer) -> bool:
        """Write ``rows`` to file number ``index``; False when nothing was written."""
        if self.error is not None:
            return False  # already failed: rows are dropped, the error is raised to the user
        name = self._file_name(index)
        tmp = self.directory / f".{name}.tmp"
        try:
            grouped = sum(_nbytes(row) for row in rows) > _encode.ROW_GROUP_BYTES
            if grouped:  # see row_groups (a large file: staged rows one by one, to be sorted)
                rows = [r for item in rows for r in (item.expand() if isinstance(item, Batch) else (item,))]
                rows.sort(key=lambda row: (KIND_ORDER.get(row.kind, len(KINDS)), row.name))  # type: ignore[union-attr]
            columns, row_values = encode_rows(rows, self.rank)
            count = len(columns["step"])
            # (a file of small rows is one row group: its values list may hold Packed batches)
            groups = row_groups(rows, row_values) if grouped else [(0, count)]  # type: ignore[arg-type]
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
                        values.list_array(row_values[start:stop] if grouped else row_values)
                        if c == "values"
                        else columns[c].slice(start, stop - start)
                        for c in COLUMNS
                    ]
                    file.write_table(pa.Table.from_arrays(group, schema=SCHEMA), row_group_size=stop - start)
            os.replace(tmp, self.directory / f"{name}.parquet")
        except BaseException as exc:
            self.error = exc
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False
        return True


_TRIM_BYTES = 4 << 20


def _nbytes(item: Row | Batch) -> int:
    return item.nbytes if isinstance(item, Batch) else item.captured.nbytes


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
