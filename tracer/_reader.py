"""Reading a trace directory: its metadata, its data files, and the filtered reader.

Layout of a trace directory: see :mod:`tracer._store`.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tracer._errors import TraceFormatError
from tracer._meta_reader import _check_version, _quoted, read_meta
from tracer._row_checks import _COMPLEX, _checked_with, row_problem
from tracer._schema import COLUMNS, META_FILE, SCHEMA, V1_COLUMNS

__all__ = ["check_trace_dir", "check_trace_root", "data_files", "read_meta", "read_trace"]


def data_files(path: Path) -> list[Path]:
    """Finished data files of a trace, in name order; hidden and ``_`` files are skipped, and
    so are files that a merged file covers (see :mod:`tracer._compact`)."""
    from tracer._compact import uncovered

    files = []
    for file in path.rglob("*.parquet"):
        rel = file.relative_to(path).parts
        if not any(part.startswith(("_", ".")) for part in rel):
            files.append(file)
    return sorted(uncovered(files))


def check_trace_root(path: Path) -> list[Path]:
    """``path`` is a directory with readable metadata and/or data files (their names, not yet
    checked one by one), or TraceFormatError."""
    if not path.exists():
        raise TraceFormatError(f"no trace at {_quoted(path)}: the path does not exist")
    if not path.is_dir():
        raise TraceFormatError(f"{_quoted(path)} is not a trace: a trace is a directory")
    read_meta(path)
    files = data_files(path)
    if not (path / META_FILE).is_file() and not files:
        raise TraceFormatError(f"{_quoted(path)} is not a trace: it has neither {META_FILE} nor data files")
    return files


@overload
def check_trace_dir(path: Path, errors: str = "raise") -> list[Path]: ...
@overload
def check_trace_dir(path: Path, errors: str = "raise", *, listing_may_change: bool) -> list[Path] | None: ...
def check_trace_dir(path: Path, errors: str = "raise", *, listing_may_change: bool = False) -> list[Path] | None:
    """Validate ``path`` as a trace and return its data files, or raise TraceFormatError.

    With ``errors="skip"``, unreadable data files are left out with a warning instead.
    With ``listing_may_change``, None when a listed file vanished (merged into another by
    a run still writing): the caller lists again.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip' (got {errors!r})")
    files = check_trace_root(path)
    good = []
    for file in files:
        try:
            _check_file_once(file)
        except TraceFormatError as exc:
            if listing_may_change and not file.exists():
                return None
            _skip_or_raise(exc, errors)
            continue
        good.append(file)
    return good


def _skip_or_raise(exc: TraceFormatError, errors: str) -> None:
    if errors == "raise":
        raise exc
    warnings.warn(f"skipped {exc}", RuntimeWarning, stacklevel=5)


_CHECKED_FILES: dict[Path, tuple[int, int]] = {}
"""Data files whose footer was checked, with the (mtime, size) they had: a data file never
changes once renamed into place, so a Trace that reads many times checks each once."""


def _check_file_once(file: Path) -> None:
    try:
        stat = file.stat()
    except OSError:
        stat = None
    key = None if stat is None else (stat.st_mtime_ns, stat.st_size)
    if key is not None and _CHECKED_FILES.get(file) == key:
        return
    _check_file(file)
    if key is not None:
        if len(_CHECKED_FILES) > 100_000:
            _CHECKED_FILES.clear()
        _CHECKED_FILES[file] = key


def _check_file(file: Path) -> None:
    try:
        str(file).encode("utf-8")
    except UnicodeEncodeError:
        raise TraceFormatError(
            f"trace file {_quoted(file)} has a name that is not valid UTF-8, which the Parquet "
            "reader cannot open; rename it (or the directory it is in)"
        ) from None
    try:
        schema = pq.read_schema(file)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:  # a corrupt footer: names not UTF-8
        raise TraceFormatError(f"corrupt trace file {_quoted(file)}: {exc}") from None
    meta = schema.metadata or {}
    version = meta.get(b"tracer.schema_version")
    if version is None:
        raise TraceFormatError(f"{_quoted(file)} is not a tracer data file (no schema version)")
    _check_version(version.decode("utf-8", errors="replace"), file)
    missing = [name for name in V1_COLUMNS if name not in schema.names]  # later columns read as null
    if missing:
        raise TraceFormatError(f"{_quoted(file)} lacks trace columns {missing}")


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


class Read(NamedTuple):
    """What :func:`read_trace` read: the rows as stored, and how to hand them out."""

    table: pa.Table
    order: np.ndarray | None  # the permutation that puts the rows in training order; None: they are
    complex_rows: np.ndarray | None  # which rows' values interleave real and imaginary parts; None: none


def _with_aliases(path: Path, names: list[str]) -> list[str]:
    """``names`` and, for an alias of a shared parameter (``lm_head.weight`` tied to
    ``wte.weight``), the name its rows are recorded under."""
    canonical = {alias: p["name"] for p in read_meta(path).get("parameters", ()) for alias in p.get("aliases", ())}
    extra = [canonical[n] for n in names if n in canonical and canonical[n] not in names]
    return names + extra if extra else names


def read_trace(
    path: Path,
    *,
    kind: str | Iterable[str] | None = None,
    name: str | Iterable[str] | None = None,
    step: int | Iterable[int] | slice | None = None,
    columns: Sequence[str] | None = None,
    errors: str = "raise",
) -> Read:
    """Read a trace with filters pushed into the reader, as stored, every row checked.

    Large files group their rows by kind and name (see :meth:`Writer._write`), so the
    caller reorders; reordering a DataFrame moves pointers, reordering the Arrow table
    would copy every value.

    Raises:
        TraceFormatError: naming the file and what is wrong with it (see :func:`row_problem`).
    """
    for attempt in range(_RETRIES):
        files = check_trace_dir(path, errors, listing_may_change=attempt + 1 < _RETRIES)
        if files is None:
            continue  # a file was merged away while being checked: list again
        try:
            return _read_files(path, files, kind=kind, name=name, step=step, columns=columns, errors=errors)
        except (TraceFormatError, OSError):
            if attempt + 1 == _RETRIES or all(f.exists() for f in files):
                raise
            # a listed file was merged into a larger one and deleted (see tracer._compact)
    raise TraceFormatError(f"the files of {_quoted(path)} kept changing while being read")


_RETRIES = 5


def _read_files(
    path: Path,
    files: list[Path],
    *,
    kind: str | Iterable[str] | None,
    name: str | Iterable[str] | None,
    step: int | Iterable[int] | slice | None,
    columns: Sequence[str] | None,
    errors: str,
) -> Read:
    if columns is not None:
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; trace columns are {list(COLUMNS)}")
    names = [name] if isinstance(name, str) else (list(name) if name is not None else None)
    if names is not None:
        names = _with_aliases(path, names)
    glob = names is not None and _has_glob(names)
    expr = pc.scalar(True)
    if kind is not None:
        expr = expr & _isin("kind", kind)
    if names is not None and not glob:
        expr = expr & _isin("name", names)
    if step is not None:
        expr = expr & _step_filter(step)
    wanted = list(columns) if columns is not None else list(COLUMNS)
    read = list(dict.fromkeys([*wanted, "step", "rank", "seq", *(["name"] if glob else []), *_checked_with(wanted)]))
    if not files:
        return Read(SCHEMA.empty_table().select(wanted), None, None)
    table = _scan(path, files, read, expr)
    if row_problem(table) is not None:  # find the file it is in (and skip it, if asked)
        table = _scan_each(path, files, read, expr, errors)
    if glob:
        patterns = names or []
        keep = [any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in table["name"].to_pylist()]
        table = table.filter(pa.array(keep, type=pa.bool_()))
    return Read(table.select(wanted), _training_order(table), _complex_rows(table) if "values" in wanted else None)


def _complex_rows(table: pa.Table) -> np.ndarray | None:
    rows = pc.starts_with(table["dtype"], _COMPLEX).to_numpy(zero_copy_only=False)
    return rows if rows.any() else None


def _scan(path: Path, files: list[Path], columns: list[str], expr: pc.Expression) -> pa.Table:
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    try:
        return dataset.to_table(columns=columns, filter=expr)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:  # a corrupt footer: names not UTF-8
        raise TraceFormatError(f"could not read trace {_quoted(path)}: {exc}") from None


def _scan_each(path: Path, files: list[Path], columns: list[str], expr: pc.Expression, errors: str) -> pa.Table:
    """The rows of the files whose rows are valid; a bad row raises (or skips its file), naming the file."""
    tables = []
    for file in files:
        table = _scan(path, [file], columns, expr)
        problem = row_problem(table)
        if problem is None:
            tables.append(table)
            continue
        _skip_or_raise(TraceFormatError(f"corrupt trace file {_quoted(file)}: {problem}"), errors)
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table().select(columns)


def _training_order(table: pa.Table) -> np.ndarray | None:
    """The permutation that sorts rows by (step, rank, seq); None when they already are."""
    if table.num_rows < 2:
        return None
    step, rank, seq = (table[c].to_numpy() for c in ("step", "rank", "seq"))
    ds, dr, dq = np.diff(step), np.diff(rank), np.diff(seq)
    if np.all((ds > 0) | ((ds == 0) & ((dr > 0) | ((dr == 0) & (dq >= 0))))):
        return None
    return np.lexsort((seq, rank, step))
