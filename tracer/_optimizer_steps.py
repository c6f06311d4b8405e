"""The optimizer side of the recorder: step boundaries, adopted optimizers, the rows of
each ``step()`` (gradients, parameters, state before it; updates after it), and steps
whose ``step()`` raised (torch runs no post-hook then).

:class:`OptimizerSteps` is a part of :class:`tracer._hooks.Recorder` (its base class):
one noun, its jobs in two files.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from tracer._errors import TraceWriteError
from tracer._frames import _runs_closure_once_first, _stack_frames
from tracer._hparams import hparams_text
from tracer._sharded import local_of, shard_of
from tracer._tensors import Captured, adopt, difference_stats
from tracer._verify_steps import VerifySteps
from tracer._walk import as_tensor, walk

if TYPE_CHECKING:
    from tracer._copy_pool import CopyPool
    from tracer._hparams import DeferredHparams
    from tracer._lbfgs_replay import LiveLBFGS
    from tracer._plain_steps import _PlainStep
    from tracer._selection import ParamInfo
    from tracer._staged_steps import StagedUpdates
    from tracer._verify import Prediction


class _Inflight:
    """One ``optimizer.step()`` whose pre-hook ran and whose post-hook has not (yet)."""

    __slots__ = ("frame", "thread", "nested", "late", "recorded", "step", "snapshots", "staged", "evaluations", "lbfgs")

    def __init__(self, frame: Any, *, nested: bool) -> None:
        self.frame = frame  # the frame of torch's step() wrapper: live while step() runs
        self.nested = nested  # a subclass's step() calling super().step(): the outer one counts
        self.thread = threading.get_ident()
        self.late = False  # this step's gradients come from a closure run inside step()
        self.recorded = False  # its grad/param/state rows are written
        self.step: int | None = None  # the step its rows belong to, when not the current one
        self.snapshots: list[
            tuple[torch.Tensor, torch.Tensor, ParamInfo, str, int, str | DeferredHparams, Prediction | None]
        ] = []
        self.staged: list[StagedUpdates] = []  # the parameters staged together (tracer._staged_steps)
        self.evaluations = 0  # closure evaluations recorded inside step() (LBFGS)
        self.lbfgs: LiveLBFGS | None = None  # what verify replays an LBFGS step from


class OptimizerSteps(VerifySteps):
    """Step tracking and optimizer rows; the attributes below are the Recorder's."""

    kinds: frozenset[str]
    max_values: int | None
    params: dict[torch.Tensor, ParamInfo]
    optimizers: list[torch.optim.Optimizer]
    adopted: list[bool]
    select: Callable[[str], bool]
    thread: int
    pool: CopyPool
    _plain: _PlainStep | None
    _round: set[torch.optim.Optimizer]
    _stepped: set[torch.optim.Optimizer]
    _inflight: dict[torch.optim.Optimizer, list[_Inflight]]
    _ignored: weakref.WeakSet[torch.optim.Optimizer]
    _buffers: dict[torch.Tensor, torch.Tensor]
    _joining: torch.optim.Optimizer | None  # adopted at the step() now starting
    _round_closed: int | None  # the step a completed round just closed (nothing stepped since)

    step: int
    if TYPE_CHECKING:

        @property
        def traced(self) -> bool: ...

    emit: Callable[..., None]
    cannot_record: Callable[[str, str, BaseException], None]
    advance: Callable[[], None]
    stage_step: Callable[[torch.optim.Optimizer, int | None], tuple[list[StagedUpdates], list[Any]]]
    stage_updates: Callable[[torch.optim.Optimizer, list[StagedUpdates], int | None], None]

    # -- optimizer (torch's global step hooks) ----------------------------------------
    def watch(self, optimizer: torch.optim.Optimizer, *, adopted: bool) -> None:
        """Trace ``optimizer`` from its next ``step()`` on."""
        from tracer._selection import ParamInfo

        if any(o is optimizer for o in self.optimizers):
            return
        oi = len(self.optimizers)
        self.optimizers.append(optimizer)
        self.adopted.append(adopted)
        for gi, group in enumerate(optimizer.param_groups):
            for pi, p in enumerate(group["params"]):
                if p not in self.params:
                    name = f"optimizer{oi}.group{gi}.param{pi}"
                    self.params[p] = ParamInfo(name, "", self.select(name))
        self._round.add(optimizer)
        self._plain = None  # its own hooks record this step's gradients and parameters

    def _tracks(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` is traced, adopting one that steps the model's parameters."""
        if any(o is optimizer for o in self.optimizers):
            return True
        if optimizer in self._ignored:
            return False
        if any(p in self.params for group in optimizer.param_groups for p in group["params"]):
            self.watch(optimizer, adopted=True)
            self._joining = optimizer
            return True
        self._ignored.add(optimizer)
        return False

    def optimizer_pre_hook(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict, frame: Any) -> Any:
        """``frame``: torch's step() wrapper, live until step() returns or raises."""
        if threading.get_ident() != self.thread and not any(o is opt for o in self.optimizers):
            return None  # another thread's optimizer: never adopted
        try:
            if not self._tracks(opt):
                return None
            entry, closure = self._step_starts(opt, frame, args, kwargs)
        except TraceWriteError:
            raise
        except Exception as exc:
            self.cannot_record("grad", type(opt).__name__, exc)
            return None
        if entry is None:
            return None
        if closure is not None and _runs_closure_once_first(opt):
            # torch.optim's step() evaluates the closure once, first thing, after the
            # optimizer's own pre-hooks: hand it a closure that records the gradients it
            # made (and the parameters and state, still untouched) as soon as it returns
            wrapped = self._recording_closure(opt, entry, closure)
            if "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        entry.late = closure is not None  # LBFGS, or a step() of other code
        self._record_before_step(opt, entry)
        if closure is not None and isinstance(opt, torch.optim.LBFGS):
            # LBFGS evaluates the closure once or many times (max_iter, a line search):
            # record each evaluation (its gradients, and where it was evaluated)
            wrapped = self._recording_evaluations(opt, entry, closure)
            if "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        return None

    def _recording_closure(
        self, opt: torch.optim.Optimizer, entry: _Inflight, closure: Callable[[], Any]
    ) -> Callable[[], Any]:
        def closure_then_record() -> Any:
            result = closure()  # outside any guard: its errors are the user's
            if not entry.recorded:
                self._record_before_step(opt, entry)
            return result

        return closure_then_record

    def _record_before_step(self, opt: torch.optim.Optimizer, entry: _Inflight) -> None:
        entry.recorded = True
        try:
            with torch.no_grad():
                self._before_step(opt, entry)
        except Exception as exc:
            self.cannot_record("grad", type(opt).__name__, exc)

    def optimizer_post_hook(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        stack = self._inflight.get(opt)
        if not stack:
            return
        entry = stack.pop()
        if not stack:
            del self._inflight[opt]
        if entry.nested:
            return  # the inner step() of a subclass: the outer one ends the step
        try:
            with torch.no_grad():
                self._emit_step(opt, entry)
        except Exception as exc:
            self.cannot_record("update", type(opt).__name__, exc)
        if entry.step is None:  # (a late joiner's step belongs to the round already closed)
            self._stepped_once(opt)

    def _step_starts(
        self, opt: torch.optim.Optimizer, frame: Any, args: tuple, kwargs: dict
    ) -> tuple[_Inflight | None, Any]:
        """Book-keeping of a ``step()`` that starts: the step boundary, the in-flight entry,
        and the closure it was given (None when this step is not recorded)."""
        self._recover_failed_steps()
        stack = self._inflight.setdefault(opt, [])
        if stack:
            stack.append(_Inflight(frame, nested=True))
            return None, None
        if opt in self._stepped:
            # a second step() of one optimizer within a step: the step ends before it, and
            # the round becomes the optimizers that stepped (they step at different rates)
            self._round = set(self._stepped)
            self.advance()
        entry = _Inflight(frame, nested=False)
        joining, self._joining = self._joining is opt, None
        if joining and not self._stepped and self._round_closed == self.step - 1:
            # adopted at its first step(), just after the others completed their round
            # without it: it belongs to that round (a GAN whose optimizers are both made in
            # the block), so its rows take that step and it does not open this one
            entry.step = self._round_closed
        else:
            self._round_closed = None
        stack.append(entry)
        if not self.traced:
            return None, None
        return entry, kwargs.get("closure", args[1] if len(args) > 1 else None)

    def _stepped_once(self, opt: torch.optim.Optimizer) -> None:
        self._stepped.add(opt)
        if self._round <= self._stepped:
            closed = self.step
            self.advance()
            self._round_closed = closed

    def _recover_failed_steps(self, *, everything: bool = False) -> None:
        """Finish the steps whose ``step()`` raised: torch runs no post-hook then.

        Their rows are kept, with the update they made (often none) and a ``skipped`` row
        (part ``"exception"``); the step then ends as if ``step()`` had returned.
        """
        if not self._inflight:
            return
        live = set() if everything else {id(f) for f in _stack_frames()}
        me = threading.get_ident()  # another thread's step() in flight is not ours to judge
        for opt in list(self._inflight):
            stack = self._inflight[opt]
            failed = None
            while stack and (everything or stack[-1].thread == me) and id(stack[-1].frame) not in live:
                entry = stack.pop()
                failed = entry if not entry.nested else failed
            if not stack:
                del self._inflight[opt]
                if failed is not None:
                    # a step() that raised follows no rule: its partial update is not verified
                    failed.snapshots = [(*s[:6], None) for s in failed.snapshots]
                    failed.lbfgs = None
                    with torch.no_grad():
                        self._emit_step(opt, failed)
                        if self.traced:
                            self.emit("skipped", type(opt).__name__, 0, "exception", None,
                                      torch.ones((), dtype=torch.float64), optimizer=type(opt).__name__)  # fmt: skip
                    if not everything:  # at the block's end: marked, not counted as done
                        self._stepped_once(opt)

    def on_skipped_step(self, optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
        """A GradScaler skipped ``optimizer.step()`` (inf/NaN gradients): mark it, move on."""
        if not self._tracks(optimizer):
            return
        if optimizer in self._stepped:
            self._round = set(self._stepped)
            self.advance()
        if self.traced:
            with torch.no_grad():
                self.emit(
                    "skipped", type(optimizer).__name__, 0, "found_inf", None, found_inf,
                    optimizer=type(optimizer).__name__,
                )  # fmt: skip
        self._stepped_once(optimizer)

    # -- snapshots and updates -------------------------------------------------------
    def _snapshot(self, p: torch.Tensor) -> torch.Tensor:
        """Copy ``p`` (this rank's shard of a DTensor) into a buffer kept for it across steps
        (no allocation per step)."""
        local = local_of(p).detach()
        buf = self._buffers.get(p)
        if buf is None or buf.shape != local.shape or buf.dtype != local.dtype or buf.device != local.device:
            buf = self._buffers[p] = torch.empty_like(local, memory_format=torch.contiguous_format)
        return buf.copy_(local)

    def _update(self, p: torch.Tensor, before: torch.Tensor) -> torch.Tensor | Captured:
        """after − before: exactly in float64 (complex128) when the values are kept, else
        for statistics.

        For statistics the difference is taken in the parameter's dtype (float32 for half
        types): two nearby floats subtract exactly (Sterbenz), and no float64 copy is made;
        it overwrites ``before`` (the snapshot buffer, copied again at the next step).
        """
        after = p.detach()
        wide = torch.complex128 if after.is_complex() else torch.float64
        if self.max_values is None or after.numel() <= self.max_values:
            if after.device.type != "cpu":
                return torch.sub(after.to(wide), before)
            update = self.pool.empty((after.numel(),), wide)
            update.copy_(after.reshape(-1)).sub_(before.reshape(-1))  # `before` promoted exactly
            return adopt(update, tuple(after.shape))  # ours alone: no second copy
        if after.dtype in (torch.float16, torch.bfloat16):
            return after.float() - before.float()
        fused = difference_stats(after, before)  # with numba: one read of both, nothing written
        if fused is not None:
            return fused
        return torch.sub(after, before, out=before)  # into the snapshot buffer: no allocation

    def _emit_update(
        self, p: torch.Tensor, before: torch.Tensor, info: ParamInfo, cls: str | None,
        group: int | None, hp: str | DeferredHparams | None, *, step: int | None = None, verdict: tuple[float, bool] | None = None,
    ) -> None:  # fmt: skip
        sharding = shard_of(p)  # a DTensor's update is after − before on this rank's shard
        try:
            update = self._update(p if sharding is None else sharding.local, before)
        except Exception as exc:
            self.cannot_record("update", info.name, exc)
            return
        dtype = "complex128" if p.is_complex() else "float64"
        self.emit("update", info.name, 0, "", info.module_type, update, optimizer=cls, group=group, hparams=hp,
                  dtype=dtype, step=step, verdict=verdict, sharding=sharding)  # fmt: skip

    def _emit_step(self, opt: torch.optim.Optimizer, entry: _Inflight) -> None:
        """The rows of ``opt``'s step once it is over: late gradients and the updates."""
        verdicts = self._lbfgs_verdicts(entry.lbfgs) if entry.lbfgs is not None else {}
        if entry.staged:
            staged, entry.staged = entry.staged, []
            self.stage_updates(opt, staged, entry.step)
        for p, before, info, c, gi, hp, prediction in entry.snapshots:
            if entry.late and not entry.evaluations and p.grad is not None and "grad" in self.kinds:
                # the closure ran inside step() (other code than torch.optim's): the last
                # gradient it made is there now
                self.emit("grad", info.name, 0, "", info.module_type, p.grad, optimizer=c, group=gi,
                          hparams=hp, step=entry.step)  # fmt: skip
            verdict = verdicts.get(p) if prediction is None else self._verdict(prediction, before, p, info)
            self._emit_update(p, before, info, c, gi, hp, step=entry.step, verdict=verdict)
        entry.snapshots = []
        entry.lbfgs = None

    def _before_step(self, opt: torch.optim.Optimizer, entry: _Inflight) -> None:
        """Rows of the gradients, parameters and state just before ``opt`` updates them.

        ``entry.late``: the gradients will be made inside ``step()`` (a closure it runs
        itself), so every trainable parameter is snapshotted and its gradient is read
        after the step.
        """
        late = entry.late
        verify = self.verify and "update" in self.kinds
        if verify and late and isinstance(opt, torch.optim.LBFGS):
            entry.lbfgs = self._live_lbfgs(opt)
        if not (late or verify):  # small tensors batched (tracer._staged_steps), the rest alone
            entry.staged, alone = self.stage_step(opt, entry.step)
            for p, info, gi, hp in alone:
                self._param_rows(opt, entry, p, info, gi, hp)
            return
        for gi, hp, p, info in self.stepped_params(opt, late=late):
            self._param_rows(opt, entry, p, info, gi, hp)

    def stepped_params(
        self, opt: torch.optim.Optimizer, *, late: bool = False
    ) -> Iterator[tuple[int, str | DeferredHparams, torch.Tensor, ParamInfo]]:
        """``(group index, hparams, p, info)`` of each selected parameter ``opt`` will update:
        those with a gradient (``late``: the closure inside ``step()`` makes it, so any that
        requires one)."""
        for gi, group in enumerate(opt.param_groups):
            hp = hparams_text(group)
            for p in group["params"]:
                info = self.params.get(p)
                if info is None or not info.selected:
                    continue
                if p.grad is None and not (late and p.requires_grad):
                    continue  # the optimizer skips it: no update, no rows
                yield gi, hp, p, info

    def _param_rows(self, opt: torch.optim.Optimizer, entry: _Inflight, p: torch.Tensor, info: ParamInfo,
                    gi: int, hp: str | DeferredHparams) -> None:  # fmt: skip
        """One parameter's rows before ``step()``, one tensor at a time, and its snapshot."""
        kinds, cls, late = self.kinds, type(opt).__name__, entry.late
        verify = self.verify and "update" in kinds
        common = dict(optimizer=cls, group=gi, hparams=hp, step=entry.step)
        if p.grad is not None and "grad" in kinds and not late:
            self.emit("grad", info.name, 0, "", info.module_type, p.grad, **common)
        if "param" in kinds:
            self.emit("param", info.name, 0, "", info.module_type, p, **common)
        state = [(part, t) for key, value in opt.state.get(p, {}).items()
                 for part, t in walk(as_tensor(value), str(key))] if "state" in kinds or verify else []  # fmt: skip
        if "state" in kinds:
            for part, t in state:
                self.emit("state", info.name, 0, part, info.module_type, t, **common)
        if "update" in kinds:
            prediction = self._predict(opt, str(hp), p, dict(state), info) if verify and not late else None
            try:
                entry.snapshots.append((p, self._snapshot(p), info, cls, gi, hp, prediction))
            except Exception as exc:
                self.cannot_record("update", info.name, exc)
