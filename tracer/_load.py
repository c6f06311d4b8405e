"""``tracer.load``: a trace (or a filtered part of it) as a pandas DataFrame."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from tracer._reader import read_trace

if TYPE_CHECKING:
    import pandas

    from tracer._trace import TraceLike


def load(
    trace: TraceLike,
    *,
    kind: str | Iterable[str] | None = None,
    name: str | Iterable[str] | None = None,
    step: int | Iterable[int] | slice | None = None,
    columns: Sequence[str] | None = None,
    errors: str = "raise",
    assemble: bool = False,
) -> pandas.DataFrame:
    """Load a trace as a DataFrame, one row per captured tensor, in training order.

    Filters are pushed into the Parquet reader, so loading one step of a large trace
    reads only the row groups that hold it.

    Example::

        grads = tracer.load("traces/run1", kind="grad", step=0)
        grads.set_index("name")["norm"]

    Args:
        trace: the trace directory, or the ``run`` from ``tracer.trace`` (flushed first),
            or a ``tracer.Trace`` (a DataFrame is filtered in memory, the same way).
        kind: one kind or a list of kinds (``"grad"``, ``["param", "update"]``).
        name: module/parameter name(s); glob patterns (``"fc*.weight"``) are allowed.
        step: a step, a list/range of steps, or a slice (``slice(10, 20)``).
        columns: the columns to read (default: all).
        errors: ``"raise"`` (default) on a corrupt data file, or ``"skip"`` it with a warning.
        assemble: combine the shard rows of a sharded tensor (FSDP2, DTensor: one row per
            rank) into one row per (step, kind, name, call, part) holding the whole tensor's
            values and statistics (``rank`` null where shards of several ranks were combined).

    Raises:
        ValueError: an unknown kind (the message lists the kinds).
        TraceFormatError: the path is missing, not a trace, or holds a corrupt file.

    Warns:
        UserWarning: ``name`` or ``step`` matched no row; the warning names the closest
            names and the steps the trace has.
    """
    from tracer._trace import Trace

    if not isinstance(assemble, bool):
        raise TypeError(f"assemble must be True or False (got {assemble!r})")
    opened = Trace.open(trace)
    read = columns
    if assemble and columns is not None:
        from tracer._assemble import NEEDED

        read = list(dict.fromkeys([*columns, *NEEDED]))
    rows = opened.rows(kind=kind, name=name, step=step, columns=read, errors=errors)
    if assemble:
        from tracer._assemble import assemble as assembled

        rows = assembled(rows)
        if columns is not None:
            rows = rows[list(columns)]
    if rows.empty and (name is not None or step is not None):
        from tracer._no_match import why_empty

        why = why_empty(opened, kind=kind, name=name, step=step)
        if why is not None:
            warnings.warn(f"tracer.load: {why}", UserWarning, stacklevel=2)
    return rows


def read_frame(
    path: Path,
    *,
    kind: str | Iterable[str] | None = None,
    name: str | Iterable[str] | None = None,
    step: int | Iterable[int] | slice | None = None,
    columns: Sequence[str] | None = None,
    errors: str = "raise",
) -> pandas.DataFrame:
    """The rows of the trace directory ``path`` that match, as :func:`load` returns them."""
    read = read_trace(path, kind=kind, name=name, step=step, columns=columns, errors=errors)
    return to_frame(read.table, read.order, read.complex_rows)


_NULLABLE = {"nonfinite": "Int64", "param_group": "Int64", "grad_enabled": "boolean", "rule_matches": "boolean"}


def to_frame(
    table: pa.Table, order: np.ndarray | None = None, complex_rows: np.ndarray | None = None
) -> pandas.DataFrame:
    """Arrow table -> DataFrame, rows taken in ``order`` when given.

    Integer/bool columns that may be null keep their type. Each ``values`` entry is a
    read-only NumPy view of the Arrow buffer, not a copy: converting a full-capture trace
    costs little more than reading it. The values of ``complex_rows`` (stored as
    interleaved real and imaginary parts) are viewed as complex128, ``numel`` of them.
    """
    has_values = "values" in table.column_names
    rest = table.drop_columns(["values"]) if has_values else table
    if order is not None:
        rest = rest.take(order)  # in Arrow: a third of what pandas' take of each column costs
    frame = rest.to_pandas(split_blocks=True)  # a block per column: no copy to consolidate them
    for column, dtype in _NULLABLE.items():
        if column in frame.columns:
            frame[column] = frame[column].astype(dtype)
    if has_values:
        views = _value_views(table["values"], complex_rows)
        frame.insert(table.column_names.index("values"), "values", views if order is None else views[order])
    return frame


def _value_views(column: pa.ChunkedArray, complex_rows: np.ndarray | None = None) -> np.ndarray:
    """One read-only array (a view, no copy) or None per row of a list column: float64, or
    complex128 for ``complex_rows``."""
    out = np.empty(len(column), dtype=object)
    start = 0
    for chunk in column.chunks:
        n = len(chunk)
        offsets = chunk.offsets.to_numpy()
        flat = chunk.values
        if flat.null_count:  # never written so; read it the slow way rather than fail
            for i, v in enumerate(chunk.to_pylist()):
                out[start + i] = None if v is None else np.asarray(v, dtype=np.float64)
        else:
            data = flat.to_numpy(zero_copy_only=True)
            for i in np.flatnonzero(chunk.is_valid().to_numpy(zero_copy_only=False)).tolist():
                out[start + i] = data[offsets[i] : offsets[i + 1]]  # item by item: never broadcast
        start += n
    if complex_rows is not None:
        for i in np.flatnonzero(complex_rows).tolist():
            if out[i] is not None:
                out[i] = as_complex(out[i])
    return out


def as_complex(interleaved: np.ndarray) -> np.ndarray:
    """``[re0, im0, re1, im1, ...]`` as complex128 ``[re0 + im0·j, ...]``: a view, not a copy."""
    return np.ascontiguousarray(interleaved, dtype=np.float64).view(np.complex128)


def stored_values(values: Any) -> np.ndarray | None:
    """A ``values`` entry as the trace stores it: complex values as interleaved float64 parts."""
    if values is None or (isinstance(values, float) and np.isnan(values)):
        return None
    array = np.asarray(values)
    if np.iscomplexobj(array):
        return np.ascontiguousarray(array, dtype=np.complex128).view(np.float64)
    return array.astype(np.float64, copy=False)
