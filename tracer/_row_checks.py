"""Every row read is checked: non-null columns, counts in range, shapes that hold ``numel``
elements, ``values`` of the right length, ``hparams`` that are JSON objects. A damaged
row is a :class:`tracer.TraceFormatError` naming the row, never a traceback later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracer._errors import TraceFormatError
from tracer._schema import SCHEMA


def _type_name(value: Any) -> str:
    """How JSON names the type of ``value``, with the value itself when it is short."""
    if value is None:
        return "null"
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    name = names.get(type(value), type(value).__name__)
    text = json.dumps(value) if isinstance(value, (bool, int, float, str)) else ""
    return f"{name} {text}" if text and len(text) <= 40 else name


def parse_hparams(text: str, where: str) -> dict[str, Any]:
    """The hyper-parameters of an ``hparams`` cell (JSON text) as a dict; ``where`` names the cell."""
    value = _parse_json(lambda: text, f"{where} is not valid JSON")
    if not isinstance(value, dict):
        raise TraceFormatError(f"{where} must be a JSON object (got {_type_name(value)})")
    return value


def _parse_json(read: Callable[[], str | bytes], what: str) -> Any:
    try:
        return json.loads(read())
    except RecursionError:
        raise TraceFormatError(f"{what}: it is nested too deeply") from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, bad UTF-8
        raise TraceFormatError(f"{what}: {exc}") from None


_EXACT_LIMIT = 2**53
"""Counts and indices a trace holds (steps, calls, ranks, sizes) are below this: beyond it
they are not exact as float64, which pandas, JSON readers and plots turn them into."""

_COUNTS = ("step", "seq", "call", "rank", "numel", "param_group")
_REQUIRED = tuple(f.name for f in SCHEMA if not f.nullable)


def _checked_with(columns: Sequence[str]) -> list[str]:
    """Columns that must be read with ``columns`` to check them (a shape against numel, ...)."""
    return ["numel", "dtype"] if {"shape", "values"} & set(columns) else []


_COMPLEX = "complex"
"""The prefix of the dtypes whose ``values`` interleave real and imaginary parts."""


def is_complex(dtype: str) -> bool:
    """True for the dtypes whose ``values`` interleave real and imaginary parts (``complex64``, ...)."""
    return dtype.startswith(_COMPLEX)


def row_problem(table: pa.Table) -> str | None:
    """What is wrong with the first bad row of ``table`` (a part of a trace), or None.

    Checked: Arrow's own checks (text is UTF-8, ...), no nulls where the schema has none,
    counts in range, each shape holding
    ``numel`` elements, each ``values`` holding ``numel`` numbers (twice that for complex
    dtypes), and each ``hparams`` being a JSON object.
    """
    for check in (_structure_problem, _null_problem, _count_problem, _shape_problem, _values_problem, _hparams_problem):
        problem = check(table)
        if problem is not None:
            return problem
    return None


def _structure_problem(table: pa.Table) -> str | None:
    """Arrow's own full check: offsets in bounds, text valid UTF-8 (a flipped byte in a page)."""
    for name in table.column_names:
        try:
            table[name].validate(full=True)
        except pa.ArrowException as exc:
            return f"column {name!r} is damaged: {exc}"
    return None


def _null_problem(table: pa.Table) -> str | None:
    for name in _REQUIRED:
        if name in table.column_names and table[name].null_count:
            row = _first(table[name].is_null())
            return f"{_row(table, row)}: {name} is null"
    return None


def _count_problem(table: pa.Table) -> str | None:
    for name in _COUNTS:
        if name not in table.column_names:
            continue
        values = table[name].to_numpy()
        present = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.size, dtype=bool)
        bad = np.flatnonzero(present & ((values < 0) | (values >= _EXACT_LIMIT)))
        if bad.size:
            row = int(bad[0])
            return f"{_row(table, row)}: {name} is {int(values[row])}, not a count from 0 to 2**53"
    return None


def _shape_problem(table: pa.Table) -> str | None:
    if "shape" not in table.column_names:
        return None
    shape = table["shape"]
    dims = pc.list_flatten(shape)
    if dims.null_count:
        return "a shape holds a null dimension"
    sizes = dims.to_numpy()
    bad = np.flatnonzero(_segment_any(shape, (sizes < 0) | (sizes >= _EXACT_LIMIT)))
    if bad.size:
        row = int(bad[0])
        return f"{_row(table, row)}: shape {shape[row].as_py()} has a negative or huge dimension"
    if "numel" not in table.column_names:
        return None
    numel = table["numel"].to_numpy()
    bad = np.flatnonzero(_segment_products(shape, sizes) != numel)
    if bad.size:
        row = int(bad[0])
        return f"{_row(table, row)}: shape {shape[row].as_py()} does not hold numel = {int(numel[row])} elements"
    return None


def _segment_lengths(lists: pa.ChunkedArray) -> np.ndarray:
    """The length of each list (0 for a null one)."""
    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy()


def _segment_any(lists: pa.ChunkedArray, flags: np.ndarray) -> np.ndarray:
    """Per list: whether any of its items is flagged (``flags`` runs over the flattened items)."""
    lengths = _segment_lengths(lists)
    ends = np.cumsum(lengths)
    counts = np.concatenate([[0], np.cumsum(flags)])
    return (counts[ends] - counts[ends - lengths]) > 0


def _segment_products(lists: pa.ChunkedArray, flat: np.ndarray) -> np.ndarray:
    """The product of each list's numbers (1 for an empty list), in float64."""
    lengths = _segment_lengths(lists)
    out = np.ones(len(lengths), dtype=np.float64)
    filled = lengths > 0
    if filled.any():
        starts = (np.cumsum(lengths) - lengths)[filled]
        out[filled] = np.multiply.reduceat(flat.astype(np.float64), starts)
    return out


def _values_problem(table: pa.Table) -> str | None:
    if "values" not in table.column_names:
        return None
    values = table["values"]
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    if not valid.any():
        return None
    lengths = _segment_lengths(values)
    numel = table["numel"].to_numpy()
    dtypes = table["dtype"]
    complex_rows = pc.starts_with(dtypes, _COMPLEX).to_numpy(zero_copy_only=False)
    expected = numel * np.where(complex_rows, 2, 1)
    bad = np.flatnonzero(valid & (lengths != expected))
    if bad.size:
        row = int(bad[0])
        what = f"2 x numel = {int(expected[row])}" if complex_rows[row] else f"numel = {int(numel[row])}"
        return f"{_row(table, row)}: it stores {int(lengths[row])} values, not {what} ({dtypes[row].as_py()})"
    return None


def _hparams_problem(table: pa.Table) -> str | None:
    if "hparams" not in table.column_names:
        return None
    for text in pc.unique(table["hparams"].drop_null()).to_pylist():
        try:
            parse_hparams(text, "hparams")
        except TraceFormatError as exc:
            row = _first(pc.equal(table["hparams"], text))
            return f"{_row(table, row)}: {exc}"
    return None


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[0])


def _row(table: pa.Table, row: int) -> str:
    """``the grad row of 'weight' at step 0 (seq 4)``: a row, by what of it was read and is not null."""
    cell = {c: table[c][row].as_py() for c in ("step", "seq", "kind", "name") if c in table.column_names}
    text = "the " + (f"{cell['kind']} " if cell.get("kind") is not None else "") + "row"
    if cell.get("name") is not None:
        text += f" of {cell['name']!r}"
    if cell.get("step") is not None:
        text += f" at step {cell['step']}"
    return text + (f" (seq {cell['seq']})" if cell.get("seq") is not None else "")
