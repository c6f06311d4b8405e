"""Shard rows (one per rank, see :mod:`tracer._sharded`) assembled into one row per tensor.

Rows with the same (step, kind, name, call, part) and a ``global_shape`` are the shards of
one tensor. Copies of the same shard (same ``shard_offset`` and ``shape``: replicated mesh
dimensions) are kept once, after checking that they agree. The assembled row holds:

- ``shape`` = ``global_shape``, ``numel`` its size, ``shard_offset`` all zeros, and
  ``global_shape`` / ``placements`` as recorded (so it still says it was sharded);
- ``values``: the full tensor, row-major, each shard's values placed at its offset — when
  every shard's values are stored; else null;
- statistics of the whole tensor, combined exactly (to float64 rounding) from the shards'
  count, mean, population std (M2 = n·std²), min, max, norm (Σx² = norm²) and non-finite
  count, whether or not values are stored;
- ``rank`` the one rank that wrote the rows, null where several ranks' rows were combined;
  the other columns (``seq``, ``dtype``, ``optimizer``, ...) from the lowest rank's row;
  ``rule_error`` the largest of the shards', ``rule_matches`` False if any shard's is,
  null if any shard's is null, else True.

Where the shards do not cover the tensor (a rank's rows filtered out or lost) or replicas
disagree (a warning says which ranks and by how much), values and statistics are null:
no partial tensor passes for the whole one. A ``Partial`` placement (addends, not pieces)
is assembled only from stored values (summed); rows without ``global_shape`` pass through.

    >>> whole = assemble(tracer.load("traces/fsdp"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

KEYS = ("step", "kind", "name", "call", "part")
STATS = ("mean", "std", "min", "max", "norm", "nonfinite")
NEEDED = (*KEYS, "rank", "shape", "dtype", "numel", "values", "global_shape", "shard_offset", "placements", *STATS)
"""The columns assembling reads (``tracer.load(..., columns=...)`` must read them too)."""


def assemble(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, kind, name, call, part): shard rows combined, other rows unchanged,
    in the order of each tensor's first row.

    Raises:
        ValueError: a column that assembling needs is missing (the message names it).
    """
    if "global_shape" not in frame.columns:
        return frame
    sharded = frame["global_shape"].notna().to_numpy()
    if not sharded.any():
        return frame
    missing = [c for c in NEEDED if c not in frame and c not in ("dtype", "values")]
    if missing:
        raise ValueError(f"assembling shard rows needs the columns {missing} (load the trace with them)")
    plain, shards = frame[~sharded], frame[sharded]
    columns = list(frame.columns)
    records = (dict(zip(columns, values)) for values in zip(*(shards[c].tolist() for c in columns)))
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    where: dict[tuple[Any, ...], Any] = {}
    for index, record in zip(shards.index.tolist(), records):  # plain Python: pandas groups cost ms each
        key = tuple(record[k] for k in KEYS)
        group = groups.get(key)
        if group is None:
            groups[key], where[key] = [record], index
        else:
            group.append(record)
    rows = [_assembled(group) for group in groups.values()]
    combined = pd.DataFrame(rows, index=list(where.values()), columns=frame.columns)
    out = pd.concat([plain, combined]).sort_index(kind="stable").reset_index(drop=True)
    for column in ("rank", "nonfinite"):
        if out[column].isna().any() or str(frame[column].dtype) == "Int64":
            out[column] = out[column].astype("Int64")
        else:
            out[column] = out[column].astype(frame[column].dtype)
    return out


def combine_stats(parts: list[tuple[int, Any, Any, Any, Any, Any, Any]]) -> tuple[Any, ...]:
    """``(mean, std, min, max, norm, nonfinite)`` of the concatenation of tensors given as
    ``(numel, mean, std, min, max, norm, nonfinite)`` each (std the population std);
    empty parts are skipped.

        >>> combine_stats([(2, 1.5, 0.5, 1.0, 2.0, 5**0.5, 0), (1, 3.0, 0.0, 3.0, 3.0, 3.0, 0)])
        (2.0, 0.816496580927726, 1.0, 3.0, 3.7416573867739413, 0)
    """
    parts = [p for p in parts if p[0] > 0]
    if not parts:
        return (None, None, None, None, 0.0, 0)
    n = sum(p[0] for p in parts)
    mean = math.fsum(p[0] * p[1] for p in parts) / n
    if any(math.isnan(p[2]) for p in parts):  # a non-finite shard: tracer's std is NaN for it
        std = math.nan
    else:
        m2 = math.fsum(p[0] * p[2] * p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
        std = math.sqrt(m2 / n)
    mins, maxs = [p[3] for p in parts], [p[4] for p in parts]
    lo = math.nan if any(math.isnan(v) for v in mins) else min(mins)
    hi = math.nan if any(math.isnan(v) for v in maxs) else max(maxs)
    norm = math.sqrt(math.fsum(p[5] * p[5] for p in parts))
    return (mean, std, lo, hi, norm, int(sum(p[6] for p in parts)))


def _assembled(group: list[dict[str, Any]]) -> dict[str, Any]:
    group = sorted(group, key=lambda r: r["rank"])
    first = group[0]
    row = dict(first)
    shape = _ints(first["global_shape"])
    numel = math.prod(shape)
    ranks = {r["rank"] for r in group}
    row.update(
        shape=list(shape), numel=numel, shard_offset=[0] * len(shape), values=None,
        rank=next(iter(ranks)) if len(ranks) == 1 else None,
    )  # fmt: skip
    row.update(dict.fromkeys(STATS))
    if "rule_error" in first:
        row["rule_error"] = _largest([r["rule_error"] for r in group])
    if "rule_matches" in first:
        row["rule_matches"] = _all([r["rule_matches"] for r in group])
    if "Partial" in str(first["placements"]):
        _partial(row, group, shape)
        return row
    shards = _distinct(group)
    if shards is None:
        return row
    if not _covers([(_offset(s), _ints(s["shape"])) for s in shards], shape):
        return row
    row.update(zip(STATS, combine_stats([_stat_tuple(s) for s in shards])))
    if all(_offset(s) is not None for s in shards):
        row["values"] = _placed(shards, shape)
    return row


def _distinct(group: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """One row per shard (replicas dropped), or None where replicas disagree (warned)."""
    kept: dict[Any, dict[str, Any]] = {}
    for s in group:
        offset = _offset(s)
        key = (offset, _ints(s["shape"])) if offset is not None else ("rank", s["rank"])
        other = kept.get(key)
        if other is None:
            kept[key] = s
            continue
        difference = _disagreement(other, s)
        if difference is not None:
            warnings.warn(
                f"tracer: replicated copies of {s['kind']} {s['name']!r} (step {s['step']}, call {s['call']}, "
                f"part {s['part']!r}) differ between ranks {other['rank']} and {s['rank']} ({difference}); "
                "its assembled row has no values or statistics (load without assemble=True for each rank's copy)",
                UserWarning,
                stacklevel=4,
            )
            return None
    return list(kept.values())


def _disagreement(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None:
        if va.shape == vb.shape and np.array_equal(va, vb, equal_nan=True):
            return None
        if va.shape != vb.shape:
            return f"{va.size} and {vb.size} values"
        with np.errstate(all="ignore"):
            return f"largest difference {float(np.nanmax(np.abs(va - vb)))!r}"
    sa, sb = _stat_tuple(a), _stat_tuple(b)
    if all(x == y or (_isnan(x) and _isnan(y)) for x, y in zip(sa, sb)):
        return None
    return f"statistics {sa[1:]} and {sb[1:]}"


def _covers(boxes: list[tuple[tuple[int, ...] | None, tuple[int, ...]]], shape: tuple[int, ...]) -> bool:
    """Whether disjoint shards of these offsets and shapes fill ``shape`` exactly."""
    boxes = [(o, s) for o, s in boxes if math.prod(s) > 0]
    if sum(math.prod(s) for _, s in boxes) != math.prod(shape):
        return False
    if any(o is None for o, _ in boxes):
        return True  # not placeable (strided shards): sizes are all that can be checked
    for i, (oa, sa) in enumerate(boxes):
        if any(o < 0 or o + n > d for o, n, d in zip(oa, sa, shape)):  # type: ignore[arg-type]
            return False
        for ob, sb in boxes[:i]:
            if all(a < b + m and b < a + n for a, n, b, m in zip(oa, sa, ob, sb)):  # type: ignore[arg-type]
                return False
    return True


def _placed(shards: list[dict[str, Any]], shape: tuple[int, ...]) -> np.ndarray | None:
    pieces = []
    for s in shards:
        local = _ints(s["shape"])
        if math.prod(local) == 0:
            continue
        values = _values(s)
        if values is None:
            return None
        pieces.append((_offset(s), local, values))
    dtype = np.complex128 if any(np.iscomplexobj(v) for _, _, v in pieces) else np.float64
    full = np.zeros(shape, dtype=dtype)
    for offset, local, values in pieces:
        full[tuple(slice(o, o + n) for o, n in zip(offset, local))] = values.reshape(local)  # type: ignore[arg-type]
    return full.reshape(-1)


def _partial(row: dict[str, Any], group: list[dict[str, Any]], shape: tuple[int, ...]) -> None:
    """A tensor with a ``Partial`` placement: the sum of its copies, from stored values only."""
    if "Replicate" in str(row["placements"]) or "sum" not in str(row["placements"]):
        return  # a replicated addend would count twice; max/min/avg reductions: not assembled here
    from tracer._stats import _numpy_stats

    total: np.ndarray | None = None
    for s in group:
        values, offset, local = _values(s), _offset(s), _ints(s["shape"])
        if values is None or offset is None or values.size != math.prod(local):
            return
        part = np.zeros(shape, dtype=np.result_type(values, np.float64))
        part[tuple(slice(o, o + n) for o, n in zip(offset, local))] = values.reshape(local)
        total = part if total is None else total + part
    if total is None:
        return
    flat = total.reshape(-1)
    row["values"] = flat
    row.update(zip(STATS, _numpy_stats(np.abs(flat) if np.iscomplexobj(flat) else flat)))


def _stat_tuple(s: dict[str, Any]) -> tuple[Any, ...]:
    n = int(s["numel"])
    mean, std, lo, hi, norm, nonfinite = (math.nan if _isnan(s[c]) else float(s[c]) for c in STATS)
    return (n, mean, std, lo, hi, norm, 0 if math.isnan(nonfinite) else int(nonfinite))


def _values(s: dict[str, Any]) -> np.ndarray | None:
    v = s.get("values")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    array = np.asarray(v)
    n = int(s["numel"])
    if "complex" in str(s.get("dtype", "")) and not np.iscomplexobj(array) and array.size == 2 * n:
        array = np.ascontiguousarray(array, dtype=np.float64).view(np.complex128)  # interleaved parts
    return array if array.size == n else None


def _offset(s: dict[str, Any]) -> tuple[int, ...] | None:
    v = s["shard_offset"]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else _ints(v)


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


def _isnan(v: Any) -> bool:
    return v is None or bool(pd.isna(v))


def _largest(values: list[Any]) -> float | None:
    present = [float(v) for v in values if not _isnan(v)]
    return max(present) if present else None


def _all(values: list[Any]) -> bool | None:
    if any(v is False or v is np.False_ for v in values):
        return False
    if any(_isnan(v) for v in values):
        return None
    return True
