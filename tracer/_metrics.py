"""``run.log``: the user's own scalars as rows of kind ``metric`` (``values`` ``[value]``,
shape ``[]``, dtype ``float64``).

>>> [(name, float(value)) for name, value in metric_values({"accuracy": 0.91}, {"lr": 0.1})]
[('accuracy', 0.91), ('lr', 0.1)]

The step of a metric is the step whose work ran last: logged after ``optimizer.step()``
(and before the next forward) it belongs to the step that update closed, as the loss of
the batch just trained; logged before or between a step's passes, to that step.

A tensor on a GPU is read without waiting for the device: it is copied to pinned memory
asynchronously, and its row is written once the copy has finished (the next ``run.log``,
step boundary or ``run.flush()`` that finds it done; the block's end waits for it).

:class:`MetricSteps` is a part of :class:`tracer._hooks.Recorder` (its base class).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from tracer._tensors import Captured, adopt


def metric_values(metrics: Any, named: dict[str, Any]) -> list[tuple[str, float | torch.Tensor]]:
    """``run.log``'s arguments checked: ``(name, value)`` pairs, a value a float or a
    one-element tensor (not read yet: reading a GPU tensor would wait for the device).

    Raises:
        TypeError: not a dict, a name not a string, a value not a number or tensor.
        ValueError: no metric, an empty name, one name twice, a tensor of several elements.
    """
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(f"run.log() takes a dict of name -> number, or name=number keywords (got {_describe(metrics)})")
    items = list((metrics or {}).items())
    twice = sorted(set(metrics or {}) & set(named))
    if twice:
        raise ValueError(f"run.log() got {twice} both in the dict and as keywords: give each metric once")
    items.extend(named.items())
    if not items:
        raise ValueError("run.log() needs at least one metric: run.log({'accuracy': 0.91}) or run.log(accuracy=0.91)")
    return [(_check_name(name), scalar(name, value)) for name, value in items]


def scalar(name: str, value: Any) -> float | torch.Tensor:
    """``value`` as a float, or as a detached one-element tensor; a clear error otherwise."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"run.log() records scalars: {name!r} is a tensor of shape {list(value.shape)} "
                "(log a reduction of it, e.g. t.mean(), or a one-element tensor)"
            )
        if value.is_complex():
            raise TypeError(f"run.log() records real numbers: {name!r} is a complex tensor")
        return value.detach()
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return float(value.reshape(()))
    if isinstance(value, numbers.Real):  # int, float, bool, NumPy's scalars
        return float(value)
    raise TypeError(
        f"run.log() records numbers: {name!r} is {_describe(value)} {value!r:.40}; "
        "pass an int, a float or a one-element tensor"
    )


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"run.log() metric names must be strings (got {_describe(name)} {name!r:.40})")
    if not name:
        raise ValueError("run.log() metric names must not be empty")
    return name


def _describe(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


class _Pending:
    """A metric whose GPU value is on its way to pinned CPU memory."""

    __slots__ = ("step", "name", "call", "host", "event")

    def __init__(self, step: int, name: str, call: int, host: torch.Tensor, event: Any) -> None:
        self.step, self.name, self.call, self.host, self.event = step, name, call, host, event


class MetricSteps:
    """``run.log``'s rows; the attributes below are the Recorder's."""

    kinds: frozenset[str]
    stopped: bool
    paused: bool
    step_closed: bool  # the last step ended and nothing of the next one has run yet
    emit: Callable[..., None]
    cannot_record: Callable[[str, str, BaseException], None]
    current_step: Callable[[], int]
    _metric_calls: dict[str, tuple[int, int]]  # name -> (step, calls of it in that step)
    _pending_metrics: list[_Pending]

    def metric_step(self) -> int:
        """The step a metric logged now belongs to (see the module docstring)."""
        step = self.current_step()
        return step - 1 if self.step_closed and step > 0 else step

    def log_metrics(self, items: list[tuple[str, float | torch.Tensor]], *, honour_pause: bool = True) -> int:
        """Record ``items`` (from :func:`metric_values`); the number of rows made or on their way."""
        if self.stopped or (self.paused and honour_pause) or "metric" not in self.kinds:
            return 0
        self.flush_metrics()
        step = self.metric_step()
        for name, value in items:
            was = self._metric_calls.get(name)
            call = was[1] + 1 if was is not None and was[0] == step else 0
            self._metric_calls[name] = (step, call)
            try:
                self._record_metric(step, name, call, value)
            except Exception as exc:
                self.cannot_record("metric", name, exc)
        return len(items)

    def _record_metric(self, step: int, name: str, call: int, value: float | torch.Tensor) -> None:
        if isinstance(value, float):
            self._emit_metric(step, name, call, torch.tensor([value], dtype=torch.float64))
            return
        with torch.no_grad():
            if value.device.type == "cuda":
                host = torch.empty(1, dtype=torch.float64, pin_memory=True)
                host.copy_(value.reshape(1).to(torch.float64), non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._pending_metrics.append(_Pending(step, name, call, host, event))
                return
            self._emit_metric(step, name, call, value.reshape(1).to("cpu", torch.float64, copy=True))

    def _emit_metric(self, step: int, name: str, call: int, values: torch.Tensor) -> None:
        cap: Captured = adopt(values, ())
        self.emit("metric", name, call, "", None, cap, step=step)

    def flush_metrics(self, *, wait: bool = False) -> None:
        """Write the rows of GPU metrics whose copy has finished (``wait``: all of them)."""
        if not self._pending_metrics:
            return
        left = []
        for pending in self._pending_metrics:
            try:
                if wait:
                    pending.event.synchronize()
                elif not pending.event.query():
                    left.append(pending)
                    continue
                self._emit_metric(pending.step, pending.name, pending.call, pending.host)
            except Exception as exc:
                self.cannot_record("metric", pending.name, exc)
        self._pending_metrics = left
