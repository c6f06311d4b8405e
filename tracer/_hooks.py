"""The hook callbacks: they run on every forward, backward and optimizer step, so stay short.

Every callback observes only: it detaches before anything else, works under
``torch.no_grad()``, never returns a replacement value and never draws random numbers.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import sys
import threading
import weakref
from typing import Any, Callable

import torch

from tracer._errors import TraceWriteError
from tracer._store import Writer
from tracer._tensors import Captured, CopyPool, adopt, capture, walk

_active: list["Recorder"] = []  # recorders whose block is running, any thread
_patch_lock = threading.Lock()


class ParamInfo:
    """What a row needs to know about one parameter."""

    __slots__ = ("name", "module_type", "selected")

    def __init__(self, name: str, module_type: str, selected: bool) -> None:
        self.name = name
        self.module_type = module_type
        self.selected = selected


class Recorder:
    """Turns hook events into rows: owns the step counter, call counters and snapshots."""

    def __init__(
        self,
        writer: Writer,
        *,
        kinds: frozenset[str],
        max_values: int | None,
        every: int,
        params: dict[torch.Tensor, ParamInfo],
        optimizers: list[torch.optim.Optimizer],
        on_error: str = "raise",
    ) -> None:
        self.writer = writer
        self.kinds = kinds
        self.max_values = max_values
        self.every = every
        self.params = params
        self.optimizers = optimizers
        self.on_error = on_error
        self.stopped = False  # on_error="warn" after a write failure: record nothing more
        self.lead_optimizer = optimizers[0] if optimizers else None
        self.step = 0
        self.thread = threading.get_ident()
        self.tensor_handles: list[Any] = []
        self._seq = itertools.count()
        self._calls: dict[str, int] = {}
        self._backward_calls = 0
        self._forward_seen = False
        self._snapshots: list[tuple[torch.Tensor, torch.Tensor, ParamInfo, str, int, str]] = []
        self._buffers: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> snapshot buffer
        self._captured: dict[int, tuple[Any, int, Any]] = {}  # id -> (weakref, version, capture)
        self.pool = CopyPool(writer.max_queue_bytes // 2)  # the queue's copies, recycled

    # -- rows ----------------------------------------------------------------------
    @property
    def traced(self) -> bool:
        return self.step % self.every == 0 and not self.stopped

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
        cap = tensor if isinstance(tensor, Captured) else self._capture(tensor)
        if dtype is not None:
            cap = cap._replace(dtype=dtype)
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

    def _capture(self, tensor: torch.Tensor) -> Any:
        """``capture(tensor)``, once per tensor and version: a module's input is usually the
        previous module's output, and its statistics are not computed twice."""
        key = id(tensor)
        hit = self._captured.get(key)
        version = tensor._version
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
        self._captured.clear()
        self.step += 1
        self._calls.clear()
        self._backward_calls = 0
        self.tensor_handles = [h for h in self.tensor_handles if _alive(h)]
        self.check_writer()

    def check_writer(self) -> None:
        if self.writer.error is not None and not self.stopped:
            if self.on_error == "warn":
                import warnings

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

    # -- modules -------------------------------------------------------------------
    def module_hooks(
        self, name: str, module_type: str, *, selected: bool, is_root: bool
    ) -> tuple[Callable[..., None], Callable[..., None]]:
        """The forward pre-hook and forward hook for one module."""
        stack: list[int | None] = []  # call index of each forward in flight (None: untraced)
        want_inputs = selected and "input" in self.kinds
        want_outputs = selected and "activation" in self.kinds
        want_grads = selected and "activation_grad" in self.kinds
        starts_steps = is_root and self.lead_optimizer is None

        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if starts_steps:
                if self._forward_seen:
                    self.advance()
                self._forward_seen = True
            if not (selected and self.traced) or _in_backward():
                # in backward = activation checkpointing recomputing this forward: the
                # original call was recorded already, a recomputation is not a new call
                stack.append(None)
                return
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            stack.append(call)
            if want_inputs:
                grad_enabled = torch.is_grad_enabled()
                with torch.no_grad():
                    for part, t in walk(args):
                        self.emit("input", name, call, part, module_type, t, grad_enabled=grad_enabled)
                    for part, t in walk(kwargs):
                        self.emit("input", name, call, part, module_type, t, grad_enabled=grad_enabled)

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            call = stack.pop() if stack else None
            if call is None:
                return
            grad_enabled = torch.is_grad_enabled()
            step = self.step
            for part, t in walk(output):
                if want_outputs:
                    with torch.no_grad():
                        self.emit(
                            "activation", name, call, part, module_type, t, grad_enabled=grad_enabled
                        )
                if want_grads and grad_enabled and t.requires_grad:
                    grad_hook = self._activation_grad_hook(name, call, part, module_type, step)
                    self.tensor_handles.append(t.register_hook(grad_hook))

        return _eager(pre_hook), _eager(hook)

    def _activation_grad_hook(
        self, name: str, call: int, part: str, module_type: str, step: int
    ) -> Callable[[torch.Tensor], None]:
        def grad_hook(grad: torch.Tensor) -> None:
            with torch.no_grad():
                self.emit("activation_grad", name, call, part, module_type, grad, step=step)

        return _eager(grad_hook)

    # -- backward ------------------------------------------------------------------
    def on_backward(self, tensors: Any) -> None:
        if not self.traced:
            return
        call = self._backward_calls
        self._backward_calls += 1
        with torch.no_grad():
            if isinstance(tensors, torch.Tensor):
                self.emit("loss", "loss", call, "", _grad_fn_name(tensors), tensors)
                return
            for i, t in enumerate(tensors):
                if isinstance(t, torch.Tensor):
                    self.emit("loss", "loss", call, str(i), _grad_fn_name(t), t)

    # -- optimizer -----------------------------------------------------------------
    def _snapshot(self, p: torch.Tensor) -> torch.Tensor:
        """Copy ``p`` into a buffer kept for it across steps (no allocation per step)."""
        buf = self._buffers.get(p)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = self._buffers[p] = torch.empty_like(p, memory_format=torch.contiguous_format)
        return buf.copy_(p.detach())

    def _update(self, p: torch.Tensor, before: torch.Tensor) -> torch.Tensor | Captured:
        """after − before: exactly in float64 when the values are kept, else for statistics.

        For statistics the difference is taken in the parameter's dtype (float32 for half
        types): two nearby floats subtract exactly (Sterbenz), and no float64 copy is made;
        it overwrites ``before`` (the snapshot buffer, copied again at the next step).
        """
        after = p.detach()
        if self.max_values is None or after.numel() <= self.max_values:
            if after.device.type != "cpu":
                return torch.sub(after.to(torch.float64), before)
            update = self.pool.empty((after.numel(),), torch.float64)
            update.copy_(after.reshape(-1)).sub_(before.reshape(-1))  # float64: `before` promoted exactly
            return adopt(update, tuple(after.shape))  # ours alone: no second copy
        if after.dtype in (torch.float16, torch.bfloat16):
            return after.float() - before.float()
        return torch.sub(after, before, out=before)  # into the snapshot buffer: no allocation

    def on_skipped_step(self, optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
        """A GradScaler skipped ``optimizer.step()`` (inf/NaN gradients): mark it, move on."""
        if optimizer not in self.optimizers:
            return
        if self.traced:
            with torch.no_grad():
                self.emit(
                    "skipped", type(optimizer).__name__, 0, "found_inf", None, found_inf,
                    optimizer=type(optimizer).__name__,
                )  # fmt: skip
        if optimizer is self.lead_optimizer:
            self.advance()

    def optimizer_hooks(
        self, optimizer: torch.optim.Optimizer
    ) -> tuple[Callable[..., None], Callable[..., None]]:
        """The step pre-hook and post-hook for one optimizer."""
        cls = type(optimizer).__name__
        eager_closure = _runs_closure_once_first(optimizer)
        kinds = self.kinds
        want_update = "update" in kinds
        late_grads = [False]  # this step's gradients come from a closure run inside step()
        depth = [0]  # a subclass's step() calling super().step() runs the hooks twice

        def pre_hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> Any:
            depth[0] += 1
            if depth[0] > 1 or not self.traced:
                return None
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
            changed = None
            if closure is not None and eager_closure:
                # torch.optim's step() evaluates the closure once, first thing: evaluate it
                # here instead, so the gradients it makes are the ones recorded, and hand
                # step() a closure returning the same result (identical arithmetic)
                with torch.enable_grad():
                    result = closure()
                done = _constant(result)
                changed = (args, {**kwargs, "closure": done}) if "closure" in kwargs else ((args[0], done, *args[2:]), kwargs)
                closure = None
            late_grads[0] = closure is not None  # LBFGS, or a step() of other code
            with torch.no_grad():
                self._before_step(opt, cls, late=late_grads[0], want_update=want_update)
            return changed

        @torch.no_grad()
        def post_hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            depth[0] -= 1
            if depth[0] > 0:
                return  # the inner step() of a subclass: the outer one ends the step
            snapshots, self._snapshots = self._snapshots, []
            for p, before, info, c, gi, hp in snapshots:
                if late_grads[0] and p.grad is not None and "grad" in kinds:
                    # the closure ran inside step(): the last gradient it made is there now
                    # (with LBFGS max_iter=1, or one evaluation, the one the update used)
                    self.emit("grad", info.name, 0, "", info.module_type, p.grad, optimizer=c, group=gi, hparams=hp)
                self.emit(
                    "update", info.name, 0, "", info.module_type, self._update(p, before),
                    optimizer=c, group=gi, hparams=hp, dtype="float64",
                )  # fmt: skip
            late_grads[0] = False
            if opt is self.lead_optimizer:
                self.advance()

        return pre_hook, post_hook

    def _before_step(self, opt: torch.optim.Optimizer, cls: str, *, late: bool, want_update: bool) -> None:
        """Rows of the gradients, parameters and state just before ``opt`` updates them.

        ``late``: the gradients will be made inside ``step()`` (a closure it runs itself), so
        every trainable parameter is snapshotted and its gradient is read after the step.
        """
        kinds = self.kinds
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
                if want_update:
                    self._snapshots.append((p, self._snapshot(p), info, cls, gi, hp))

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
        for recorder in tuple(_active):
            if recorder.thread == me:
                recorder.on_backward(tensors)
        return original(*args, **kwargs)

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


def activate(recorder: Recorder) -> None:
    """Start receiving loss events; patches ``torch.autograd.backward`` for the first recorder.

    ``Tensor.backward`` calls ``torch.autograd.backward``, so both are seen.
    """
    global _installed
    with _patch_lock:
        if not _active:
            _installed = _make_patched_backward(torch.autograd.backward)
            torch.autograd.backward = _installed
            _patch_scaler()
        _active.append(recorder)


def deactivate(recorder: Recorder) -> None:
    """Stop receiving loss events; the last recorder out restores ``torch.autograd.backward``."""
    global _installed
    with _patch_lock:
        if recorder in _active:
            _active.remove(recorder)
        if not _active and _installed is not None:
            if torch.autograd.backward is _installed:  # someone patched on top: leave theirs
                torch.autograd.backward = _installed.__wrapped__
            _installed = None
            _unpatch_scaler()


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
