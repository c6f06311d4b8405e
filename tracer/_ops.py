"""``capture_ops=True``: the outputs of the tensor operations called inside each traced
module's forward (``torch.relu(x)``, ``x.flatten(1)``, ``a + b``), as rows of kind ``op``.

A ``torch.overrides.TorchFunctionMode`` sees every call of a torch function. It is on the
mode stack only while a traced module's forward runs (pushed by the forward pre-hook of
the outermost one, removed by the forward hook, which torch runs even when ``forward``
raises) and only in the training thread. An operation belongs to the innermost module in
its forward: ``name`` is that module's path, ``call`` its call index, and ``part`` the
operation's name and its index among the operations of that name in that call
(``"relu.0"``, ``"add.1"``; ``a + b`` is ``add``, the in-place ``x.add_(y)`` is ``add_``;
an operation returning several tensors adds their place: ``"max.0.1"``).

The mode calls the operation exactly as it was called and returns its result untouched;
recording happens afterwards, with every torch function mode and subclass off (the user's
own modes never see tracer's work) and never raises. Inside a region ``torch.compile``
traces, the mode only calls the operation (nothing is recorded there; see
:func:`compiled`).

>>> _op_name(torch.Tensor.__add__), _op_name(torch.relu), _op_name(torch.Tensor.add_)
('add', 'relu', 'add_')
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from tracer._walk import walk

if TYPE_CHECKING:
    from tracer._hooks import Recorder
    from tracer._selection import ModuleInfo

_stack_len = torch._C._len_torch_function_stack
_pop = torch._C._pop_torch_function_stack
_push = torch._C._push_on_torch_function_stack


class _Frame:
    """One traced forward in flight: its module, call index and operation counts."""

    __slots__ = ("info", "call", "counts")

    def __init__(self, info: ModuleInfo, call: int) -> None:
        self.info = info
        self.call = call
        self.counts: dict[str, int] = {}


class OpCapture(TorchFunctionMode):
    """The recorder's mode: records op outputs for the innermost traced forward in flight
    (tracer's own hook code runs with torch functions' overrides off: this mode never sees it)."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.frames: list[tuple[ModuleInfo, _Frame | None]] = []  # None: its operations are not recorded
        self.on_stack = False
        self.thread = threading.get_ident()

    # -- the forward hooks' side ----------------------------------------------------------
    def enter(self, info: ModuleInfo, call: int | None) -> None:
        """A forward starts (``call`` None: not traced, e.g. excluded or not a traced step)."""
        if threading.get_ident() != self.thread:
            return
        if info.is_root and any(held.is_root for held, _ in self.frames):
            self.frames.clear()  # left by a forward that a KeyboardInterrupt cut short
        self.frames.append((info, None if call is None else _Frame(info, call)))
        if not self.on_stack:
            _push(self)
            self.on_stack = True

    def leave(self) -> None:
        """The forward that :meth:`enter` saw last has returned or raised."""
        if threading.get_ident() != self.thread:
            return
        if self.frames:
            self.frames.pop()
        if not self.frames:
            self._remove()

    def close(self) -> None:
        """The block ends: off the stack, whatever is still in flight."""
        self.frames.clear()
        if threading.get_ident() == self.thread:
            self._remove()

    def _remove(self) -> None:
        """Take this mode off the stack; modes the user pushed above it (inside a forward,
        not exited before it returned) stay, in their order."""
        if not self.on_stack:
            return
        self.on_stack = False
        above = []
        while _stack_len():
            mode = _pop()
            if mode is self:
                break
            above.append(mode)
        for mode in reversed(above):
            _push(mode)

    # -- every torch function call ----------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if kwargs is None:
            kwargs = {}
        if torch.compiler.is_compiling():
            return func(*args, **kwargs)  # a compiled region: traced as it is, not recorded
        out = func(*args, **kwargs)
        frame = self.frames[-1][1] if self.frames else None
        if frame is not None and self.recorder.traced:
            try:
                self._record(func, frame, out)
            except Exception as exc:
                self.recorder.cannot_record("op", frame.info.name, exc)
        return out

    def _record(self, func: Any, frame: _Frame, out: Any) -> None:
        grad_enabled = torch.is_grad_enabled()
        with torch._C.DisableTorchFunction(), torch.no_grad():
            tensors = list(walk(out))
            if not tensors:
                return  # x.size(), x.dim(), ...: no tensor, no row
            name = _op_name(func)
            index = frame.counts.get(name, 0)
            frame.counts[name] = index + 1
            info = frame.info
            for part, t in tensors:
                where = f"{name}.{index}.{part}" if part else f"{name}.{index}"
                self.recorder.emit("op", info.name, frame.call, where, info.module_type, t, grad_enabled=grad_enabled)


class _NoOps:
    """The recorder's ``ops`` without ``capture_ops``: the hooks call it unconditionally."""

    def enter(self, info: ModuleInfo, call: int | None) -> None:
        pass

    def leave(self) -> None:
        pass

    def close(self) -> None:
        pass


NO_OPS: Any = _NoOps()


def _op_name(func: Any) -> str:
    """``relu`` for ``torch.relu`` and ``Tensor.relu``; ``add`` for ``Tensor.__add__``; the
    attribute's name for a property (``Tensor.T``)."""
    name = getattr(func, "__name__", None)
    if name == "__get__":  # a property's getter: its descriptor knows the name
        name = getattr(getattr(func, "__self__", None), "__name__", None)
    if not isinstance(name, str) or not name:
        return type(func).__name__
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        return name[2:-2]
    return name


def compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` (as given to ``tracer.trace``) or one of its modules is compiled
    by ``torch.compile``: ``capture_ops`` is then off (see README, "capture_ops")."""
    seen = 0
    while seen < 8:
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            return True
        inner = getattr(model, "module", None)  # DDP, DataParallel
        if not isinstance(inner, torch.nn.Module):
            break
        model, seen = inner, seen + 1
    return any(
        getattr(m, "_compiled_call_impl", None) is not None
        or isinstance(getattr(m, "_orig_mod", None), torch.nn.Module)
        for m in model.modules()
    )
