"""Small tensors batched: copied into a few flat buffers and handed to the writer together.

A step of a model with many small tensors makes tens of thousands of rows. Built one by one
on the training thread (a copy, a ``Captured``, a ``Row`` and a queue entry each) they cost
more than the training itself, and every torch op of theirs gives the GIL to the writer
thread, which spends it on per-row NumPy statistics. :class:`Staging` instead keeps a row's
columns as one tuple and its values as a slot of a flat buffer: the optimizer's gradients,
parameters and state of one dtype are copied by one concatenation, a module's small output
by one copy into a buffer of its dtype; statistics of large accelerator tensors stay on the device. When the step
ends (or the oldest staged row is ``flush_seconds / 4`` old) the open buffers are
concatenated per dtype, an accelerator's copied to host memory with one non-blocking copy,
and the whole :class:`Batch` goes to the writer, which computes every row's statistics with
a few segmented NumPy reductions (:meth:`Batch.encode`).

No host sync happens on the training thread: on an accelerator the host copy is waited for
(a CUDA event) on the writer thread. The CPU takes exactly the same path but the transfer.

>>> staging = Staging(sink, flush_seconds=1.0)        # doctest: +SKIP
>>> slot = staging.copy(output)                       # doctest: +SKIP
>>> staging.row(step, seq, "activation", "fc", 0, "", "Linear", output, slot)  # doctest: +SKIP
>>> staging.seal()                                    # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import torch

from tracer._hparams import as_text
from tracer._schema import COLUMNS, Row, Sink
from tracer._tensors import _ROW_OVERHEAD, Captured, dtype_name, host_copy

SMALL = 4096
"""Tensors of at most this many elements are staged (copied); larger ones are captured alone."""

CHUNK = 1 << 16
"""Elements of a buffer that :meth:`Staging.copy` fills (one per dtype and device at a time)."""

FLOATS: dict[torch.dtype, str] = {
    d: dtype_name(d) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
}
"""The dtypes staged: float64 holds each of their values exactly."""

_TYPES = (torch.Tensor, torch.nn.Parameter)
_flatten = torch._C._nn.flatten_dense_tensors
_dispatch_modes = torch._C._len_torch_dispatch_stack
_transforms_active = torch._C._are_functorch_transforms_active

# the fields of a staged row, in this order (a plain tuple: a NamedTuple costs 10× to make)
FIELDS = (
    "step", "seq", "kind", "name", "call", "part", "module_type", "shape", "dtype", "numel", "keep",
    "grad_enabled", "optimizer", "param_group", "hparams", "group", "slot",
)  # fmt: skip


def stageable(t: Any) -> bool:
    """Whether ``t`` takes the staged path: a plain strided tensor of a float dtype in
    :data:`FLOATS` with at most :data:`SMALL` elements (not a subclass, nested or meta),
    with no dispatch mode or functorch transform active (:func:`plain_mode`)."""
    return small_float(t) and plain_mode()


def small_float(t: Any) -> bool:
    """:func:`stageable` but for the modes (checked once for many tensors)."""
    return (
        type(t) in _TYPES
        and t.dtype in FLOATS
        and t.layout is torch.strided
        and t.numel() <= SMALL
        and not t.is_nested
        and not t.is_meta
    )


def plain_mode() -> bool:
    """No ``TorchDispatchMode`` and no functorch transform is active (they would see or
    wrap tracer's copies)."""
    return not _dispatch_modes() and not _transforms_active()


class Staging:
    """The rows of small tensors recorded since the last :meth:`seal` (training thread).

    A *group* is one flat buffer of one dtype whose *slots* are consecutive tensors: either
    made at once from a list (:meth:`flat`, the optimizer's tensors) or filled by the copies
    of :meth:`copy` until it is full or the batch is sealed. A row points at ``(group, slot)``.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        flush_seconds: float = 1.0,
        max_bytes: int = 8 << 20,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.sink = sink
        self.on_error = on_error  # told when a sealed batch cannot be made (its rows are lost)
        self.max_age = max(flush_seconds, 0.0) / 4
        self.max_bytes = max_bytes
        self._lock = threading.RLock()  # an accelerator's backward runs tensor hooks on its own thread
        self.generation = 0  # counts seals: a (group, slot) is valid in its generation only
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self._groups: list[torch.Tensor] = []  # flat buffers (an open one: the whole, filled or not)
        self._numels: list[list[int]] = []
        self._open: dict[Any, list[Any]] = {}  # (dtype, device) -> [group, buffer, elements used]
        self._bytes = 0
        self._since = 0.0

    def copy(self, t: torch.Tensor) -> tuple[int, int]:
        """Copy a :func:`stageable` ``t`` now (it may change in place later) into the open
        buffer of its dtype: its ``(group, slot)``. Into a buffer, not a clone each: a clone
        would live until the step ends, and many such objects make the garbage collector's
        full collections frequent."""
        src = (t.detach() if t.requires_grad else t).reshape(-1)
        n = src.numel()
        with self._lock:
            key = (t.dtype, t.device)
            held = self._open.get(key)
            if held is None or held[2] + n > held[1].numel():
                if held is not None:  # full: its group is its filled part
                    self._groups[held[0]] = held[1].narrow(0, 0, held[2])
                chunk = torch.empty(max(CHUNK, n), dtype=t.dtype, device=t.device)
                held = self._open[key] = [len(self._groups), chunk, 0]
                self._groups.append(chunk)
                self._numels.append([])
            gid, chunk, used = held
            chunk.narrow(0, used, n).copy_(src)  # on t's device; no host sync
            held[2] = used + n
            numels = self._numels[gid]
            numels.append(n)
            self._bytes += src.nbytes
            return gid, len(numels) - 1

    def flat(self, tensors: Sequence[torch.Tensor]) -> tuple[int, torch.Tensor]:
        """Copy ``tensors`` (one dtype and device) into one new flat buffer: its group (slot i
        is ``tensors[i]``) and the buffer."""
        flat = self.flatten(tensors)
        return self.adopt(flat, [t.numel() for t in tensors]), flat

    @staticmethod
    def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``tensors`` (one dtype and device) concatenated, flat, in one new buffer (a copy,
        also of a single tensor, which torch's flatten would return as a view), outside
        autograd."""
        with torch.no_grad():
            if len(tensors) == 1:
                return tensors[0].reshape(-1).clone()
            return _flatten(list(tensors))

    def adopt(self, flat: torch.Tensor, numels: list[int]) -> int:
        """A flat buffer tracer made and nothing else writes to (the updates): its group."""
        with self._lock:
            self._groups.append(flat)
            self._numels.append(numels)
            self._bytes += flat.nbytes
            return len(self._groups) - 1

    def row(self, fields: tuple[Any, ...]) -> None:
        """Stage one row (its :data:`FIELDS`); seals the batch when it is old or large enough."""
        with self._lock:
            if not self.rows:
                self._since = time.monotonic()
            self.rows.append(fields)
            self._seal_if_due()

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        """Stage many rows (see :meth:`row`)."""
        with self._lock:
            if rows and not self.rows:
                self._since = time.monotonic()
            self.rows.extend(rows)
            self._seal_if_due()

    def _seal_if_due(self) -> None:
        if self._bytes >= self.max_bytes or time.monotonic() - self._since >= self.max_age:
            self.seal()

    def seal(self) -> None:
        """Hand every staged row to the sink as one :class:`Batch` (nothing when none is staged)."""
        with self._lock:
            if not self.rows:
                return
            rows, groups, numels, since = self.rows, self._groups, self._numels, self._since
            opened = list(self._open.values())
            self._reset()
            self.generation += 1
        try:
            for gid, chunk, used in opened:  # only their filled part
                groups[gid] = chunk.narrow(0, 0, used)
            flats = groups
            flats, event = _to_host(flats)
            batch = Batch(rows, flats, numels, event, since)
        except Exception as exc:  # never into the user's code
            if self.on_error is None:
                raise
            self.on_error(exc)
            return
        self.sink.put_batch(batch)


def _to_host(flats: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
    """Accelerator buffers copied into pinned host memory without waiting (one copy each, on
    the current stream, and the CUDA event of the last, which the writer waits on); CPU ones
    as they are."""
    if all(f.is_cpu for f in flats):
        return flats, None
    if not all(f.device.type in ("cpu", "cuda") for f in flats):  # other accelerators: a plain copy
        return [f.cpu() for f in flats], None
    host, event = [], None
    for f in flats:
        if f.is_cpu:
            host.append(f)
        else:
            copy, event = host_copy(f)  # events complete in order on one stream: the last says all
            host.append(copy)
    return host, event


class Batch:
    """Sealed staged rows, as the writer gets them: columns, flat host buffers, and (on an
    accelerator) the event to wait for before reading them."""

    __slots__ = ("rows", "flats", "numels", "event", "since", "nbytes")

    def __init__(
        self,
        rows: list[tuple[Any, ...]],
        flats: list[torch.Tensor],
        numels: list[list[int]],
        event: Any = None,
        since: float | None = None,
    ) -> None:
        self.rows = rows
        self.since = time.monotonic() if since is None else since  # when its oldest row was recorded
        self.flats = flats
        self.numels = numels
        self.event = event
        self.nbytes = _ROW_OVERHEAD * len(rows) + sum(f.nbytes for f in flats)

    def __len__(self) -> int:
        return len(self.rows)

    def encode(self, max_values: int = 2**31 - 1) -> tuple[dict[str, list[Any]], Packed]:
        """The columns of :data:`tracer._schema.COLUMNS` but ``rank`` and ``values`` as
        lists, and the values to store of all rows, :class:`Packed` (a row of ``max_values``
        elements or more keeps none). Every row's statistics come from a few segmented
        reductions per buffer (:func:`_segment_stats`), its values from one gather."""
        if self.event is not None:
            self.event.synchronize()  # the writer thread waits; training never does
        arrays = [f.numpy() if f.dtype == torch.float64 else f.to(torch.float64).numpy() for f in self.flats]
        numels = [np.asarray(n, dtype=np.int64) for n in self.numels]
        parts = [_segment_stats(a, n) for a, n in zip(arrays, numels)]
        base = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=base[1:])
        # a column at a time: zip(*rows) would make an iterator object per row, each more
        # work for the garbage collector (they outlive a collection or two)
        cols = {name: list(map(itemgetter(i), self.rows)) for i, name in enumerate(FIELDS)}
        slot = base[np.asarray(cols.pop("group"), dtype=np.int64)] + np.asarray(cols.pop("slot"), dtype=np.int64)
        per_row = np.concatenate(parts)[slot]
        numel = np.asarray(cols["numel"], dtype=np.int64)
        empty = numel == 0
        for i, name in enumerate(("mean", "std", "min", "max")):
            column: list[Any] = per_row[:, i].tolist()
            cols[name] = [None if e else v for v, e in zip(column, empty.tolist())] if empty.any() else column
        cols["norm"] = per_row[:, 4].tolist()
        cols["nonfinite"] = per_row[:, 5].astype(np.int64).tolist()
        cols["hparams"] = list(map(as_text, cols["hparams"]))
        for name in ("rule_error", "rule_matches", "global_shape", "shard_offset", "placements"):
            cols[name] = [None] * len(self.rows)
        kept = np.asarray(cols.pop("keep"), dtype=bool) & (numel < max_values)
        # where each slot starts in all the buffers one after another, then one gather
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        starts = np.concatenate([np.cumsum(n) - n + off for n, off in zip(numels, np.cumsum(sizes) - sizes)])
        lengths = np.where(kept, numel, 0)
        total = int(lengths.sum())
        first = starts[slot][kept]
        index = np.repeat(first - (np.cumsum(lengths[kept]) - lengths[kept]), lengths[kept]) + np.arange(total)
        flat = (np.concatenate(arrays) if len(arrays) > 1 else arrays[0])[index]
        return cols, Packed(flat, lengths, ~kept)

    def expand(self) -> list[Row]:
        """The batch as :class:`~tracer._schema.Row` objects (in-memory sinks, sorted files)."""
        cols, packed = self.encode()
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


class Packed(NamedTuple):
    """The ``values`` of consecutive rows in one array: row i holds ``lengths[i]`` values
    (none and null where ``missing[i]``)."""

    flat: np.ndarray
    lengths: np.ndarray
    missing: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)


_STAT_NAMES = ("mean", "std", "min", "max", "norm", "nonfinite")


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
