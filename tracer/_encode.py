"""Rows -> Arrow columns for one data file: statistics and values per row, the ``values``
column built in reused float64 memory, and the row groups of a large file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tracer._batch import Batch, Packed
from tracer._hparams import as_text
from tracer._schema import COLUMNS, KINDS, SCHEMA, Row
from tracer._tensors import finish

MAX_LIST_VALUES = 2**31 - 1
"""A tensor with more elements keeps its statistics only: ``list<float64>`` offsets are int32."""

ROW_GROUP_BYTES = 16 << 20
"""A file whose rows hold more than this is written in row groups of about this size."""
_MIN_GROUP_BYTES = 1 << 20
KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}
Values = np.ndarray | torch.Tensor | Packed | None
"""One row's values to store (see :func:`finish`), or a :class:`Packed` batch's."""


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
            row.kind != rows[start].kind
            or size >= ROW_GROUP_BYTES
            or (size >= _MIN_GROUP_BYTES and row.name != rows[i - 1].name)
        ):
            groups.append((start, i))
            start, size = i, 0
        size += 64 + (0 if v is None else 8 * _size(v))  # float64 values + the rest of a row
    groups.append((start, len(rows)))
    return groups


def encode_rows(rows: Sequence[Row | Batch], rank: int) -> tuple[dict[str, pa.Array], list[Values]]:
    """Every column but ``values`` as Arrow arrays (in :data:`SCHEMA`), and each row's values
    to store (see :func:`finish`), for :class:`ValuesBuffer`. A :class:`Batch` adds its rows'
    columns as arrays made all at once (:meth:`Batch.encode`)."""
    names = [c for c in COLUMNS if c != "values"]
    chunks: dict[str, list[pa.Array]] = {c: [] for c in names}
    cols: dict[str, list[Any]] = {c: [] for c in names}  # the single rows since the last batch
    values: list[Values] = []
    stat_names = ("mean", "std", "min", "max", "norm", "nonfinite")

    def close_run() -> None:
        if cols["step"]:
            for c in names:
                chunks[c].append(pa.array(cols[c], type=SCHEMA.field(c).type))
                cols[c] = []

    batches: list[Batch] = []  # consecutive batches, encoded together

    def close_batches() -> None:
        if batches:
            batch_cols, packed = Batch.joined(batches).encode(MAX_LIST_VALUES, rank)
            for key, column in batch_cols.items():
                chunks[key].append(column)
            values.append(packed)  # many rows' values in one entry (a file with batches is one row group)
            batches.clear()

    for row in rows:
        if isinstance(row, Batch):
            close_run()
            batches.append(row)
            continue
        close_batches()
        cap = row.captured
        stats, vals = finish(cap)
        cols["step"].append(row.step)
        cols["seq"].append(row.seq)
        cols["kind"].append(row.kind)
        cols["name"].append(row.name)
        cols["call"].append(row.call)
        cols["part"].append(row.part)
        cols["module_type"].append(row.module_type)
        cols["shape"].append(cap.shape)
        cols["dtype"].append(cap.dtype)
        cols["numel"].append(cap.numel)
        for key, value in zip(stat_names, stats):
            cols[key].append(value)
        cols["rank"].append(rank)
        cols["grad_enabled"].append(row.grad_enabled)
        cols["optimizer"].append(row.optimizer)
        cols["param_group"].append(row.param_group)
        cols["hparams"].append(as_text(row.hparams))
        cols["rule_error"].append(row.rule_error)
        cols["rule_matches"].append(row.rule_matches)
        cols["global_shape"].append(row.global_shape)
        cols["shard_offset"].append(row.shard_offset)
        cols["placements"].append(row.placements)
        if vals is not None and _size(vals) >= MAX_LIST_VALUES:
            vals = None  # a list<float64> cannot hold it: statistics only (README, Limits)
        values.append(vals)
    close_run()
    close_batches()
    if not chunks["step"]:
        return {c: pa.array([], type=SCHEMA.field(c).type) for c in names}, values
    return {c: parts[0] if len(parts) == 1 else pa.concat_arrays(parts) for c, parts in chunks.items()}, values


class ValuesBuffer:
    """The float64 memory behind a row group's ``values`` column, reused for the next one.

    Values are converted straight into it (float32 -> float64 in one torch copy), instead
    of a float64 copy per tensor, a concatenation, and fresh pages every time: a full
    capture spends its time encoding Parquet, not allocating. A row group's array is a view
    of this memory: it must be written before the next ``list_array`` call.
    """

    def __init__(self) -> None:
        self._flat = np.empty(0, dtype=np.float64)

    def list_array(self, values: Sequence[Values]) -> pa.Array:
        """``values`` (each under :data:`MAX_LIST_VALUES`, a row group's; a :class:`Packed`
        entry holds many rows') as a ``list<float64>`` array."""
        lengths, missing = _lengths(values)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total > self._flat.size:
            self._flat = np.empty(max(total, self._flat.size * 5 // 4), dtype=np.float64)
        flat = self._flat[:total]
        target = torch.from_numpy(flat)
        start = 0
        for v in values:
            if isinstance(v, Packed):
                stop = start + v.flat.size
                flat[start:stop] = v.flat
            else:
                stop = start + (0 if v is None else _size(v))
                if isinstance(v, torch.Tensor):
                    target[start:stop].copy_(v)  # exact: every float16/bfloat16/float32 is a float64
                elif v is not None:
                    flat[start:stop] = v
            start = stop
        mask = pa.array(missing, type=pa.bool_())
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat), mask=mask)

    def shrink(self, max_bytes: int) -> None:
        """Let go of the memory if one huge tensor made it larger than ``max_bytes``."""
        if self._flat.nbytes > max_bytes:
            self._flat = np.empty(0, dtype=np.float64)


def _lengths(values: Sequence[Values]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's number of values and whether it has none (null), the rows of a
    :class:`Packed` entry included; the rows one by one only where they are single rows."""
    lengths: list[np.ndarray] = []
    missing: list[np.ndarray] = []
    run: list[int] = []  # consecutive single rows: their lengths, -1 for None

    def close_run() -> None:
        sizes = np.array(run, dtype=np.int64)
        lengths.append(np.maximum(sizes, 0))
        missing.append(sizes < 0)
        run.clear()

    for v in values:
        if isinstance(v, Packed):
            if run:
                close_run()
            lengths.append(v.lengths)
            missing.append(v.missing)
        else:
            run.append(-1 if v is None else _size(v))
    if run or not lengths:
        close_run()
    return np.concatenate(lengths), np.concatenate(missing)


def _size(v: np.ndarray | torch.Tensor) -> int:
    return v.numel() if isinstance(v, torch.Tensor) else v.size
