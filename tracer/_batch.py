"""A sealed batch of staged rows as the writer thread gets it, and its Arrow columns.

:class:`tracer._staging.Staging` hands the writer one :class:`Batch` per step: the rows'
columns (plain tuples, and :data:`~tracer._row_template.Block` s of rows that repeat every
step), the flat host buffers their values sit in, and on an accelerator the event to wait
for. :meth:`Batch.encode` makes every column an Arrow array with a few NumPy operations per
buffer (the statistics of every row by segmented reductions, its values by one gather) and
the fixed columns of a block from its template's arrays, made once: the writer holds the
GIL for a few Python operations per batch, not per row.

>>> batch = Batch([], [torch.ones(3)], [[3]], blocks=[block])   # doctest: +SKIP
>>> columns, packed = batch.encode()                            # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from tracer._hparams import as_text
from tracer._row_template import FIELDS, Block
from tracer._schema import COLUMNS, SCHEMA, Row
from tracer._tensors import _ROW_OVERHEAD, Captured

_STAT_NAMES = ("mean", "std", "min", "max", "norm", "nonfinite")
_NULLS = ("rule_error", "rule_matches", "global_shape", "shard_offset", "placements")
_TYPES = {field.name: field.type for field in SCHEMA}
# the columns a staged row's tuple gives as they are (not group, slot and keep)
_AS_THEY_ARE = [(i, name) for i, name in enumerate(FIELDS) if name not in ("group", "slot", "keep")]


class Batch:
    """Sealed staged rows, as the writer gets them: columns, flat host buffers, and (on an
    accelerator) the event to wait for before reading them."""

    __slots__ = ("rows", "blocks", "count", "flats", "numels", "event", "since", "nbytes", "offsets")

    def __init__(
        self,
        rows: list[tuple[Any, ...]],
        flats: list[torch.Tensor],
        numels: list[list[int]],
        event: Any = None,
        since: float | None = None,
        blocks: Sequence[Block] = (),
    ) -> None:
        self.rows = rows
        self.blocks = blocks
        self.count = len(rows) + sum(block[0].n for block in blocks)
        self.since = time.monotonic() if since is None else since  # when its oldest row was recorded
        self.flats = flats
        self.numels = numels
        self.event = event
        self.nbytes = _ROW_OVERHEAD * self.count + sum(f.nbytes for f in flats)
        self.offsets: list[tuple[int, int]] = []  # a joined batch's rows: (rows, their groups' offset) runs

    def __len__(self) -> int:
        return self.count

    @classmethod
    def joined(cls, batches: Sequence[Batch]) -> Batch:
        """``batches`` as one (the writer encodes the batches of a file together: what a
        batch costs to encode besides its rows, once per file)."""
        if len(batches) == 1:
            return batches[0]
        rows: list[tuple[Any, ...]] = []
        blocks: list[Block] = []
        flats: list[torch.Tensor] = []
        numels: list[list[int]] = []
        offsets = []
        for b in batches:
            at = len(flats)
            if b.rows:
                rows.extend(b.rows)
                offsets.append((len(b.rows), at))
            blocks.extend((t, step, seqs, hps, [g + at for g in gids]) for t, step, seqs, hps, gids in b.blocks)
            flats.extend(b.flats)
            numels.extend(b.numels)
        events = [b.event for b in batches if b.event is not None]
        joined = cls(rows, flats, numels, _Events(events) if events else None, min(b.since for b in batches), blocks)
        joined.offsets = offsets
        return joined

    def encode(self, max_values: int = 2**31 - 1, rank: int = 0) -> tuple[dict[str, pa.Array], Packed]:
        """Every column of :data:`tracer._schema.SCHEMA` but ``values`` as an Arrow array, and
        the values to store of all rows, :class:`Packed` (a row of ``max_values`` elements or
        more keeps none)."""
        if self.event is not None:
            self.event.synchronize()  # the writer thread waits; training never does
        arrays = [f.numpy() if f.dtype == torch.float64 else f.to(torch.float64).numpy() for f in self.flats]
        numels = [np.asarray(n, dtype=np.int64) for n in self.numels]
        parts = [_segment_stats(a, n) for a, n in zip(arrays, numels)]
        base = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=base[1:])
        chunks: dict[str, list[pa.Array]] = {name: [] for name in COLUMNS if name != "values"}
        groups: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        keeps: list[np.ndarray] = []
        if self.rows:
            # a column at a time: zip(*rows) would make an iterator object per row, each more
            # work for the garbage collector (they outlive a collection or two)
            for i, name in _AS_THEY_ARE:
                column = list(map(itemgetter(i), self.rows))
                chunks[name].append(pa.array(list(map(as_text, column)) if name == "hparams" else column, _TYPES[name]))
            for into, i in ((groups, -2), (slots, -1), (sizes, 9)):
                into.append(np.fromiter(map(itemgetter(i), self.rows), dtype=np.int64, count=len(self.rows)))
            if self.offsets:  # joined: each batch's rows number its own groups
                runs, at = zip(*self.offsets)
                groups[-1] += np.repeat(np.asarray(at, dtype=np.int64), runs)
            keeps.append(np.fromiter(map(itemgetter(10), self.rows), dtype=bool, count=len(self.rows)))
        for template, step, seqs, hparams, gids in self.blocks:
            for name, array in template.arrow().items():
                chunks[name].append(array)
            chunks["step"].append(pa.array(np.full(template.n, step, dtype=np.int64)))
            chunks["seq"].append(pa.array(np.asarray(seqs, dtype=np.int64)))
            texts = pa.array([as_text(h) for h in hparams], pa.string())
            chunks["hparams"].append(texts.take(template.group_index))
            groups.append(template.groups(gids))
            slots.append(template.slots)
            sizes.append(template.sizes)
            keeps.append(template.keep)
        slot = base[np.concatenate(groups)] + np.concatenate(slots)
        per_row = np.concatenate(parts)[slot]
        numel = np.concatenate(sizes)
        empty = numel == 0
        mask = empty if empty.any() else None
        for i, name in enumerate(_STAT_NAMES[:4]):
            chunks[name] = [pa.array(per_row[:, i], mask=mask)]
        chunks["norm"] = [pa.array(per_row[:, 4])]
        chunks["nonfinite"] = [pa.array(per_row[:, 5].astype(np.int64))]
        chunks["rank"] = [pa.array(np.full(self.count, rank, dtype=np.int64))]
        for name in _NULLS:
            chunks[name] = [pa.nulls(self.count, _TYPES[name])]
        kept = np.concatenate(keeps) & (numel < max_values)
        # where each slot starts in all the buffers one after another, then one gather
        lengths_all = np.array([a.size for a in arrays], dtype=np.int64)
        starts = np.concatenate(
            [np.cumsum(n) - n + off for n, off in zip(numels, np.cumsum(lengths_all) - lengths_all)]
        )
        lengths = np.where(kept, numel, 0)
        total = int(lengths.sum())
        first = starts[slot][kept]
        index = np.repeat(first - (np.cumsum(lengths[kept]) - lengths[kept]), lengths[kept]) + np.arange(total)
        flat = (np.concatenate(arrays) if len(arrays) > 1 else arrays[0])[index]
        columns = {name: c[0] if len(c) == 1 else pa.concat_arrays(c) for name, c in chunks.items()}
        return columns, Packed(flat, lengths, ~kept)

    def expand(self) -> list[Row]:
        """The batch as :class:`~tracer._schema.Row` objects (in-memory sinks, sorted files)."""
        arrays, packed = self.encode()
        cols = {name: array.to_pylist() for name, array in arrays.items()}
        names = [c for c in COLUMNS if c not in ("values", "rank", "shape", "dtype", "numel", *_STAT_NAMES)]
        ends = np.cumsum(packed.lengths).tolist()
        out = []
        for i, (stop, missing) in enumerate(zip(ends, packed.missing.tolist())):
            stats = None
            if cols["numel"][i]:
                stats = torch.tensor([cols[c][i] for c in _STAT_NAMES], dtype=torch.float64)
            values = None if missing else torch.from_numpy(packed.flat[stop - int(packed.lengths[i]) : stop])
            cap = Captured(tuple(cols["shape"][i]), cols["dtype"][i], cols["numel"][i], stats, values, _ROW_OVERHEAD)
            out.append(Row(captured=cap, **{c: cols[c][i] for c in names}))
        return out


class _Events:
    """The events of joined batches, waited for together."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def synchronize(self) -> None:
        for event in self.events:
            event.synchronize()


class Packed(NamedTuple):
    """The ``values`` of consecutive rows in one array: row i holds ``lengths[i]`` values
    (none and null where ``missing[i]``)."""

    flat: np.ndarray
    lengths: np.ndarray
    missing: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)


def _segment_stats(a: np.ndarray, numels: np.ndarray) -> np.ndarray:
    """``[mean, std, min, max, norm, nonfinite]`` of each consecutive segment of ``a`` (of
    ``numels`` elements each), as ``np.mean``/``np.std``/... of each segment would give; an
    empty segment's row is (nan, nan, nan, nan, 0, 0)."""
    out = np.full((len(numels), 6), np.nan)
    out[:, 4:] = 0.0
    full = numels > 0
    if not full.any():
        return out
    starts = (np.cumsum(numels) - numels)[full]
    n = numels[full].astype(np.float64)
    with np.errstate(all="ignore"):
        mean = np.add.reduceat(a, starts) / n
        centered = a - np.repeat(mean, numels[full])
        out[full, 0] = mean
        out[full, 1] = np.sqrt(np.add.reduceat(centered * centered, starts) / n)
        out[full, 2] = np.minimum.reduceat(a, starts)
        out[full, 3] = np.maximum.reduceat(a, starts)
        out[full, 4] = np.sqrt(np.add.reduceat(a * a, starts))
        out[full, 5] = n - np.add.reduceat(np.isfinite(a), starts, dtype=np.int64)
    return out
