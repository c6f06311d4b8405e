"""The recorder's staged path: rows of small tensors batched (:mod:`tracer._staging`).

:meth:`StagedSteps.stage` is ``emit``'s fast path for one small tensor (a module's input or
output, a gradient reaching an activation, the loss): one ``clone`` and one tuple. The
optimizer's pre-step hook hands all of a step's gradients, parameters and state at once to
:meth:`StagedSteps.stage_step`: one concatenation per dtype copies them, the parameters'
copy is also the snapshot that the update is computed from after ``step()`` (one more
concatenation and one subtraction for all of them, :meth:`StagedSteps.stage_updates`).
Whatever is not small, not a plain float tensor, or needs a per-tensor answer
(``verify=True``, a closure run inside ``step()``) takes the per-tensor path as before.

A part of :class:`tracer._hooks.Recorder` (its base class), like ``OptimizerSteps``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from tracer._staging import _TYPES, FLOATS, Staging, plain_mode, small_float, stageable
from tracer._walk import as_tensor, walk

if TYPE_CHECKING:
    from tracer._hparams import DeferredHparams
    from tracer._selection import ParamInfo


class StagedUpdates:
    """The staged parameters of one dtype in one ``step()``: their copy before it, and what
    each update row needs."""

    __slots__ = ("params", "before", "rows")

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.before: torch.Tensor | None = None
        self.rows: list[tuple[str, str, int, str | DeferredHparams, tuple[int, ...], int]] = []


class StagedSteps:
    """The staged path; the attributes below are the Recorder's."""

    staging: Staging
    kinds: frozenset[str]
    max_values: int | None
    step: int
    grad_rows: int
    params: dict[torch.Tensor, ParamInfo]
    _seq: Any
    _staged: dict[int, tuple[int, ...]]  # id -> (version, generation, group, slot)
    _staged_tensors: dict[int, torch.Tensor]  # id -> the tensor (identity: an id is reused)
    emit: Callable[..., None]
    stepped_params: Callable[..., Iterator[tuple[int, Any, torch.Tensor, ParamInfo]]]

    def stage(
        self, kind: str, name: str, call: int, part: str, module_type: str | None, t: torch.Tensor,
        step: int | None, grad_enabled: bool | None, optimizer: str | None, group: int | None, hparams: str | None,
    ) -> bool:  # fmt: skip
        """Stage the row of ``t`` when it is small (see :func:`tracer._staging.stageable`);
        False when it takes the per-tensor path."""
        if not stageable(t):
            return False
        where = self._staged_copy(t)
        numel = t.numel()
        keep = self.max_values is None or numel <= self.max_values
        if kind == "grad":
            self.grad_rows += 1
        self.staging.row((
            self.step if step is None else step, next(self._seq), kind, name, call, part, module_type,
            tuple(t.shape), FLOATS[t.dtype], numel, keep, grad_enabled, optimizer, group, hparams, *where,
        ))  # fmt: skip
        return True

    def _staged_copy(self, t: torch.Tensor) -> tuple[int, int]:
        """``staging.copy(t)``, once per tensor and version within a batch: a module's input
        is usually the previous module's output."""
        try:
            version = None if t.is_inference() else t._version
        except (RuntimeError, NotImplementedError):
            version = None
        if version is None:
            return self.staging.copy(t)
        key = id(t)
        hit = self._staged.get(key)
        generation = self.staging.generation
        # the tensor in a dict of its own, the rest in a tuple of ints: a tuple holding the
        # tensor (or a weak reference) would be one more object for the garbage collector
        if hit is not None and self._staged_tensors.get(key) is t and hit[0] == version and hit[1] == generation:
            return hit[2], hit[3]
        where = self.staging.copy(t)
        self._staged[key] = (version, generation, *where)
        self._staged_tensors[key] = t
        return where

    def stage_step(self, opt: torch.optim.Optimizer, step: int | None) -> tuple[list[StagedUpdates], list[Any]]:
        """Stage the grad, param and state rows of ``opt``'s coming ``step()``; returns the
        staged parameters by dtype (for :meth:`stage_updates`) and the parameters left to
        the per-tensor path, as ``(p, info, group index, hparams)``."""
        kinds, staging = self.kinds, self.staging
        want_param, want_state, want_update = "param" in kinds, "state" in kinds, "update" in kinds
        want_grad = "grad" in kinds
        cls = type(opt).__name__
        at = self.step if step is None else step
        seq, small = self._seq, self.max_values
        pending: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        index: dict[tuple[Any, ...], int] = {}  # a key's number: rows hold ints, not the key
        # (a tuple holding a dtype or device stays tracked by the garbage collector; one of
        # plain values is untracked at its first collection, and never promoted)
        rows: list[tuple[Any, ...]] = []  # FIELDS, with the key's number as the group until the copies are made
        updates: dict[tuple[Any, ...], StagedUpdates] = {}
        alone: list[Any] = []
        modes_off = plain_mode()

        def add(fields: tuple[Any, ...] | None, key: tuple[Any, ...], t: torch.Tensor) -> None:
            """Copy ``t`` with the others of ``key``; its row, unless ``fields`` is None."""
            tensors = pending.get(key)
            if tensors is None:
                tensors = pending[key] = []
                index[key] = len(index)
            if fields is not None:
                rows.append((*fields, index[key], len(tensors)))
            tensors.append(t)

        for gi, hp, p, info in self.stepped_params(opt):
            g = p.grad
            assert g is not None
            if not (modes_off and small_float(p) and small_float(g)):
                alone.append((p, info, gi, hp))
                continue
            name, mt, shape, numel = info.name, info.module_type, tuple(p.shape), p.numel()
            keep = small is None or numel <= small
            dtype = FLOATS[p.dtype]
            if want_grad:
                self.grad_rows += 1
                add((at, next(seq), "grad", name, 0, "", mt, tuple(g.shape), FLOATS[g.dtype], g.numel(), keep,
                     None, cls, gi, hp), ("grad", g.dtype, g.device), g)  # fmt: skip
            if want_param or want_update:
                key = ("param", p.dtype, p.device)  # (without param rows: the update's snapshot only)
                add((at, next(seq), "param", name, 0, "", mt, shape, dtype, numel, keep, None, cls, gi, hp)
                    if want_param else None, key, p)  # fmt: skip
                if want_update:
                    staged = updates.get(key)
                    if staged is None:
                        staged = updates[key] = StagedUpdates()
                    staged.params.append(p)
                    staged.rows.append((name, mt, gi, hp, shape, numel))
            if want_state:
                for k, value in opt.state.get(p, {}).items():
                    # a tensor (the usual state) needs no walk
                    for part, t in ((str(k), value),) if type(value) in _TYPES else walk(as_tensor(value), str(k)):
                        if modes_off and small_float(t):
                            n = t.numel()
                            add((at, next(seq), "state", name, 0, part, mt, tuple(t.shape), FLOATS[t.dtype], n,
                                 small is None or n <= small, None, cls, gi, hp), ("state", t.dtype, t.device), t)  # fmt: skip
                        else:
                            self.emit("state", name, 0, part, mt, t, optimizer=cls, group=gi, hparams=hp, step=step)
        groups = [0] * len(index)
        for key, tensors in pending.items():
            gid, flat = staging.flat(tensors)
            groups[index[key]] = gid
            staged = updates.get(key)
            if staged is not None:
                staged.before = flat  # the parameters' copy is the snapshot their update starts from
        if rows:
            staging.extend([(*row[:-2], groups[row[-2]], row[-1]) for row in rows])
        return list(updates.values()), alone

    def stage_updates(self, opt: torch.optim.Optimizer, staged: list[StagedUpdates], step: int | None) -> None:
        """The update rows of parameters staged by :meth:`stage_step`, after ``step()``:
        ``after − before`` exactly in float64, for all of one dtype at once."""
        cls = type(opt).__name__
        at = self.step if step is None else step
        small = self.max_values
        for s in staged:
            if s.before is None or not s.params:
                continue
            after = self.staging.flatten(s.params)
            update = after.to(torch.float64).sub_(s.before)  # float64: exact for every float32 pair
            gid = self.staging.adopt(update, [r[5] for r in s.rows])
            self.staging.extend([
                (at, next(self._seq), "update", name, 0, "", mt, shape, "float64", numel,
                 small is None or numel <= small, None, cls, gi, hp, gid, i)
                for i, (name, mt, gi, hp, shape, numel) in enumerate(s.rows)
            ])  # fmt: skip
