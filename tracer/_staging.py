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
>>> staging.put(head, output)   # head: the row's FIELDS but group and slot  # doctest: +SKIP
>>> staging.seal()                                    # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tracer._batch import Batch
from tracer._row_template import Block
from tracer._schema import Sink
from tracer._tensors import dtype_name, host_copy

SMALL = 4096
"""Tensors of at most this many elements are staged (copied); larger ones are captured alone."""

CHUNK = 1 << 16
"""Elements of the clones of :meth:`Staging.copy` flattened into one buffer, at most."""

CLONES = 64
"""Clones of :meth:`Staging.copy` flattened into one buffer, at most."""

_RECENT = 32  # the tensors Staging.put remembers copying (a module's input: the last output)

FLOATS: dict[torch.dtype, str] = {
    d: dtype_name(d) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
}
"""The dtypes staged: float64 holds each of their values exactly."""

_TYPES = (torch.Tensor, torch.nn.Parameter)
_flatten = torch._C._nn.flatten_dense_tensors
_grad_enabled = torch.is_grad_enabled
_monotonic = time.monotonic
_dispatch_modes = torch._C._len_torch_dispatch_stack
_transforms_active = torch._C._are_functorch_transforms_active


def small_float(t: Any) -> bool:
    """Whether ``t`` can be staged, but for the modes (:func:`plain_mode`, checked once for
    many tensors): a plain strided tensor of a float dtype in :data:`FLOATS` with at most
    :data:`SMALL` elements (not a subclass, nested or meta)."""
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
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.blocks: list[Block] = []  # runs of rows that repeat every step (tracer._row_template)
        self._groups: list[torch.Tensor] = []  # flat buffers (an open one: the whole, filled or not)
        self._numels: list[list[int]] = []
        self._open: dict[Any, list[Any]] = {}  # dtype (CPU) or (dtype, device) -> [group, clones, their elements]
        self._bytes = 0
        self._since = 0.0
        self._copies: dict[int, tuple[int, int, int]] = {}  # id -> (version, group, slot) of a copy
        self._copied: dict[int, torch.Tensor] = {}  # id -> the tensor (identity: an id is reused)

    def put(self, head: tuple[Any, ...], t: torch.Tensor) -> None:
        """Stage the row of a small ``t`` (:func:`small_float`, in a :func:`plain_mode`) (``head``: its :data:`FIELDS` but group
        and slot), copying ``t`` once per version within a batch (a module's input is
        usually the previous module's output); seals the batch when it is old or large."""
        key = id(t)
        version = None if t.is_inference() else t._version
        with self._lock:
            hit = self._copies.get(key)
            # the tensor in a dict of its own, the rest in a tuple of ints: a tuple holding
            # the tensor would be one more object for the garbage collector
            if hit is not None and hit[0] == version and self._copied.get(key) is t:
                where = hit[1], hit[2]
            else:
                where = self._copy(t)
                if version is not None:
                    if len(self._copied) >= _RECENT:
                        # only the last few: holding every tensor of a step would keep them
                        # alive, and the garbage collector would promote them all
                        self._copies.clear()
                        self._copied.clear()
                    self._copies[key] = (version, *where)
                    self._copied[key] = t
            if not (self.rows or self.blocks):
                self._since = _monotonic()
            self.rows.append((*head, *where))
            self._seal_if_due()

    def forget(self) -> None:
        """Copy every tensor again, even one unchanged since its copy (a new forward)."""
        with self._lock:
            self._copies.clear()
            self._copied.clear()

    def copy(self, t: torch.Tensor) -> tuple[int, int]:
        """Copy a small ``t`` (:func:`small_float`, in a :func:`plain_mode`) now (it may change in place later): its ``(group,
        slot)``. A clone, flattened with the other clones of its dtype and device into one
        buffer once they reach :data:`CHUNK` elements or :data:`CLONES` tensors (and at the
        seal): a clone costs a quarter of a copy into a slice of a buffer, and no more than
        :data:`CLONES` of them live at a time (many live tensors would make the garbage
        collector's full collections frequent)."""
        with self._lock:
            return self._copy(t)

    def _copy(self, t: torch.Tensor) -> tuple[int, int]:
        src = t.detach() if t.requires_grad and _grad_enabled() else t
        clone = src.clone(memory_format=torch.contiguous_format)  # on t's device; no host sync
        n = clone.numel()
        key = t.dtype if t.is_cpu else (t.dtype, t.device)  # (a device object costs more than the dtype)
        held = self._open.get(key)
        if held is None or held[2] + n > CHUNK or len(held[1]) >= CLONES:
            if held is not None:
                _close(self._groups, held)
            held = self._open[key] = [len(self._groups), [], 0]
            self._groups.append(clone)  # its place; the flat buffer replaces it when closed
            self._numels.append([])
        gid, clones, used = held
        clones.append(clone)
        held[2] = used + n
        numels = self._numels[gid]
        numels.append(n)
        self._bytes += clone.nbytes
        return gid, len(numels) - 1

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
            if not (self.rows or self.blocks):
                self._since = time.monotonic()
            self.rows.append(fields)
            self._seal_if_due()

    def block(self, block: Block) -> None:
        """Stage a :data:`~tracer._row_template.Block` of rows (see :meth:`row`)."""
        if not block[0].n:
            return
        with self._lock:
            if not (self.rows or self.blocks):
                self._since = time.monotonic()
            self.blocks.append(block)
            self._seal_if_due()

    def _seal_if_due(self) -> None:
        if self._bytes >= self.max_bytes or _monotonic() - self._since >= self.max_age:
            self.seal()

    def seal(self) -> None:
        """Hand every staged row to the sink as one :class:`Batch` (nothing when none is staged)."""
        with self._lock:
            if not (self.rows or self.blocks):
                return
            rows, blocks, groups, numels, since = self.rows, self.blocks, self._groups, self._numels, self._since
            opened = list(self._open.values())
            self._reset()
        try:
            for held in opened:
                _close(groups, held)
            flats, event = _to_host(groups)
            batch = Batch(rows, flats, numels, event, since, blocks)
        except Exception as exc:  # never into the user's code
            if self.on_error is None:
                raise
            self.on_error(exc)
            return
        self.sink.put_batch(batch)


def _close(groups: list[torch.Tensor], held: list[Any]) -> None:
    """An open group's clones, flattened into its buffer (``held``: see ``Staging._open``)."""
    gid, clones = held[0], held[1]
    with torch.no_grad():
        groups[gid] = _flatten(clones) if len(clones) > 1 else clones[0].view(-1)


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
