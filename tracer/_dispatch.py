"""torch's global hooks, registered once for the process and dispatched to every active
recorder, and the two temporary patches (``torch.autograd.backward`` to see the loss,
``GradScaler._maybe_opt_step`` to see skipped steps).

Registered when the first block starts and removed when the last one ends, so that
threads tracing at once never change torch's hook dicts while another iterates them.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tracer._errors import TraceWriteError

if TYPE_CHECKING:
    from tracer._hooks import Recorder

_active: list[Recorder] = []  # recorders whose block is running, any thread
_patch_lock = threading.Lock()


def _set_with_kwargs(module: torch.nn.Module, hook_id: int, on: bool) -> None:
    flags = getattr(module, "_forward_pre_hooks_with_kwargs", None)
    if not isinstance(flags, dict):
        return  # a ScriptModule or an odd subclass: its keyword inputs are not recorded
    if on:
        flags[hook_id] = True
    else:
        flags.pop(hook_id, None)


def _warn(message: str, stacklevel: int = 4) -> None:
    """A warning that never raises into training (not even under ``-W error``)."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
    except Exception:
        pass


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Under ``torch.compile``, run a hook eagerly (a graph break) instead of tracing it.

    Only when dynamo is loaded (a compiled model imported it): importing it costs seconds.
    """
    if "torch._dynamo" in sys.modules:
        # one disabled trampoline for every hook: wrapping each new hook costs ~20 µs
        global _disabled_call
        if _disabled_call is None:
            _disabled_call = torch.compiler.disable(_call)
        return functools.partial(_disabled_call, fn)
    return fn


_disabled_call: Callable[..., Any] | None = None


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


# -- the loss: the one temporary patch --------------------------------------------


def _make_patched_backward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def backward(*args: Any, **kwargs: Any) -> Any:
        tensors = args[0] if args else kwargs.get("tensors")
        me = threading.get_ident()
        listening = []
        for recorder in _recorders:
            if recorder.thread != me:
                continue
            try:
                if recorder.on_backward(tensors):
                    listening.append(recorder)
            except TraceWriteError:
                raise
            except Exception as exc:
                recorder.cannot_record("loss", "loss", exc)
        for recorder in listening:
            recorder.in_backward_pass = True
        try:
            result = original(*args, **kwargs)
        finally:
            for recorder in listening:
                recorder.in_backward_pass = False
        for recorder in listening:
            try:
                recorder.after_backward()
            except Exception as exc:
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
                torch.autograd.backward = _installed.__wrapped__  # type: ignore[attr-defined]
            _installed = None
            _unpatch_scaler()
            if _COMPILE_WARNING in warnings.filters:
                warnings.filters.remove(_COMPILE_WARNING)  # type: ignore[attr-defined]
                warnings._filters_mutated()  # type: ignore[attr-defined]


def _patch_scaler() -> None:
    """GradScaler skips ``optimizer.step()`` on inf/NaN gradients; see that it did."""
    global _scaler_original
    scaler = torch.amp.GradScaler
    _scaler_original = scaler.__dict__.get("_maybe_opt_step")
    if _scaler_original is not None:
        scaler._maybe_opt_step = _make_patched_opt_step(_scaler_original)  # type: ignore[method-assign]


def _unpatch_scaler() -> None:
    global _scaler_original
    if _scaler_original is not None:
        torch.amp.GradScaler._maybe_opt_step = _scaler_original  # type: ignore[method-assign]
    _scaler_original = None
