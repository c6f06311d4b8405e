"""``TraceCallback`` for Lightning: trace ``Trainer.fit`` with one line.

>>> from tracer.integrations.lightning import TraceCallback          # doctest: +SKIP
>>> trace = TraceCallback(path="traces/fit1")                        # doctest: +SKIP
>>> lightning.Trainer(callbacks=[trace], max_steps=100).fit(module)  # doctest: +SKIP
>>> tracer.report(trace.path)                                        # doctest: +SKIP

Needs ``pip install 'torch-tracer[lightning]'``. Works with the ``lightning`` package
(``lightning.pytorch``) and, where that is not installed, with ``pytorch_lightning``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tracer
from tracer._dispatch import _warn
from tracer.integrations import (
    MissingExtraError,
    check_options,
    check_validation,
    log_metrics,
    require,
    validation_context,
)

__all__ = ["TraceCallback"]


def _callback_base() -> type:
    try:
        return require("lightning.pytorch", "lightning", "tracer.integrations.lightning").Callback
    except MissingExtraError as missing:
        try:
            return require("pytorch_lightning", "lightning", "tracer.integrations.lightning").Callback
        except MissingExtraError:
            raise missing from None


class TraceCallback(_callback_base()):  # type: ignore[misc]
    """Trace a Lightning ``Trainer.fit``: every training step, as ``tracer.trace`` would.

    The trace opens when training starts (after the sanity check) and closes when it ends
    or raises. ``step`` counts the optimizer steps of the first optimizer of
    ``configure_optimizers`` (``trainer.global_step`` in automatic optimization): with
    ``accumulate_grad_batches=k`` the k batches of a step are ``call`` 0…k−1. ``grad`` rows
    are the gradients the optimizer consumed, after accumulation and the trainer's gradient
    clipping. Validation batches run during training are either recorded as forward-only
    rows (``grad_enabled`` is False; their ``call`` counts from 0 in each validation run) or
    skipped.

    With several optimizers (manual optimization) the first one advances ``step``: step it
    last in ``training_step`` so that a batch's rows share one step. Lightning runs the
    training step inside ``optimizer.step(closure)``; tracer sees the gradients that closure
    makes (see "Real training loops" in the README).

    What the module logs with ``self.log`` (what Lightning hands its loggers, with or
    without a logger) is recorded as ``metric`` rows, as ``run.log`` would: a batch's
    ``on_step`` values at the end of that batch (the step it trained), ``on_epoch`` values
    when their validation run or epoch ends. Names are Lightning's (``acc_step`` and
    ``acc_epoch`` when both ``on_step`` and ``on_epoch`` are on).

    Example::

        trace = TraceCallback(path="traces/fit1", max_values=0, every=10)
        trainer = lightning.Trainer(max_epochs=3, callbacks=[trace])
        trainer.fit(model, train_loader, val_loader)
        tracer.report(trace.path).to_frame()

    Args:
        path: the trace directory (default as ``tracer.trace``: ``traces/<Model>-<time>``).
        validation: ``"record"`` (default) or ``"skip"`` the validation batches.
        **options: ``tracer.trace`` options (``capture``, ``max_values``, ``every``,
            ``include``, ``exclude``, ``overwrite``, ``flush_seconds``).

    Attributes:
        run: the ``tracer.Run`` of the last ``fit`` (None before one starts).
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, validation: str = "record", **options: Any
    ) -> None:
        super().__init__()
        self.validation = check_validation(validation)
        self.options = check_options(path, options)
        self.run: Any = None
        self._running = False
        self._validating: Any = None
        self._unreadable = False  # this Lightning keeps its logged metrics elsewhere (said once)

    @property
    def path(self) -> Path | None:
        """The trace directory of the current or last run."""
        return None if self.run is None else self.run.path

    # -- Lightning hooks -----------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(trainer.optimizers)
        run = tracer.trace(pl_module, optimizers or None, **self.options)
        run.__enter__()
        self.run, self._running = run, True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._record_logged(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._record_logged(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close(exception)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._running and self._validating is None:
            self._validating = validation_context(self.run, self.validation)
            self._validating.__enter__()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_validation()
        self._record_logged(trainer)

    def _record_logged(self, trainer: Any) -> None:
        """What Lightning hands its loggers now: a batch's ``on_step`` values at its end,
        ``on_epoch`` values when a validation run or an epoch ends."""
        if not self._running:
            return
        try:
            logged = trainer._logger_connector.metrics["log"]
        except Exception as exc:  # never into the trainer
            if not self._unreadable:
                self._unreadable = True
                _warn(f"tracer cannot read this Lightning's logged metrics ({exc!r}); no metric rows are recorded")
            return
        log_metrics(self.run, logged)

    # -- closing -------------------------------------------------------------------------
    def _end_validation(self) -> None:
        validating, self._validating = self._validating, None
        if validating is not None:
            validating.__exit__(None, None, None)

    def close(self, exception: BaseException | None = None) -> None:
        """End the trace (training's end does it): remove every hook, write every row.

        Idempotent. ``exception``, when given, is the error that stopped training.
        """
        if not self._running:
            return
        self._running = False
        try:
            self._end_validation()
        finally:
            if exception is None:
                self.run.__exit__(None, None, None)
            else:
                self.run.__exit__(type(exception), exception, exception.__traceback__)
