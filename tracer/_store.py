"""Parquet on disk: the trace directory, the background writers, and the filtered reader.

Layout of a trace directory::

    _tracer.json                               metadata (never ends in .parquet)
    part-<rank>-<session>-<index>.parquet      finished data files, one per flush
    .part-<rank>-<session>-<index>.tmp         a file being written (renamed when complete)
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from tracer._errors import TraceFormatError
from tracer._schema import COLUMNS, KINDS, META_FILE, SCHEMA, SCHEMA_VERSION, STRING_COLUMNS
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


def read_meta(path: Path) -> dict[str, Any]:
    """The trace's metadata (``{}`` for a trace without a metadata file)."""
    file = path / META_FILE
    if not file.is_file():
        return {}
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TraceFormatError(f"{str(file)!r} is not valid trace metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{str(file)!r} is not valid trace metadata: not a JSON object")
    _check_version(meta.get("schema_version", SCHEMA_VERSION), file)
    return meta


def _check_version(version: Any, where: Path) -> None:
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise TraceFormatError(f"{str(where)!r} has an unreadable schema version {version!r}") from None
    if version > SCHEMA_VERSION:
        raise TraceFormatError(
            f"{str(where)!r} was written with trace schema v{version}, newer than this tracer "
            f"reads (v{SCHEMA_VERSION}); upgrade: pip install -U torch-tracer"
        )


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


# --------------------------------------------------------------------------- reading


def data_files(path: Path) -> list[Path]:
    """Finished data files of a trace, in name order; hidden and ``_`` files are skipped."""
    files = []
    for file in path.rglob("*.parquet"):
        rel = file.relative_to(path).parts
        if not any(part.startswith(("_", ".")) for part in rel):
            files.append(file)
    return sorted(files)


def check_trace_dir(path: Path, errors: str = "raise") -> list[Path]:
    """Validate ``path`` as a trace and return its data files, or raise TraceFormatError.

    With ``errors="skip"``, unreadable data files are left out with a warning instead.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip' (got {errors!r})")
    if not path.exists():
        raise TraceFormatError(f"no trace at {str(path)!r}: the path does not exist")
    if not path.is_dir():
        raise TraceFormatError(f"{str(path)!r} is not a trace: a trace is a directory")
    read_meta(path)
    files = data_files(path)
    if not (path / META_FILE).is_file() and not files:
        raise TraceFormatError(
            f"{str(path)!r} is not a trace: it has neither {META_FILE} nor data files"
        )
    good = []
    for file in files:
        try:
            _check_file(file)
        except TraceFormatError as exc:
            if errors == "raise":
                raise
            warnings.warn(f"skipped {exc}", RuntimeWarning, stacklevel=4)
            continue
        good.append(file)
    return good


def _check_file(file: Path) -> None:
    try:
        schema = pq.read_schema(file)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:  # a corrupt footer: names not UTF-8
        raise TraceFormatError(f"corrupt trace file {str(file)!r}: {exc}") from None
    meta = schema.metadata or {}
    version = meta.get(b"tracer.schema_version")
    if version is None:
        raise TraceFormatError(f"{str(file)!r} is not a tracer data file (no schema version)")
    _check_version(version.decode("utf-8", errors="replace"), file)
    missing = [f.name for f in SCHEMA if f.name not in schema.names]
    if missing:
        raise TraceFormatError(f"{str(file)!r} lacks trace columns {missing}")


def _isin(field: str, value: Any) -> pc.Expression:
    if isinstance(value, (str, int)):
        return pc.field(field) == value
    return pc.field(field).isin(list(value))


def _step_filter(step: Any) -> pc.Expression:
    if isinstance(step, slice):
        if step.step not in (None, 1):
            return _isin("step", range(step.start or 0, step.stop, step.step))
        expr = pc.scalar(True)
        if step.start is not None:
            expr = expr & (pc.field("step") >= step.start)
        if step.stop is not None:
            expr = expr & (pc.field("step") < step.stop)
        return expr
    return _isin("step", step)


def _has_glob(names: Iterable[str]) -> bool:
    return any(ch in n for n in names for ch in "*?[")


def read_trace(
    path: Path,
    *,
    kind: str | Iterable[str] | None = None,
    name: str | Iterable[str] | None = None,
    step: int | Iterable[int] | slice | None = None,
    columns: Sequence[str] | None = None,
    errors: str = "raise",
) -> tuple[pa.Table, np.ndarray | None]:
    """Read a trace with filters pushed into the reader, as stored.

    Returns the table and the permutation that puts its rows in training order (``None``
    when they already are). Large files group their rows by kind and name (see
    :meth:`Writer._write`), so the caller reorders; reordering a DataFrame moves pointers,
    reordering the Arrow table would copy every value.
    """
    files = check_trace_dir(path, errors)
    if columns is not None:
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; trace columns are {list(COLUMNS)}")
    names = [name] if isinstance(name, str) else (list(name) if name is not None else None)
    glob = names is not None and _has_glob(names)
    expr = pc.scalar(True)
    if kind is not None:
        expr = expr & _isin("kind", kind)
    if names is not None and not glob:
        expr = expr & _isin("name", names)
    if step is not None:
        expr = expr & _step_filter(step)
    wanted = list(columns) if columns is not None else list(COLUMNS)
    read = list(dict.fromkeys([*wanted, "step", "rank", "seq", *(["name"] if glob else [])]))
    if not files:
        return SCHEMA.empty_table().select(wanted), None
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    try:
        table = dataset.to_table(columns=read, filter=expr)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:  # a corrupt footer: names not UTF-8
        raise TraceFormatError(f"could not read trace {str(path)!r}: {exc}") from None
    if glob:
        keep = [any(fnmatch.fnmatchcase(n, p) for p in names) for n in table["name"].to_pylist()]
        table = table.filter(pa.array(keep, type=pa.bool_()))
    return table.select(wanted), _training_order(table)


def _training_order(table: pa.Table) -> np.ndarray | None:
    """The permutation that sorts rows by (step, rank, seq); None when they already are."""
    if table.num_rows < 2:
        return None
    step, rank, seq = (table[c].to_numpy() for c in ("step", "rank", "seq"))
    ds, dr, dq = np.diff(step), np.diff(rank), np.diff(seq)
    if np.all((ds > 0) | ((ds == 0) & ((dr > 0) | ((dr == 0) & (dq >= 0))))):
        return None
    return np.lexsort((seq, rank, step))
