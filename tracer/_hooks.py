"""The hook callbacks: they run on every forward, backward and optimizer step, so stay short.

Every callback observes only: it detaches before anything else, works under
``torch.no_grad()``, never returns a replacement value and never draws random numbers.

The hooks are torch's *global* ones (module forward hooks and optimizer step hooks for the
whole process), dispatched here to the modules and optimizers of the traced model. Nothing
is stored on the model's modules or on an optimizer, so a ``copy.deepcopy`` of the model
records nothing and costs nothing, and ``torch.save``/``pickle`` of it work inside the block.

A hook never raises into the user's code: a tensor that cannot be recorded, or any other
failure while recording, skips the row with one warning per (kind, name). The one exception
is on purpose: ``on_error="raise"`` raises :class:`TraceWriteError` at a step boundary.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import re
import sys
import threading
import warnings
import weakref
from typing import Any, Callable, Iterable

import torch

from tracer._errors import TraceWriteError
from tracer._store import Writer
from tracer._tensors import Captured, CopyPool, adopt, capture, walk

_active: list["Recorder"] = []  # recorders whose block is running, any thread
_patch_lock = threading.Lock()
_PRUNE_HANDLES = 4096  # prune dead tensor-hook handles once this many more are held


class ParamInfo:
    """What a row needs to know about one parameter."""

    __slots__ = ("name", "module_type", "selected")

    def __init__(self, name: str, module_type: str, selected: bool) -> None:
        self.name = name
        self.module_type = module_type
        self.selected = selected


class ModuleInfo:
    """What a row needs to know about one module, and the calls of it in flight."""

    __slots__ = ("name", "module_type", "selected", "is_root", "stack")

    def __init__(self, name: str, module_type: str, *, selected: bool, is_root: bool) -> None:
        self.name = name
        self.module_type = module_type
        self.selected = selected
        self.is_root = is_root
        self.stack: list[int | None] = []  # call index of each forward in flight (None: untraced)


class _Inflight:
    """One ``optimizer.step()`` whose pre-hook ran and whose post-hook has not (yet)."""

    __slots__ = ("frame", "nested", "late", "snapshots")

    def __init__(self, frame: Any, *, nested: bool) -> None:
        self.frame = frame  # the frame of torch's step() wrapper: live while step() runs
        self.nested = nested  # a subclass's step() calling super().step(): the outer one counts
        self.late = False  # this step's gradients come from a closure run inside step()
        self.snapshots: list[tuple[torch.Tensor, torch.Tensor, ParamInfo, str, int, str]] = []


class _PlainStep:
    """Rows of a step with no optimizer (``w -= lr * w.grad`` under ``no_grad``): the
    parameters at the step's first backward, the latest gradients, and the snapshots that
    give the update when the step ends. Held until then: an optimizer adopted during the
    step records these rows itself."""

    __slots__ = ("params", "grads", "snapshots")

    def __init__(self) -> None:
        self.params: list[tuple[ParamInfo, Captured]] = []
        self.grads: dict[torch.Tensor, tuple[ParamInfo, Captured]] = {}
        self.snapshots: list[tuple[torch.Tensor, torch.Tensor, ParamInfo]] = []


class Recorder:
    """Turns hook events into rows: owns the step counter, call counters and snapshots.

    Steps (see README, "Steps"): with optimizers, a step ends after the ``step()`` that
    completes a round — every traced optimizer has stepped once — or just before an
    optimizer steps a second time in one step (the round then shrinks to the optimizers
    that stepped). Without one, a step ends at the model's next forward with gradients
    enabled after a backward pass (or, in a trace without any backward pass, at every
    forward).
    """

    def __init__(
        self,
        writer: Writer,
        *,
        kinds: frozenset[str],
        max_values: int | None,
        every: int,
        params: dict[torch.Tensor, ParamInfo],
        modules: dict[torch.nn.Module, ModuleInfo],
        optimizers: list[torch.optim.Optimizer],
        select: Callable[[str], bool] = lambda name: True,
        on_error: str = "raise",
    ) -> None:
        self.writer = writer
        self.kinds = kinds
        self.max_values = max_values
        self.every = every
        self.params = params
        self.modules = modules
        self.optimizers = optimizers  # shared with the Run: adopted optimizers are appended
        self.adopted: list[bool] = [False] * len(optimizers)
        self.select = select
        self.on_error = on_error
        self.stopped = False  # on_error="warn" after a write failure: record nothing more
        self.paused = False  # run.pause(): record nothing, count steps
        self.step = 0
        self.grad_rows = 0
        self.backward_passes = 0
        self.thread = threading.get_ident()
        self.tensor_handles: list[Any] = []
        self._prune_at = _PRUNE_HANDLES
        self._leaf_hooks: dict[int, tuple[Any, Any]] = {}  # id(leaf) -> (weakref, handle)
        self._seq = itertools.count()
        self._calls: dict[tuple[str, bool], int] = {}  # (module, grad enabled) -> calls this step
        self._backward_calls = 0
        self._step_forward = False  # this step had a forward of the model (no optimizer)
        self._plain: _PlainStep | None = None
        self._round: set[torch.optim.Optimizer] = set(optimizers)
        self._stepped: set[torch.optim.Optimizer] = set()
        self._inflight: dict[torch.optim.Optimizer, list[_Inflight]] = {}
        self._ignored: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self._buffers: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> snapshot buffer
        self._captured: dict[int, tuple[Any, int, Any]] = {}  # id -> (weakref, version, capture)
        self._warned: set[tuple[str, str]] = set()
        self.pool = CopyPool(writer.max_queue_bytes // 2)  # the queue's copies, recycled

    # -- rows ----------------------------------------------------------------------
    @property
    def traced(self) -> bool:
        return self.step % self.every == 0 and not (self.stopped or self.paused)

    def emit(
        self,
        kind: str,
        name: str,
        call: int,
        part: str,
        module_type: str | None,
        tensor: torch.Tensor | Captured,
        *,
        step: int | None = None,
        grad_enabled: bool | None = None,
        optimizer: str | None = None,
        group: int | None = None,
        hparams: str | None = None,
        dtype: str | None = None,
    ) -> None:
        try:
            cap = tensor if isinstance(tensor, Captured) else self._capture(tensor)
        except Exception as exc:  # noqa: BLE001 - a row tracer cannot make is skipped, said once
            self.cannot_record(kind, name, exc)
            return
        if dtype is not None:
            cap = cap._replace(dtype=dtype)
        if kind == "grad":
            self.grad_rows += 1
        row = (
            self.step if step is None else step,
            next(self._seq),
            kind,
            name,
            call,
            part,
            module_type,
            cap,
            grad_enabled,
            optimizer,
            group,
            hparams,
        )
        self.writer.put(row)

    def cannot_record(self, kind: str, name: str, exc: BaseException) -> None:
        """One warning per (kind, name) that says why its rows are missing."""
        key = (kind, name)
        if key in self._warned:
            return
        self._warned.add(key)
        reason = str(exc) or type(exc).__name__
        _warn(f"tracer skipped {kind} rows of {name!r}: {reason}; training goes on")

    def _capture(self, tensor: torch.Tensor) -> Any:
        """``capture(tensor)``, once per tensor and version: a module's input is usually the
        previous module's output, and its statistics are not computed twice."""
        try:
            version = None if tensor.is_inference() else tensor._version
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a version counter
            version = None
        if version is None:
            return capture(tensor, self.max_values, self.pool)
        key = id(tensor)
        hit = self._captured.get(key)
        if hit is not None and hit[0]() is tensor and hit[1] == version:
            return hit[2]
        cap = capture(tensor, self.max_values, self.pool)
        try:
            self._captured[key] = (weakref.ref(tensor), version, cap)
        except TypeError:  # a tensor subclass without weak references
            pass
        return cap

    def advance(self) -> None:
        """Close the current step."""
        self._finish_plain_step()
        self._captured.clear()
        self.step += 1
        self._calls.clear()
        self._backward_calls = 0
        self._stepped.clear()
        self._step_forward = False
        self.check_writer()

    def finish(self) -> None:
        """The block ends: a step left open by a raised ``step()`` or a loop without an
        optimizer is completed (its rows written)."""
        try:
            self._recover_failed_steps(everything=True)
        except TraceWriteError:
            pass  # the block's end reports the writer's error itself
        self._finish_plain_step()

    def current_step(self) -> int:
        """``step``, once a ``step()`` that raised since the last hook has been counted."""
        if self._inflight:
            self._recover_failed_steps()
        return self.step

    def check_writer(self) -> None:
        if self.writer.error is not None and not self.stopped:
            if self.on_error == "warn":
                self.stopped = True
                warnings.warn(
                    f"tracer stopped tracing: it could not write to {str(self.writer.directory)!r} "
                    f"({self.writer.error}); training goes on untraced",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
            raise TraceWriteError(
                f"tracer could not write to {str(self.writer.directory)!r}: {self.writer.error}; "
                "training itself was not changed"
            ) from self.writer.error

    # -- modules (torch's global forward hooks) -------------------------------------
    def forward_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> None:
        info = self.modules.get(module)
        if info is None:
            return  # another model, or a copy of this one
        depth = len(info.stack)
        try:
            self._forward_pre(info, args, kwargs or {})
        except TraceWriteError:
            raise
        except Exception as exc:  # noqa: BLE001 - never raise into the user's forward
            self.cannot_record("input", info.name, exc)
        finally:
            if len(info.stack) == depth:  # one entry per call, for the forward hook to pop
                info.stack.append(None)

    def forward_hook(self, module: torch.nn.Module, args: tuple, *rest: Any) -> None:
        """``(module, args, kwargs, output)``; torch passes ``(module, args, output)`` when
        it runs always-called hooks after ``forward`` raised."""
        info = self.modules.get(module)
        if info is None:
            return
        call = info.stack.pop() if info.stack else None
        if call is None or len(rest) != 2:
            return
        try:
            self._forward_post(info, call, rest[1])
        except Exception as exc:  # noqa: BLE001 - never raise into the user's forward
            self.cannot_record("activation", info.name, exc)

    def _forward_pre(self, info: ModuleInfo, args: tuple, kwargs: dict) -> None:
        if info.is_root:
            self._root_forward()
        if not (info.selected and self.traced) or _in_backward():
            # in backward = activation checkpointing recomputing this forward: the
            # original call was recorded already, a recomputation is not a new call
            info.stack.append(None)
            return
        grad_enabled = torch.is_grad_enabled()
        key = (info.name, grad_enabled)  # evaluation forwards count their calls apart
        call = self._calls.get(key, 0)
        self._calls[key] = call + 1
        info.stack.append(call)
        if "input" in self.kinds:
            with torch.no_grad():
                for part, t in itertools.chain(walk(args), walk(kwargs)):
                    self.emit("input", info.name, call, part, info.module_type, t, grad_enabled=grad_enabled)

    def _forward_post(self, info: ModuleInfo, call: int, output: Any) -> None:
        grad_enabled = torch.is_grad_enabled()
        want_outputs = "activation" in self.kinds
        want_grads = grad_enabled and "activation_grad" in self.kinds
        for part, t in walk(output):
            if want_outputs:
                with torch.no_grad():
                    self.emit("activation", info.name, call, part, info.module_type, t, grad_enabled=grad_enabled)
            if want_grads and t.requires_grad:
                self._watch_grad(t, info, call, part)

    def _watch_grad(self, t: torch.Tensor, info: ModuleInfo, call: int, part: str) -> None:
        """Record the gradient that reaches ``t`` (an output) in the backward pass."""
        if t.grad_fn is None:
            # a leaf (a module returning its own parameter): one hook for the whole block,
            # not one more at every call; its rows take the step and pass they happen in
            key = id(t)
            held = self._leaf_hooks.get(key)
            if held is not None and held[0]() is t:
                return
            hook = _eager(self._leaf_grad_hook(info.name, part, info.module_type))
            self._leaf_hooks[key] = (weakref.ref(t), t.register_hook(hook))
            return
        hook = _eager(self._activation_grad_hook(info.name, call, part, info.module_type, self.step))
        self.tensor_handles.append(t.register_hook(hook))
        if len(self.tensor_handles) >= self._prune_at:
            # a long stretch without a step (evaluation with gradients on): keep only the
            # handles whose tensors are alive, so memory stays bounded
            self.tensor_handles = [h for h in self.tensor_handles if _alive(h)]
            self._prune_at = len(self.tensor_handles) + _PRUNE_HANDLES

    def _activation_grad_hook(
        self, name: str, call: int, part: str, module_type: str, step: int
    ) -> Callable[[torch.Tensor], None]:
        def grad_hook(grad: torch.Tensor) -> None:
            if self.stopped or self.paused:
                return
            with torch.no_grad():
                self.emit("activation_grad", name, call, part, module_type, grad, step=step)

        return grad_hook

    def _leaf_grad_hook(self, name: str, part: str, module_type: str) -> Callable[[torch.Tensor], None]:
        def grad_hook(grad: torch.Tensor) -> None:
            if not self.traced:
                return
            with torch.no_grad():
                self.emit("activation_grad", name, max(self._backward_calls - 1, 0), part, module_type, grad)

        return grad_hook

    def _root_forward(self) -> None:
        """The model's forward starts: the capture cache serves one forward at a time."""
        self._captured.clear()
        if self._inflight:
            self._recover_failed_steps()
        if self.optimizers:
            return
        grad_enabled = torch.is_grad_enabled()
        if not grad_enabled and self.backward_passes:
            return  # evaluation between training steps: no new step
        if self._step_forward and (self._backward_calls or not self.backward_passes):
            self.advance()
        self._step_forward = True

    # -- backward ------------------------------------------------------------------
    def on_backward(self, tensors: Any) -> None:
        self.backward_passes += 1
        call = self._backward_calls
        self._backward_calls += 1
        if not self.traced:
            return
        with torch.no_grad():
            if not self.optimizers and call == 0:
                self._start_plain_step()
            if isinstance(tensors, torch.Tensor):
                self.emit("loss", "loss", call, "", _grad_fn_name(tensors), tensors)
                return
            for i, t in enumerate(tensors):
                if isinstance(t, torch.Tensor):
                    self.emit("loss", "loss", call, str(i), _grad_fn_name(t), t)

    def after_backward(self) -> None:
        """Without an optimizer, the gradients the backward pass left in ``.grad``."""
        plain = self._plain
        if plain is None or self.optimizers or "grad" not in self.kinds or not self.traced:
            return
        with torch.no_grad():
            for p, info in self.params.items():
                if info.selected and p.grad is not None:
                    try:
                        plain.grads[p] = (info, self._capture(p.grad))
                    except Exception as exc:  # noqa: BLE001
                        self.cannot_record("grad", info.name, exc)

    def _start_plain_step(self) -> None:
        plain = self._plain = _PlainStep()
        for p, info in self.params.items():
            if not (info.selected and p.requires_grad):
                continue
            try:
                if "param" in self.kinds:
                    plain.params.append((info, self._capture(p)))
                if "update" in self.kinds:
                    plain.snapshots.append((p, self._snapshot(p), info))
            except Exception as exc:  # noqa: BLE001
                self.cannot_record("param", info.name, exc)

    def _finish_plain_step(self) -> None:
        plain, self._plain = self._plain, None
        if plain is None or self.optimizers:
            return
        step = self.step
        with torch.no_grad():
            for info, cap in plain.params:
                self.emit("param", info.name, 0, "", info.module_type, cap, step=step)
            for info, cap in plain.grads.values():
                self.emit("grad", info.name, 0, "", info.module_type, cap, step=step)
            for p, before, info in plain.snapshots:
                self._emit_update(p, before, info, None, None, None, step=step)

    # -- optimizer (torch's global step hooks) ----------------------------------------
    def watch(self, optimizer: torch.optim.Optimizer, *, adopted: bool) -> None:
        """Trace ``optimizer`` from its next ``step()`` on."""
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
        except Exception as exc:  # noqa: BLE001 - never raise into the user's step()
            self.cannot_record("grad", type(opt).__name__, exc)
            return None
        if entry is None:
            return None
        changed = None
        if closure is not None and _runs_closure_once_first(opt):
            # torch.optim's step() evaluates the closure once, first thing: evaluate it
            # here instead (outside any guard: its errors are the user's), so the gradients
            # it makes are the ones recorded, and hand step() a closure returning the same
            # result (identical arithmetic)
            with torch.enable_grad():
                result = closure()
            done = _constant(result)
            changed = (args, {**kwargs, "closure": done}) if "closure" in kwargs else ((args[0], done, *args[2:]), kwargs)
            closure = None
        entry.late = closure is not None  # LBFGS, or a step() of other code
        try:
            with torch.no_grad():
                self._before_step(opt, entry)
        except TraceWriteError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.cannot_record("grad", type(opt).__name__, exc)
        return changed

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
        except Exception as exc:  # noqa: BLE001
            self.cannot_record("update", type(opt).__name__, exc)
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
        stack.append(entry)
        if not self.traced:
            return None, None
        return entry, kwargs.get("closure", args[1] if len(args) > 1 else None)

    def _stepped_once(self, opt: torch.optim.Optimizer) -> None:
        self._stepped.add(opt)
        if self._round <= self._stepped:
            self.advance()

    def _recover_failed_steps(self, *, everything: bool = False) -> None:
        """Finish the steps whose ``step()`` raised: torch runs no post-hook then.

        Their rows are kept, with the update they made (often none) and a ``skipped`` row
        (part ``"exception"``); the step then ends as if ``step()`` had returned.
        """
        if not self._inflight:
            return
        live = set() if everything else {id(f) for f in _stack_frames()}
        for opt in list(self._inflight):
            stack = self._inflight[opt]
            failed = None
            while stack and id(stack[-1].frame) not in live:
                entry = stack.pop()
                failed = entry if not entry.nested else failed
            if not stack:
                del self._inflight[opt]
                if failed is not None:
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
        """Copy ``p`` into a buffer kept for it across steps (no allocation per step)."""
        buf = self._buffers.get(p)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = self._buffers[p] = torch.empty_like(p, memory_format=torch.contiguous_format)
        return buf.copy_(p.detach())

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
        return torch.sub(after, before, out=before)  # into the snapshot buffer: no allocation

    def _emit_update(
        self, p: torch.Tensor, before: torch.Tensor, info: ParamInfo, cls: str | None,
        group: int | None, hp: str | None, *, step: int | None = None,
    ) -> None:  # fmt: skip
        try:
            update = self._update(p, before)
        except Exception as exc:  # noqa: BLE001
            self.cannot_record("update", info.name, exc)
            return
        dtype = "complex128" if p.is_complex() else "float64"
        self.emit("update", info.name, 0, "", info.module_type, update, optimizer=cls, group=group,
                  hparams=hp, dtype=dtype, step=step)  # fmt: skip

    def _emit_step(self, opt: torch.optim.Optimizer, entry: _Inflight) -> None:
        """The rows of ``opt``'s step once it is over: late gradients and the updates."""
        for p, before, info, c, gi, hp in entry.snapshots:
            if entry.late and p.grad is not None and "grad" in self.kinds:
                # the closure ran inside step(): the last gradient it made is there now
                # (with LBFGS max_iter=1, or one evaluation, the one the update used)
                self.emit("grad", info.name, 0, "", info.module_type, p.grad, optimizer=c, group=gi, hparams=hp)
            self._emit_update(p, before, info, c, gi, hp)
        entry.snapshots = []

    def _before_step(self, opt: torch.optim.Optimizer, entry: _Inflight) -> None:
        """Rows of the gradients, parameters and state just before ``opt`` updates them.

        ``entry.late``: the gradients will be made inside ``step()`` (a closure it runs
        itself), so every trainable parameter is snapshotted and its gradient is read
        after the step.
        """
        kinds = self.kinds
        cls = type(opt).__name__
        late = entry.late
        for gi, group in enumerate(opt.param_groups):
            hp = hparams_json(group)
            for p in group["params"]:
                info = self.params.get(p)
                if info is None or not info.selected:
                    continue
                if p.grad is None and not (late and p.requires_grad):
                    continue  # the optimizer skips it: no update, no rows
                common = dict(optimizer=cls, group=gi, hparams=hp)
                if p.grad is not None and "grad" in kinds and not late:
                    self.emit("grad", info.name, 0, "", info.module_type, p.grad, **common)
                if "param" in kinds:
                    self.emit("param", info.name, 0, "", info.module_type, p, **common)
                if "state" in kinds:
                    for key, value in opt.state.get(p, {}).items():
                        for part, t in walk(_as_tensor(value), str(key)):
                            self.emit("state", info.name, 0, part, info.module_type, t, **common)
                if "update" in kinds:
                    try:
                        entry.snapshots.append((p, self._snapshot(p), info, cls, gi, hp))
                    except Exception as exc:  # noqa: BLE001
                        self.cannot_record("update", info.name, exc)

    # -- installing ----------------------------------------------------------------------
    def install(self) -> None:
        """Start receiving hook events (see :func:`activate`)."""
        activate(self)

    def uninstall(self) -> None:
        """Stop receiving them and remove every tensor hook this recorder registered."""
        try:
            for handle in self.tensor_handles:
                handle.remove()
            for _, handle in self._leaf_hooks.values():
                handle.remove()
        finally:
            self.tensor_handles = []
            self._leaf_hooks = {}
            for info in self.modules.values():
                info.stack.clear()
            deactivate(self)


def _set_with_kwargs(module: torch.nn.Module, hook_id: int, on: bool) -> None:
    flags = getattr(module, "_forward_pre_hooks_with_kwargs", None)
    if not isinstance(flags, dict):
        return  # a ScriptModule or an odd subclass: its keyword inputs are not recorded
    if on:
        flags[hook_id] = True
    else:
        flags.pop(hook_id, None)


def _stack_frames() -> Iterable[Any]:
    frame = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _warn(message: str, stacklevel: int = 4) -> None:
    """A warning that never raises into training (not even under ``-W error``)."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
    except Exception:  # noqa: BLE001
        pass


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Under ``torch.compile``, run a hook eagerly (a graph break) instead of tracing it.

    Only when dynamo is loaded (a compiled model imported it): importing it costs seconds.
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.disable(fn)
    return fn


def _in_backward() -> bool:
    return torch._C._current_autograd_node() is not None


def _grad_fn_name(tensor: torch.Tensor) -> str | None:
    """``MseLossBackward0`` for an MSE loss: the loss row's ``module_type``."""
    fn = tensor.grad_fn
    return None if fn is None else type(fn).__name__


def _runs_closure_once_first(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``step(closure)`` evaluates the closure once, at its top: torch.optim's do,
    except LBFGS; a ``step`` written elsewhere may do anything."""
    step = inspect.unwrap(type(optimizer).step)  # torch wraps step() in its hook caller
    module = getattr(step, "__module__", "") or ""
    return module.startswith("torch.optim") and not isinstance(optimizer, torch.optim.LBFGS)


def _constant(result: Any) -> Callable[[], Any]:
    def closure() -> Any:
        return result

    return closure


def _alive(handle: Any) -> bool:
    ref = getattr(handle, "hooks_dict_ref", None)
    return ref is not None and ref() is not None


def _as_tensor(value: Any) -> Any:
    """Python scalars in optimizer state become 0-d tensors (int64 for ints, as replay needs)."""
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    if isinstance(value, (bool, int)):
        return torch.tensor(value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def hparams_json(group: dict[str, Any]) -> str:
    """A param group's hyper-parameters (everything but ``params``) as JSON text."""
    return json.dumps({k: _jsonable(v) for k, v in group.items() if k != "params"}, sort_keys=True)


# -- the loss: the one temporary patch --------------------------------------------


def _make_patched_backward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def backward(*args: Any, **kwargs: Any) -> Any:
        tensors = args[0] if args else kwargs.get("tensors")
        me = threading.get_ident()
        mine = [r for r in tuple(_active) if r.thread == me]
        for recorder in mine:
            try:
                recorder.on_backward(tensors)
            except TraceWriteError:
                raise
            except Exception as exc:  # noqa: BLE001 - never raise into the user's backward
                recorder.cannot_record("loss", "loss", exc)
        result = original(*args, **kwargs)
        for recorder in mine:
            try:
                recorder.after_backward()
            except Exception as exc:  # noqa: BLE001
                recorder.cannot_record("grad", "", exc)
        return result

    return backward


_installed: Callable[..., Any] | None = None
_scaler_original: Callable[..., Any] | None = None


def _make_patched_opt_step(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _maybe_opt_step(scaler: Any, optimizer: Any, optimizer_state: dict, *args: Any, **kwargs: Any) -> Any:
        found = sum(v.item() for v in optimizer_state["found_inf_per_device"].values())
        if found:
            me = threading.get_ident()
            for recorder in tuple(_active):
                if recorder.thread == me:
                    recorder.on_skipped_step(optimizer, torch.tensor(float(found)))
        return original(scaler, optimizer, optimizer_state, *args, **kwargs)

    return _maybe_opt_step


# torch.compile(module) warns at every call while global module hooks exist, that they
# fire once more for its OptimizedModule wrapper: tracer's hooks ignore that wrapper
_COMPILE_WARNING = ("ignore", re.compile(r"Using `torch\.compile\(module\)` when there are global hooks"),
                    UserWarning, None, 0)  # fmt: skip

# -- one set of global hooks for the process, dispatched to every active recorder -------
# Registered when the first block starts and removed when the last one ends, so that
# threads tracing at once never change torch's hook dicts while another iterates them.

_recorders: tuple[Recorder, ...] = ()
_global_handles: list[Any] = []


def _forward_pre(module: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> None:
    for recorder in _recorders:
        recorder.forward_pre_hook(module, args, kwargs)


def _forward(module: torch.nn.Module, args: tuple, *rest: Any) -> None:
    for recorder in _recorders:
        recorder.forward_hook(module, args, *rest)


def _step_pre(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> Any:
    frame = sys._getframe(1)  # torch's step() wrapper
    changed = None
    for recorder in _recorders:
        result = recorder.optimizer_pre_hook(opt, args, kwargs, frame)
        if result is not None:
            changed = args, kwargs = result
    return changed


def _step_post(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    for recorder in _recorders:
        recorder.optimizer_post_hook(opt, args, kwargs)


def _register_global_hooks() -> None:
    from torch.nn.modules import module as nn_hooks
    from torch.optim import optimizer as optim_hooks

    _global_handles[:] = [
        nn_hooks.register_module_forward_pre_hook(_eager(_forward_pre)),
        nn_hooks.register_module_forward_hook(_eager(_forward), with_kwargs=True, always_call=True),
        optim_hooks.register_optimizer_step_pre_hook(_step_pre),
        optim_hooks.register_optimizer_step_post_hook(_step_post),
    ]


def _set_module_flags(recorder: Recorder, on: bool) -> None:
    """torch hands a global pre-hook the keyword arguments only for modules that list its
    id: the traced ones (an int in a dict, removed again when the block ends)."""
    if _global_handles:
        for module in recorder.modules:
            _set_with_kwargs(module, _global_handles[0].id, on)


def activate(recorder: Recorder) -> None:
    """Start dispatching hook events to ``recorder``; the first recorder registers the
    global hooks and patches ``torch.autograd.backward`` (``Tensor.backward`` calls it)."""
    global _installed, _recorders
    with _patch_lock:
        if not _active:
            _installed = _make_patched_backward(torch.autograd.backward)
            torch.autograd.backward = _installed
            _patch_scaler()
            warnings.filters.insert(0, _COMPILE_WARNING)  # type: ignore[attr-defined]
            warnings._filters_mutated()  # type: ignore[attr-defined]
            _register_global_hooks()
        _active.append(recorder)
        _set_module_flags(recorder, True)
        _recorders = tuple(_active)


def deactivate(recorder: Recorder) -> None:
    """Stop dispatching to ``recorder``; the last one out removes the global hooks and
    restores ``torch.autograd.backward``."""
    global _installed, _recorders
    with _patch_lock:
        if recorder in _active:
            _set_module_flags(recorder, False)
            _active.remove(recorder)
        _recorders = tuple(_active)
        if not _active and _installed is not None:
            for handle in _global_handles:
                handle.remove()
            _global_handles.clear()
            if torch.autograd.backward is _installed:  # someone patched on top: leave theirs
                torch.autograd.backward = _installed.__wrapped__
            _installed = None
            _unpatch_scaler()
            if _COMPILE_WARNING in warnings.filters:  # type: ignore[attr-defined]
                warnings.filters.remove(_COMPILE_WARNING)  # type: ignore[attr-defined]
                warnings._filters_mutated()  # type: ignore[attr-defined]


def _patch_scaler() -> None:
    """GradScaler skips ``optimizer.step()`` on inf/NaN gradients; see that it did."""
    global _scaler_original
    scaler = torch.amp.GradScaler
    _scaler_original = scaler.__dict__.get("_maybe_opt_step")
    if _scaler_original is not None:
        scaler._maybe_opt_step = _make_patched_opt_step(_scaler_original)


def _unpatch_scaler() -> None:
    global _scaler_original
    if _scaler_original is not None:
        torch.amp.GradScaler._maybe_opt_step = _scaler_original
    _scaler_original = None
