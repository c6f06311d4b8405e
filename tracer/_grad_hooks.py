"""The recorder's tensor hooks: the gradient that reaches each module output in the
backward pass (kind ``activation_grad``).

A part of :class:`tracer._hooks.Recorder` (its base class), like ``OptimizerSteps``.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tracer._autograd import NoGrad, _alive
from tracer._dispatch import _eager
from tracer._selection import ModuleInfo

_PRUNE_HANDLES = 4096  # prune dead tensor-hook handles once this many more are held


class GradHooks:
    """Tensor hooks on module outputs; the attributes below are the Recorder's."""

    step: int
    stopped: bool
    paused: bool
    in_backward_pass: bool
    tensor_handles: list[Any]
    _prune_at: int
    _leaf_hooks: dict[int, tuple[Any, Any]]
    _backward_calls: int
    emit: Callable[..., None]
    if TYPE_CHECKING:

        @property
        def traced(self) -> bool: ...

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
        _ActivationGrad.run_eagerly()
        hook = _ActivationGrad(self, info.name, call, part, info.module_type, self.step)
        self.tensor_handles.append(t.register_hook(hook))
        if len(self.tensor_handles) >= self._prune_at:
            # a long stretch without a step (evaluation with gradients on): memory stays bounded
            self.prune_handles()

    def prune_handles(self) -> None:
        """Forget the handles of tensors that died (called as the model's next forward
        starts, when the last one's activations are gone, so that few handles live long
        enough to burden the garbage collector; and when many have gathered)."""
        if self.tensor_handles:
            self.tensor_handles = [h for h in self.tensor_handles if _alive(h)]
            self._prune_at = len(self.tensor_handles) + _PRUNE_HANDLES

    def _leaf_grad_hook(self, name: str, part: str, module_type: str) -> Callable[[torch.Tensor], None]:
        def grad_hook(grad: torch.Tensor) -> None:
            if not self.traced or not self.in_backward_pass:
                return
            with NoGrad():
                self.emit("activation_grad", name, max(self._backward_calls - 1, 0), part, module_type, grad)

        return grad_hook


class _ActivationGrad:
    """The hook that records the gradient reaching one module output: one object (a
    closure would be several, each more work for the garbage collector at every forward)."""

    __slots__ = ("recorder", "name", "call", "part", "module_type", "step")

    def __init__(self, recorder: GradHooks, name: str, call: int, part: str, module_type: str, step: int) -> None:
        self.recorder = recorder
        self.name = name
        self.call = call
        self.part = part
        self.module_type = module_type
        self.step = step

    @classmethod
    def run_eagerly(cls) -> None:
        """Under ``torch.compile`` the hooks run eagerly (see ``tracer._dispatch._eager``):
        once dynamo is loaded, the class's ``__call__`` is wrapped, once for every hook."""
        if "torch._dynamo" in sys.modules and not cls._disabled:
            cls.__call__ = torch.compiler.disable(cls._record)  # type: ignore[method-assign]
            cls._disabled = True

    _disabled = False

    def _record(self, grad: torch.Tensor) -> None:
        r = self.recorder
        if r.stopped or r.paused or not r.in_backward_pass:
            return  # torch.autograd.grad (a gradient penalty) is not the loss's backward
        with NoGrad():
            r.emit("activation_grad", self.name, self.call, self.part, self.module_type, grad, step=self.step)

    __call__ = _record
