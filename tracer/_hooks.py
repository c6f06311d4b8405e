"""The hook callbacks: they run on every forward, backward and optimizer step, so stay short.

Every callback observes only: it detaches before anything else, works under
``torch.no_grad()``, never returns a replacement value and never draws random numbers.

The hooks are torch's *global* ones, dispatched here to the traced model's modules and
optimizers: nothing is stored on them, so copies and pickles of the model carry no hook.

A hook never raises into the user's code: a tensor that cannot be recorded, or any other
failure while recording, skips the row with one warning per (kind, name). The one exception
is on purpose: ``on_error="raise"`` raises :class:`TraceWriteError` at a step boundary.
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch

from tracer._autograd import NoGrad, _grad_fn_name, _in_backward
from tracer._buffers import BufferSteps
from tracer._copy_pool import CopyPool
from tracer._dispatch import _warn, activate, deactivate
from tracer._errors import TraceWriteError
from tracer._grad_hooks import _PRUNE_HANDLES, GradHooks
from tracer._metrics import MetricSteps, _Pending
from tracer._ops import NO_OPS, OpCapture
from tracer._optimizer_steps import OptimizerSteps, _Inflight
from tracer._plain_steps import PlainSteps, _PlainStep
from tracer._schema import Row, Sink
from tracer._selection import BufferInfo, ModuleInfo, ParamInfo
from tracer._sharded import Sharding, shard_of, waited
from tracer._staged_steps import StagedSteps
from tracer._staging import Staging
from tracer._tensors import Captured, capture
from tracer._walk import parts, walk

_unseen = torch._C.DisableTorchFunction


class Recorder(StagedSteps, GradHooks, OptimizerSteps, PlainSteps, BufferSteps, MetricSteps):
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
        writer: Sink,
        *,
        kinds: frozenset[str],
        max_values: int | None,
        every: int,
        params: dict[torch.Tensor, ParamInfo],
        modules: dict[torch.nn.Module, ModuleInfo],
        optimizers: list[torch.optim.Optimizer],
        select: Callable[[str], bool] = lambda name: True,
        on_error: str = "raise",
        verify: bool = False,
        capture_ops: bool = False,
        buffers: list[BufferInfo] | None = None,
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
        self.verify = verify  # check each update against its rule here (see _optimizer_steps)
        self.capture_ops = capture_ops  # record tensor operations inside forwards (kind "op")
        self.ops = OpCapture(self) if capture_ops and "op" in kinds else NO_OPS
        self.buffers = buffers or []  # recorded as each step leaves them (kind "buffer")
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
        self._trained_since_step = False  # a forward with gradients since the step began
        self.in_backward_pass = False  # inside torch.autograd.backward (not autograd.grad)
        self._plain: _PlainStep | None = None
        self._round: set[torch.optim.Optimizer] = set(optimizers)
        self._stepped: set[torch.optim.Optimizer] = set()
        self._inflight: dict[torch.optim.Optimizer, list[_Inflight]] = {}
        self._joining: torch.optim.Optimizer | None = None
        self._round_closed: int | None = None
        self._ignored: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._buffers: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> snapshot buffer
        self._captured: dict[int, tuple[Any, int, Any]] = {}  # id -> (weakref, version, capture)
        self._plans: dict[torch.optim.Optimizer, Any] = {}  # each optimizer's StepPlan (tracer._step_plan)
        self._warned: set[tuple[str, str]] = set()
        self.step_closed = False  # a step just ended and nothing of the next has run (run.log)
        self._metric_calls: dict[str, tuple[int, int]] = {}
        self._pending_metrics: list[_Pending] = []
        self.pool = CopyPool(writer.max_queue_bytes // 2)  # the queue's copies, recycled
        # small tensors' rows, batched (tracer._staging): readable flush_seconds / 4 later at most
        self.staging = Staging(
            writer,
            flush_seconds=getattr(writer, "flush_seconds", 1.0),
            on_error=lambda exc: self.cannot_record("staged", "small tensors", exc),
        )

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
        verdict: tuple[float, bool] | None = None,
        sharding: Sharding | None = None,
    ) -> None:
        """One row of ``tensor`` (a DTensor's: this rank's shard and ``sharding``, where it sits);
        ``verdict``: ``(rule_error, rule_matches)`` of a verified update."""
        try:
            if not (isinstance(tensor, Captured) or sharding or verdict or dtype) and self.stage(
                kind, name, call, part, module_type, tensor, step, grad_enabled, optimizer, group, hparams
            ):
                return  # a small tensor: staged with the others of its step
            if not isinstance(tensor, Captured):
                sharding = shard_of(tensor) or sharding
                # the rank's real elements, or a pending collective's result: a plain tensor
                tensor = waited(tensor) if sharding is None else sharding.local
            cap = tensor if isinstance(tensor, Captured) else self._capture(tensor)
        except Exception as exc:
            self.cannot_record(kind, name, exc)
            return
        if dtype is not None:
            cap = cap._replace(dtype=dtype)
        if kind == "grad":
            self.grad_rows += 1
        row = Row(
            self.step if step is None else step, next(self._seq), kind, name, call, part, module_type,
            cap, grad_enabled, optimizer, group, hparams,
            *((float(verdict[0]), bool(verdict[1])) if verdict is not None else (None, None)),
            *((sharding.global_shape, sharding.shard_offset, sharding.placements) if sharding else (None, None, None)),
        )  # fmt: skip
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

    def _forget_copies(self) -> None:
        """Empty the caches of captured and staged tensors (they serve one forward, one step)."""
        self._captured.clear()
        self.staging.forget()

    def advance(self) -> None:
        """Close the current step."""
        self._finish_plain_step()
        if self.traced:
            self.emit_buffers(self.step)
        self.flush_metrics()
        self.staging.seal()  # the step's small tensors, to the writer
        self.step_closed = True
        self._forget_copies()
        self.step += 1
        self._calls.clear()
        self._backward_calls = 0
        self._stepped.clear()
        self._step_forward = False
        self._trained_since_step = False
        self.check_writer()

    def finish(self) -> None:
        """The block ends: a step left open by a raised ``step()`` or a loop without an
        optimizer is completed (its rows written)."""
        try:
            self._recover_failed_steps(everything=True)
        except TraceWriteError:
            pass  # the block's end reports the writer's error itself
        if self._trained_since_step and self.traced:  # the open step trained: its buffers
            self.emit_buffers(self.step)
        self._finish_plain_step()
        self.flush_metrics(wait=True)
        self.staging.seal()

    def current_step(self) -> int:
        """``step``, once a ``step()`` that raised since the last hook has been counted."""
        if self._inflight and threading.get_ident() == self.thread:
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
            with _unseen():  # tracer's own operations: for no TorchFunctionMode to see
                self._forward_pre(info, args, kwargs or {})
        except TraceWriteError:
            raise
        except Exception as exc:
            self.cannot_record("input", info.name, exc)
        finally:
            if len(info.stack) == depth:  # one entry per call, for the forward hook to pop
                info.stack.append(None)
            self.ops.enter(info, info.stack[-1])

    def forward_hook(self, module: torch.nn.Module, args: tuple, *rest: Any) -> None:
        """``(module, args, kwargs, output)``; torch passes ``(module, args, output)`` when
        it runs always-called hooks after ``forward`` raised."""
        info = self.modules.get(module)
        if info is None:
            return
        self.ops.leave()
        call = info.stack.pop() if info.stack else None
        if call is None or len(rest) != 2:
            return
        try:
            with _unseen():
                self._forward_post(info, call, rest[1])
        except Exception as exc:
            self.cannot_record("activation", info.name, exc)

    def _forward_pre(self, info: ModuleInfo, args: tuple, kwargs: dict) -> None:
        recomputing = _in_backward()  # activation checkpointing recomputes forwards in backward
        if info.is_root and not recomputing:
            self._root_forward()
            self.step_closed = False
        if torch.is_grad_enabled() and not recomputing:
            self._trained_since_step = True
        if not (info.selected and self.traced) or recomputing:
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
            with NoGrad():
                for part, t in itertools.chain(parts(args), walk(kwargs)) if kwargs else parts(args):
                    self.emit("input", info.name, call, part, info.module_type, t, grad_enabled=grad_enabled)

    def _forward_post(self, info: ModuleInfo, call: int, output: Any) -> None:
        grad_enabled = torch.is_grad_enabled()
        want_outputs = "activation" in self.kinds
        want_grads = grad_enabled and "activation_grad" in self.kinds
        for part, t in parts(output):
            if want_outputs:
                with NoGrad():
                    self.emit("activation", info.name, call, part, info.module_type, t, grad_enabled=grad_enabled)
            if want_grads and t.requires_grad:
                self._watch_grad(t, info, call, part)

    def _root_forward(self) -> None:
        """The model's forward starts: the capture cache serves one forward at a time, and
        the tensor hooks of the last forward's outputs, gone by now, are forgotten."""
        self._forget_copies()
        self.prune_handles()
        if self._inflight:
            self._recover_failed_steps()
        if self.optimizers:
            return
        if not torch.is_grad_enabled():
            return  # evaluation (no_grad, inference_mode) never starts a step
        if self._step_forward and (self._backward_calls or not self.backward_passes):
            self.advance()
        self._step_forward = True

    # -- backward ------------------------------------------------------------------
    def on_backward(self, tensors: Any) -> bool:
        """A backward pass starts; False when it is not this model's (no forward of it with
        gradients since the step began: another model traced in the same thread)."""
        if not self._trained_since_step:
            return False
        self.step_closed = False
        self.backward_passes += 1
        call = self._backward_calls
        self._backward_calls += 1
        if not self.traced:
            return True
        with NoGrad():
            if not self.optimizers and call == 0:
                self._start_plain_step()
            if isinstance(tensors, torch.Tensor):
                self.emit("loss", "loss", call, "", _grad_fn_name(tensors), tensors)
                return True
            for i, t in enumerate(tensors):
                if isinstance(t, torch.Tensor):
                    self.emit("loss", "loss", call, str(i), _grad_fn_name(t), t)
        return True

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
            self.ops.close()
            self.tensor_handles = []
            self._leaf_hooks = {}
            for info in self.modules.values():
                info.stack.clear()
            deactivate(self)
