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

from tracer._hparams import hparams_text
from tracer._row_template import Template, take_seqs
from tracer._staging import (
    _TYPES,
    FLOATS,
    SMALL,
    Staging,
    _dispatch_modes,
    _transforms_active,
    plain_mode,
    small_float,
)  # fmt: skip
from tracer._step_plan import PlannedKey, StepPlan, plan_of
from tracer._walk import as_tensor, walk

_STRIDED = torch.strided

if TYPE_CHECKING:
    from tracer._selection import ParamInfo


class StagedUpdates:
    """The staged parameters of one dtype in one ``step()``: their copy before it, and the
    update rows' template and hyper-parameters (by param group)."""

    __slots__ = ("params", "before", "template", "hparams", "numels")

    def __init__(
        self, params: list[torch.Tensor], before: torch.Tensor, template: Template, hparams: list[Any]
    ) -> None:
        self.params = params
        self.before = before
        self.template = template
        self.hparams = hparams
        self.numels = template.numels


class StagedSteps:
    """The staged path; the attributes below are the Recorder's."""

    staging: Staging
    kinds: frozenset[str]
    max_values: int | None
    step: int
    grad_rows: int
    params: dict[torch.Tensor, ParamInfo]
    _seq: Any
    _plans: dict[torch.optim.Optimizer, StepPlan]
    emit: Callable[..., None]
    stepped_params: Callable[..., Iterator[tuple[int, Any, torch.Tensor, ParamInfo]]]

    def stage(
        self, kind: str, name: str, call: int, part: str, module_type: str | None, t: torch.Tensor,
        step: int | None, grad_enabled: bool | None, optimizer: str | None, group: int | None, hparams: str | None,
    ) -> bool:  # fmt: skip
        """Stage the row of ``t`` when it is small (:func:`tracer._staging.small_float`
        and :func:`~tracer._staging.plain_mode`, inlined: this runs for every small tensor); False when it takes the per-tensor path."""
        dtype = FLOATS.get(t.dtype) if type(t) in _TYPES else None
        if dtype is None or t.layout is not _STRIDED or t.is_nested or t.is_meta:
            return False
        numel = t.numel()
        if numel > SMALL or _dispatch_modes() or _transforms_active():
            return False
        if kind == "grad":
            self.grad_rows += 1
        small = self.max_values
        self.staging.put((
            self.step if step is None else step, next(self._seq), kind, name, call, part, module_type,
            tuple(t.shape), dtype, numel, small is None or numel <= small, grad_enabled, optimizer, group, hparams,
        ), t)  # fmt: skip
        return True

    def stage_step(self, opt: torch.optim.Optimizer, step: int | None) -> tuple[list[StagedUpdates], list[Any]]:
        """Stage the grad, param and state rows of ``opt``'s coming ``step()``; returns the
        staged parameters by dtype (for :meth:`stage_updates`) and the parameters left to
        the per-tensor path, as ``(p, info, group index, hparams)``. By the optimizer's
        :class:`~tracer._step_plan.StepPlan` when it still holds, else afresh."""
        at = self.step if step is None else step
        plan = self._plans.get(opt)
        if plan is not None and plain_mode():
            grads = plan.gradients(opt, "state" in self.kinds)
            if grads is not None:
                staged = self._stage_planned(opt, plan, grads, at)
                if staged is not None:
                    return staged
        self._plans.pop(opt, None)
        return self._stage_afresh(opt, at, step)

    def _stage_planned(
        self, opt: torch.optim.Optimizer, plan: StepPlan, grads: list[torch.Tensor], at: int
    ) -> tuple[list[StagedUpdates], list[Any]] | None:
        flats = [self.staging.flatten(plan.tensors(key, grads)) for key in plan.keys]
        if any(flat.numel() != key.total for flat, key in zip(flats, plan.keys)):
            return None  # a state tensor resized in place
        hps = [hparams_text(group) for group in opt.param_groups]
        gids = [self.staging.adopt(flat, key.numels) for flat, key in zip(flats, plan.keys)]
        template = plan.template
        self.grad_rows += template.grads
        self.staging.block((template, at, take_seqs(self._seq, template.n), hps, gids))
        updates = [StagedUpdates(key.tensors, flat, key.updates, hps)
                   for flat, key in zip(flats, plan.keys) if key.updates is not None]  # fmt: skip
        return updates, [(p, info, gi, hps[gi]) for p, info, gi in plan.alone]

    def _stage_afresh(
        self, opt: torch.optim.Optimizer, at: int, step: int | None
    ) -> tuple[list[StagedUpdates], list[Any]]:
        """:meth:`stage_step` walking every parameter; records the optimizer's plan when the
        step can be planned (every state value of a staged parameter a small tensor)."""
        kinds, staging = self.kinds, self.staging
        want_param, want_state, want_update = "param" in kinds, "state" in kinds, "update" in kinds
        want_grad = "grad" in kinds
        cls = type(opt).__name__
        seq, small = self._seq, self.max_values
        numbers: dict[tuple[Any, ...], int] = {}  # (role, dtype, device) -> the key's number
        keys: list[tuple[str, list[torch.Tensor], list[int], list[tuple[Any, ...]] | None]] = []
        # rows: FIELDS, their group the key's number (a tuple holding a dtype or device stays
        # tracked by the garbage collector; one of plain values is untracked at its first
        # collection, and never promoted)
        rows: list[tuple[Any, ...]] = []
        hps: list[Any] = [None] * len(opt.param_groups)
        staged: list[tuple[torch.Tensor, ParamInfo]] = []
        states: list[Any] = []
        alone: list[Any] = []
        modes_off = plannable = plain_mode()

        def add(fields: tuple[Any, ...] | None, role: str, t: torch.Tensor, source: int) -> int:
            """Copy ``t`` with the others of its key; its row, unless ``fields`` is None."""
            key = (role, t.dtype, t.device)
            k = numbers.get(key)
            if k is None:
                k = numbers[key] = len(keys)
                keys.append((role, [], [], [] if role == "param" and want_update else None))
            tensors = keys[k][1]
            if fields is not None:
                rows.append((*fields, k, len(tensors)))
            tensors.append(t)
            keys[k][2].append(source)
            return k

        for gi, hp, p, info in self.stepped_params(opt):
            hps[gi] = hp
            g = p.grad
            assert g is not None
            if not (modes_off and small_float(p) and small_float(g)):
                alone.append((p, info, gi, hp))
                continue
            i = len(staged)
            staged.append((p, info))
            name, mt, shape, numel = info.name, info.module_type, tuple(p.shape), p.numel()
            keep = small is None or numel <= small
            dtype = FLOATS[p.dtype]
            if want_grad:
                add((at, next(seq), "grad", name, 0, "", mt, tuple(g.shape), FLOATS[g.dtype], g.numel(), keep,
                     None, cls, gi, hp), "grad", g, i)  # fmt: skip
            if want_param or want_update:  # (without param rows: the update's snapshot only)
                k = add((at, next(seq), "param", name, 0, "", mt, shape, dtype, numel, keep, None, cls, gi, hp)
                        if want_param else None, "param", p, i)  # fmt: skip
                updates = keys[k][3]
                if updates is not None:
                    updates.append((None, None, "update", name, 0, "", mt, shape, "float64", numel, keep, None,
                                    cls, gi, None, 0, len(updates)))  # fmt: skip
            if want_state:
                for key, value in opt.state.get(p, {}).items():
                    if type(value) in _TYPES and small_float(value):  # the usual state: needs no walk
                        states.append(value)
                        n = value.numel()
                        add((at, next(seq), "state", name, 0, str(key), mt, tuple(value.shape), FLOATS[value.dtype],
                             n, small is None or n <= small, None, cls, gi, hp), "state", value, -1)  # fmt: skip
                        continue
                    plannable = False
                    for part, t in walk(as_tensor(value), str(key)):
                        if small_float(t):
                            n = t.numel()
                            add((at, next(seq), "state", name, 0, part, mt, tuple(t.shape), FLOATS[t.dtype], n,
                                 small is None or n <= small, None, cls, gi, hp), "state", t, -1)  # fmt: skip
                        else:
                            self.emit("state", name, 0, part, mt, t, optimizer=cls, group=gi, hparams=hp, step=step)
        planned = [PlannedKey(role, sources, tensors, Template(u) if u is not None else None)
                   for role, tensors, sources, u in keys]  # fmt: skip
        flats = [staging.flatten(tensors) for _, tensors, _, _ in keys]
        gids = [staging.adopt(flat, key.numels) for flat, key in zip(flats, planned)]
        template = Template(rows)
        self.grad_rows += template.grads
        staging.block((template, at, [row[1] for row in rows], hps, gids))
        if plannable and rows:
            self._plans[opt] = plan_of(opt, self.params, staged, alone, states, planned, template)
        return [StagedUpdates(key.tensors, flat, key.updates, hps)
                for flat, key in zip(flats, planned) if key.updates is not None], alone  # fmt: skip

    def stage_updates(self, opt: torch.optim.Optimizer, staged: list[StagedUpdates], step: int | None) -> None:
        """The update rows of parameters staged by :meth:`stage_step`, after ``step()``:
        ``after − before`` exactly in float64, for all of one dtype at once."""
        at = self.step if step is None else step
        for s in staged:
            if not s.params:
                continue
            after = self.staging.flatten(s.params)
            update = after.to(torch.float64).sub_(s.before)  # float64: exact for every float32 pair
            gid = self.staging.adopt(update, s.numels)
            self.staging.block((s.template, at, take_seqs(self._seq, s.template.n), s.hparams, [gid]))
