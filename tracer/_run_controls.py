"""What a ``Run`` offers inside its block besides reading: pausing, adding an optimizer,
logging metrics. :class:`RunControls` is a part of :class:`tracer._session.Run`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from tracer import _dispatch
from tracer._metrics import metric_values
from tracer._options import _describe

if TYPE_CHECKING:
    from tracer._hooks import Recorder


class RunControls:
    """The attributes below are the Run's."""

    _recorder: Recorder | None
    _state: str
    _kinds: frozenset[str]

    # -- while the block runs ------------------------------------------------------
    def pause(self) -> None:
        """Record nothing until :meth:`resume`; steps still count."""
        if self._recorder is not None:
            self._recorder.paused = True

    def resume(self) -> None:
        """Record again after :meth:`pause`."""
        if self._recorder is not None:
            self._recorder.paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with run.paused(): ...`` records nothing in the block (steps still count)."""
        was = self._recorder.paused if self._recorder is not None else False
        self.pause()
        try:
            yield
        finally:
            if not was:
                self.resume()

    def log(self, metrics: Mapping[str, Any] | None = None, /, **named: Any) -> None:
        """Record scalars of your own as rows of kind ``metric`` at the current step.

        ``run.log({"accuracy": 0.91})`` or ``run.log(accuracy=0.91, lr=lr)``: ``name`` is the
        key, ``values`` ``[value]`` (float64). A value is a number or a one-element tensor
        (a GPU one is read without waiting for the device). Logged after ``optimizer.step()``
        a metric belongs to the step that update ended; ``every`` does not thin metrics,
        ``run.pause()`` does, and without ``"metric"`` in ``capture`` nothing is recorded.

        Raises:
            TypeError, ValueError: a value that is not a scalar number, a name not a string.
            RuntimeError: outside the ``with tracer.trace(...)`` block.
        """
        items = metric_values(metrics, named)
        recorder = self._recorder
        if recorder is None:
            if self._state == "failed":
                return  # the trace could not start (on_error="warn"): training goes on
            raise RuntimeError("run.log() works inside the `with tracer.trace(...)` block")
        if "metric" not in self._kinds:
            key = ("metric", "capture")
            if key not in recorder._warned:
                recorder._warned.add(key)
                _dispatch._warn(f"run.log() records nothing: capture={sorted(self._kinds)} has no 'metric'", 3)
            return
        with torch._C.DisableTorchFunction():  # run.log's own operations are not the model's
            recorder.log_metrics(items)

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Trace ``optimizer`` too, from its next ``step()``: one made after the block started.

        An optimizer that steps the model's parameters is adopted on its own; ``watch`` is
        for one that holds none of them (or to name it before its first step).
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"watch() takes a torch.optim.Optimizer (got {_describe(optimizer)})")
        if self._recorder is None:
            raise RuntimeError("run.watch() works inside the `with tracer.trace(...)` block")
        self._recorder.watch(optimizer, adopted=False)
