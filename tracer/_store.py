"""Parquet on disk: the trace directory and the background writers (reading: :mod:`tracer._reader`).

Layout of a trace directory::

    _tracer.json                               metadata (never ends in .parquet)
    part-<rank>-<session>-<index>.parquet      finished data files, one per flush
    .part-<rank>-<session>-<index>.tmp         a file being written (renamed when complete)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tracer._schema import COLUMNS, KINDS, META_FILE, SCHEMA, STRING_COLUMNS
from tracer._tensors import Captured, finish

_PART_GLOB = "part-*.parquet"
_STAT_COLUMNS = ["step", "seq", "kind", "name", "call", "rank"]


# --------------------------------------------------------------------------- directory


def is_trace(path: Path) -> bool:
    """True when ``path`` is a directory that holds a tracer trace."""
    return path.is_dir() and ((path / META_FILE).is_file() or any(path.glob(_PART_GLOB)))


def _holds_a_trace(path: Path) -> FileExistsError:
    return FileExistsError(
        f"{str(path)!r} already holds a trace; pass overwrite=True to replace it or choose another path"
    )


def check_destination(path: Path, *, overwrite: bool) -> None:
    """Refuse, before anything is written, a path that is a file or already holds a trace."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"trace path {str(path)!r} is a file; pass a directory path")
    if not overwrite and is_trace(path):
        raise _holds_a_trace(path)


def prepare_directory(path: Path, *, overwrite: bool, rank: int) -> None:
    """Make ``path`` ready for a new trace, deleting only files a trace wrote, and only if asked."""
    if path.exists() and not path.is_dir():
        check_destination(path, overwrite=overwrite)
    own = f"part-{rank:05d}-*" if rank else "part-*"
    existing = [*path.glob(own + ".parquet"), *path.glob("." + own + ".tmp")] if path.is_dir() else []
    if rank == 0 and (path / META_FILE).is_file():
        existing.append(path / META_FILE)
    if existing and not overwrite:
        raise _holds_a_trace(path)
    if path.is_dir() and not existing and rank == 0:
        foreign = [p.name for p in path.rglob("*.parquet")]
        if foreign:
            raise FileExistsError(
                f"{str(path)!r} holds Parquet files that are not a trace ({foreign[0]!r}, ...); "
                "choose an empty or new directory"
            )
    for file in existing:  # only what a trace wrote: other files are never touched
        file.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)



# --------------------------------------------------------------------------- writing

Row = tuple  # (step, seq, kind, name, call, part, module_type, Captured, grad_enabled,
#             optimizer, param_group, hparams)


class Writer:
    """Writes rows to Parquet files on background threads, through a bounded queue.

    ``put`` blocks while more than ``max_queue_bytes`` wait to be written, so memory stays
    flat whatever the run length. A file is written (then renamed into place) at least
    every ``flush_seconds``, or as soon as a quarter of the bound is queued. ``threads``
    files are encoded at once (default: 2 where there are 2 cores or more): Parquet
    encoding, not the disk, is what limits a full capture, and pyarrow encodes without
    the GIL. Files may then finish out of order; every row has its ``seq``, and
    ``tracer.load`` returns training order.
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
    ) -> None:
        self.directory = directory
        self.rank = rank
        self.flush_seconds = flush_seconds
        self.max_queue_bytes = max_queue_bytes
        self.compression = compression
        self.error: BaseException | None = None
        self.rows_written = 0
        self.files_written = 0
        self._session = uuid.uuid4().hex[:8]
        self._queue: deque[tuple[Row, int]] = deque()
        self._queued_bytes = 0  # put and not yet written (waiting or being encoded)
        self._waiting_bytes = 0  # in the queue, not yet taken by a thread
        self._file_bytes = max(max_queue_bytes // 4, 1)  # a file is written at least this often
        self._rows_put = 0
        self._rows_taken = 0  # rows 0.._rows_taken-1 (in put order) were taken by a thread
        self._in_flight: dict[int, int] = {}  # file index -> put index of its first row
        self._next_file = 0
        self._flushing = 0
        self._closing = False
        self._deadline = time.monotonic() + flush_seconds
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
            self._queue.append((row, nbytes))
            self._queued_bytes += nbytes
            self._waiting_bytes += nbytes
            self._rows_put += 1
            if self._waiting_bytes >= self._file_bytes:
                self._cond.notify_all()  # else a writer wakes at the flush deadline

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
                while True:
                    now = time.monotonic()
                    if self._queue and (
                        self._closing
                        or self._flushing
                        or now >= self._deadline
                        or self._waiting_bytes >= self._file_bytes
                    ):
                        break
                    if self._closing:
                        return  # queue empty: every row is written
                    if not self._queue and now >= self._deadline:
                        self._deadline = now + self.flush_seconds  # nothing was due
                    self._cond.wait(max(self._deadline - now, 0.001))
                # one file's worth: converting a whole full queue at once would multiply its
                # memory (float64 values, Arrow buffers, encoding)
                batch: list[tuple[Row, int]] = []
                batch_bytes = 0
                while self._queue and batch_bytes <= self._file_bytes:
                    item = self._queue.popleft()
                    batch.append(item)
                    batch_bytes += item[1]
                self._waiting_bytes -= batch_bytes
                count = len(batch)
                index = self._next_file
                self._next_file += 1
                self._in_flight[index] = self._rows_taken
                self._rows_taken += count
                self._deadline = time.monotonic() + self.flush_seconds
            written = False
            try:
                written = self._write([row for row, _ in batch], index, values)
                del batch[:]  # the captured tensors go now, not when the next batch replaces them
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
                        self.files_written += 1
                        self.rows_written += count
                    self._cond.notify_all()

    def _write(self, rows: list[Row], index: int, values: ValuesBuffer) -> bool:
        """Write ``rows`` to file number ``index``; False when nothing was written."""
        if self.error is not None:
            return False  # already failed: rows are dropped, the error is raised to the user
        name = f"part-{self.rank:05d}-{self._session}-{index:06d}"
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
