"""Reading a trace directory: its metadata, its data files, and the filtered reader.

Layout of a trace directory: see :mod:`tracer._store`.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tracer._errors import TraceFormatError
from tracer._row_checks import _COMPLEX, _checked_with, _parse_json, _type_name, row_problem
from tracer._schema import COLUMNS, META_FILE, SCHEMA, SCHEMA_VERSION, V1_COLUMNS


def read_meta(path: Path) -> dict[str, Any]:
    """The trace's metadata, checked: every key a reader uses has its documented type.

    ``{}`` for a trace without a metadata file. Raises TraceFormatError naming the file
    and the key that is wrong.
    """
    file = path / META_FILE
    if not file.is_file():
        return {}
    meta = _parse_json(file.read_bytes, f"{_quoted(file)} is not valid trace metadata")
    problem = _mismatch(meta, _META_SPEC, "")
    if problem is not None:
        raise TraceFormatError(f"{_quoted(file)} is not valid trace metadata: {problem}")
    _check_version(meta.get("schema_version", SCHEMA_VERSION), file)
    return meta


def _quoted(file: Path) -> str:
    return repr(str(file))


# --------------------------------------------------------------------------- metadata types


class _Required:
    """Marks a key of a :data:`_META_SPEC` object that must be present."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


_STRINGS = [str]
_OPTIONAL_STRINGS = (_STRINGS, None)

_META_SPEC: dict[str, Any] = {
    "format": str,
    "schema_version": int,
    "model": (str, None),
    "complete": (bool, None),
    "steps": (int, [int], None),  # a count in a recorded trace, the list of steps in a golden one
    "optimizers": [{"class": _Required(str), "qualname": str, "bases": _STRINGS, "adopted": bool}],
    "files": _STRINGS,  # the data files the trace wrote
    "parameters": [
        {
            "name": _Required(str),
            "shape": [int],
            "dtype": str,
            "requires_grad": bool,
            "optimizer": (int, None),
            "param_group": (int, None),
            "aliases": _STRINGS,  # other names of a shared (tied) parameter
        }
    ],
    "options": {
        "capture": _STRINGS,
        "max_values": (int, None),
        "every": int,
        "include": _OPTIONAL_STRINGS,
        "exclude": _OPTIONAL_STRINGS,
        "verify": bool,
        "capture_ops": bool,
    },
    "golden": (dict, None),
}
"""What each metadata key holds: a type, ``None`` (JSON null), a tuple of choices, ``[spec]``
(a list of such), or ``{key: spec}`` (an object; other keys are allowed, for newer writers)."""


def _mismatch(value: Any, spec: Any, where: str) -> str | None:
    """None when ``value`` fits ``spec``, else what is wrong, naming the key (``optimizers[0].class``)."""
    if isinstance(spec, tuple):
        if any(_mismatch(value, choice, where) is None for choice in spec):
            return None
        return f"{where or 'the file'} must be {_spec_name(spec)} (got {_type_name(value)})"
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{where or 'the file'} must be {_spec_name(spec)} (got {_type_name(value)})"
        problems = (_mismatch(item, spec[0], f"{where}[{i}]") for i, item in enumerate(value))
        return next((p for p in problems if p is not None), None)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where or 'the file'} must be {_spec_name(spec)} (got {_type_name(value)})"
        for key, sub in spec.items():
            name = f"{where}.{key}" if where else key
            required = isinstance(sub, _Required)
            if key not in value:
                if required:
                    return f"{name} is missing"
                continue
            problem = _mismatch(value[key], sub.spec if required else sub, name)
            if problem is not None:
                return problem
        return None
    if _fits(value, spec):
        return None
    return f"{where} must be {_spec_name(spec)} (got {_type_name(value)})"


def _fits(value: Any, spec: Any) -> bool:
    if spec is None:
        return value is None
    if spec is int:  # JSON true/false are not counts
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, spec)


def _spec_name(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_spec_name(s) for s in spec)
    if isinstance(spec, list):
        return f"a list of {_spec_name(spec[0]).removeprefix('a ').removeprefix('an ')}s"
    if isinstance(spec, dict):
        return "an object"
    return _JSON_NAMES[spec]


_JSON_NAMES = {None: "null", str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


def _check_version(version: Any, where: Path) -> None:
    try:
        version = int(version)
    except (TypeError, ValueError, OverflowError):
        raise TraceFormatError(f"{_quoted(where)} has an unreadable schema version {version!r}") from None
    if version > SCHEMA_VERSION:
        raise TraceFormatError(
            f"{_quoted(where)} was written with trace schema v{version}, newer than this tracer "
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


def check_trace_dir(path: Path, errors: str = "raise") -> list[Path]:
    """Validate ``path`` as a trace and return its data files, or raise TraceFormatError.

    With ``errors="skip"``, unreadable data files are left out with a warning instead.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip' (got {errors!r})")
    files = check_trace_root(path)
    good = []
    for file in files:
        try:
            _check_file_once(file)
        except TraceFormatError as exc:
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
    files = check_trace_dir(path, errors)
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
