"""Reading a trace directory: its metadata, its data files, and the filtered reader.

Layout of a trace directory: see :mod:`tracer._store`.
"""

from __future__ import annotations

import fnmatch
import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tracer._errors import TraceFormatError
from tracer._schema import COLUMNS, META_FILE, SCHEMA, SCHEMA_VERSION


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
