"""Steps of a loop without an optimizer (teaching code: ``w -= lr * w.grad`` under
``no_grad``): the parameters at the step's first backward pass, the gradients the last
backward pass left in ``.grad``, and the update (their change until the step ends).

:class:`PlainSteps` is a part of :class:`tracer._hooks.Recorder` (its base class).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tracer._tensors import Captured

if TYPE_CHECKING:
    from tracer._selection import ParamInfo


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


class PlainSteps:
    """The rows of steps without an optimizer; the attributes below are the Recorder's."""

    kinds: frozenset[str]
    params: dict[torch.Tensor, ParamInfo]
    optimizers: list[torch.optim.Optimizer]
    step: int
    _plain: _PlainStep | None

    if TYPE_CHECKING:

        @property
        def traced(self) -> bool: ...

    emit: Callable[..., None]
    cannot_record: Callable[[str, str, BaseException], None]
    _capture: Callable[[torch.Tensor], Any]
    _snapshot: Callable[[torch.Tensor], torch.Tensor]
    _emit_update: Callable[..., None]

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
                    except Exception as exc:
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
            except Exception as exc:
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
