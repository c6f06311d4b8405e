"""``tracer.load``: a trace (or a filtered part of it) as a pandas DataFrame."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from tracer._store import load_table

if TYPE_CHECKING:
    import pandas


def trace_path(trace: Any) -> Path:
    """The directory of ``trace``: a path, or a ``tracer.Run``."""
    if isinstance(trace, (str, os.PathLike)):
        return Path(trace)
    path = getattr(trace, "path", None)
    if isinstance(path, Path):
        if hasattr(trace, "flush"):
            trace.flush()
        return path
    raise TypeError(f"trace must be a path or a tracer.Run (got {type(trace).__name__})")


def load(
    trace: str | os.PathLike[str] | Any,
    *,
    kind: str | Iterable[str] | None = None,
    name: str | Iterable[str] | None = None,
    step: int | Iterable[int] | slice | None = None,
    columns: Sequence[str] | None = None,
    errors: str = "raise",
) -> "pandas.DataFrame":
    """Load a trace as a DataFrame, one row per captured tensor, in training order.

    Filters are pushed into the Parquet reader, so loading one step of a large trace
    reads only the row groups that hold it.

    Example::

        grads = tracer.load("traces/run1", kind="grad", step=0)
        grads.set_index("name")["norm"]

    Args:
        trace: the trace directory, or the ``run`` from ``tracer.trace``.
        kind: one kind or a list of kinds (``"grad"``, ``["param", "update"]``).
        name: module/parameter name(s); glob patterns (``"fc*.weight"``) are allowed.
        step: a step, a list/range of steps, or a slice (``slice(10, 20)``).
        columns: the columns to read (default: all).
        errors: ``"raise"`` (default) on a corrupt data file, or ``"skip"`` it with a warning.

    Raises:
        TraceFormatError: the path is missing, not a trace, or holds a corrupt file.
    """
    table = load_table(trace_path(trace), kind=kind, name=name, step=step, columns=columns, errors=errors)
    return to_frame(table)


_NULLABLE = {"nonfinite": "Int64", "param_group": "Int64", "grad_enabled": "boolean"}


def to_frame(table: Any) -> "pandas.DataFrame":
    """Arrow table -> DataFrame; integer/bool columns that may be null keep their type."""
    frame = table.to_pandas()
    for column, dtype in _NULLABLE.items():
        if column in frame.columns:
            frame[column] = frame[column].astype(dtype)
    return frame
