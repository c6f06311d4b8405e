"""``TraceCallback`` for the Hugging Face ``transformers.Trainer``: trace ``Trainer.train``.

>>> from tracer.integrations.transformers import TraceCallback                  # doctest: +SKIP
>>> trace = TraceCallback(path="traces/hf1")                                   # doctest: +SKIP
>>> Trainer(model=model, args=args, train_dataset=ds, callbacks=[trace]).train()  # doctest: +SKIP
>>> tracer.report(trace.path)                                                  # doctest: +SKIP

Needs ``pip install 'torch-tracer[transformers]'``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

import tracer
from tracer.integrations import (
    check_options,
    check_validation,
    log_metrics,
    require,
    validation_context,
)

__all__ = ["TraceCallback"]

_TrainerCallback = require("transformers", "transformers", "tracer.integrations.transformers").TrainerCallback


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer inside accelerate's ``AcceleratedOptimizer`` (and the like)."""
    seen = 0
    while hasattr(optimizer, "optimizer") and seen < 8:  # AcceleratedOptimizer, DeepSpeed/SMP wrappers
        optimizer = optimizer.optimizer
        seen += 1
    return optimizer


class TraceCallback(_TrainerCallback):  # type: ignore[misc,valid-type]
    """Trace a ``transformers.Trainer`` training run, as ``tracer.trace`` would.

    The trace opens at ``on_train_begin`` and closes at ``on_train_end``. ``step`` counts
    optimizer steps (``trainer.state.global_step``): with ``gradient_accumulation_steps=k``
    the k micro-batches of a step are ``call`` 0…k−1. ``grad`` rows are the gradients the
    optimizer consumed, after accumulation and ``max_grad_norm`` clipping. The hooks are on
    the ``torch.optim`` optimizer inside accelerate's wrapper. Evaluation run during
    training is recorded as forward-only rows (``grad_enabled`` is False; ``call`` counts
    from 0 in each evaluation) or skipped.

    What the Trainer logs (``on_log``: ``loss``, ``learning_rate``, ``grad_norm``,
    ``eval_loss``, ...) is recorded as ``metric`` rows, as ``run.log`` would: the training
    logs at the step just completed, evaluation logs at the step its forward rows are in;
    values that are not numbers are left out.

    The Trainer has no event for a failed ``train()``: if it raises, call ``close()`` (or
    use the callback as a context manager around ``train()``) so that the hooks come off
    and the trace is complete.

    Example::

        trace = TraceCallback(path="traces/hf1", max_values=0)
        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[trace])
        with trace:
            trainer.train()
        tracer.report(trace.path).to_frame()

    Args:
        path: the trace directory (default as ``tracer.trace``: ``traces/<Model>-<time>``).
        validation: ``"record"`` (default) or ``"skip"`` the evaluation batches run during training.
        **options: ``tracer.trace`` options (``capture``, ``max_values``, ``every``,
            ``include``, ``exclude``, ``overwrite``, ``flush_seconds``).

    Attributes:
        run: the ``tracer.Run`` of the last ``train()`` (None before one starts).
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, validation: str = "record", **options: Any
    ) -> None:
        super().__init__()
        self.validation = check_validation(validation)
        self.options = check_options(path, options)
        self.run: Any = None
        self._running = False
        self._outside: contextlib.AbstractContextManager[None] | None = None

    @property
    def path(self) -> Path | None:
        """The trace directory of the current or last run."""
        return None if self.run is None else self.run.path

    # -- Trainer events ------------------------------------------------------------------
    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if model is None:
            raise TypeError("TraceCallback needs the Trainer's model (got no `model` in on_train_begin)")
        inner = None if optimizer is None else _unwrap_optimizer(optimizer)
        run = tracer.trace(model, inner, **self.options)
        run.__enter__()
        self.run, self._running = run, True
        self._leave_step()  # until the first step begins: `eval_on_start` evaluates here

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._enter_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._leave_step()  # evaluation, logging and saving run between steps

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self._running and isinstance(logs, dict):
            log_metrics(self.run, logs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    # -- between steps -------------------------------------------------------------------
    def _leave_step(self) -> None:
        if self._running and self._outside is None:
            self._outside = validation_context(self.run, self.validation)
            self._outside.__enter__()

    def _enter_step(self) -> None:
        outside, self._outside = self._outside, None
        if outside is not None:
            outside.__exit__(None, None, None)

    # -- closing -------------------------------------------------------------------------
    def close(self, exception: BaseException | None = None) -> None:
        """End the trace (``on_train_end`` does it): remove every hook, write every row.

        Idempotent. ``exception``, when given, is the error that stopped training.
        """
        if not self._running:
            return
        self._running = False
        try:
            self._enter_step()
        finally:
            if exception is None:
                self.run.__exit__(None, None, None)
            else:
                self.run.__exit__(type(exception), exception, exception.__traceback__)

    def __enter__(self) -> TraceCallback:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(exc)
