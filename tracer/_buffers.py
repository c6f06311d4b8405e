"""Registered buffers (BatchNorm's ``running_mean``, ``running_var``, ``num_batches_tracked``)
as rows of kind ``buffer``, as each step leaves them.

:class:`BufferSteps` is a part of :class:`tracer._hooks.Recorder` (its base class). A buffer
is read from its module when the step ends (``module.<key>`` may have been replaced by a
new tensor), after the step's forward passes and ``optimizer.step()``; it is recorded as
it is, in its own dtype (``num_batches_tracked`` is ``int64``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tracer._selection import BufferInfo


class BufferSteps:
    """The ``buffer`` rows of a step; the attributes below are the Recorder's."""

    kinds: frozenset[str]
    buffers: list[BufferInfo]
    emit: Callable[..., None]
    cannot_record: Callable[[str, str, BaseException], None]

    def emit_buffers(self, step: int) -> None:
        """One row per selected buffer, its value now, at ``step``."""
        if "buffer" not in self.kinds:
            return
        with torch.no_grad():
            for info in self.buffers:
                try:
                    tensor = getattr(info.module, info.key, None)
                except Exception as exc:  # a module with a __getattr__ of its own
                    self.cannot_record("buffer", info.name, exc)
                    continue
                if isinstance(tensor, torch.Tensor):  # (a buffer registered as None has no value)
                    self.emit("buffer", info.name, 0, "", info.module_type, tensor, step=step)
