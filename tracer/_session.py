"""``tracer.trace``: the context manager that owns the hooks, the step counter and the writer."""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tracer import _destination, _dispatch, _hooks
from tracer._directory import check_destination, prepare_directory, write_json_atomic
from tracer._errors import TraceWriteError, write_error
from tracer._metadata import trace_metadata
from tracer._ops import compiled
from tracer._options import (
    ALL,
    DEFAULT_MAX_VALUES,
    _check_optimizers,
    _default_path,
    _describe,
    _refuse_sharded,
    check_options,
    unwrap,
)
from tracer._run_controls import RunControls
from tracer._schema import META_FILE
from tracer._selection import buffer_infos, module_infos, param_infos, selected
from tracer._signals import SigtermGuard
from tracer._store import Writer
from tracer._surprises import warn_if_surprising

if TYPE_CHECKING:
    import pandas

_traced_modules: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def trace(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    capture: Iterable[str] | str = ALL,
    max_values: int | None = DEFAULT_MAX_VALUES,
    every: int = 1,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overwrite: bool = False,
    flush_seconds: float = 1.0,
    on_error: str = "raise",
    verify: bool = False,
    capture_ops: bool = False,
) -> Run:
    """Trace a training loop into a Parquet dataset at ``path``.

    Every argument is checked here, before the block starts.

    Example::

        with tracer.trace(model, optimizer, path="traces/run1") as run:
            for x, y in batches:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
        df = tracer.load(run.path, kind="grad")

    Args:
        model: the ``nn.Module`` to hook (a DDP- or ``torch.compile``-wrapped one too).
        optimizer: an optimizer, a list of them, or None to trace forward/backward only
            (an optimizer that steps the model's parameters in the block is adopted).
        path: the trace directory (default ``traces/<ModelClass>-<UTC time>``).
        capture: the kinds of rows to record, a subset of ``tracer.ALL``.
        max_values: tensors with at most this many elements keep their values;
            0 keeps statistics only, None keeps every value.
        every: trace steps 0, every, 2·every, ...
        include: glob pattern(s) on module/parameter names to trace (default: all).
        exclude: glob pattern(s) on module/parameter names not to trace.
        overwrite: replace a trace already at ``path`` (only files tracer wrote are deleted).
        flush_seconds: the longest time a row waits in memory before it is readable on disk.
        on_error: when the trace cannot be written (disk full, directory removed):
            ``"raise"`` a ``TraceWriteError`` at the next step boundary, or ``"warn"`` once
            and stop tracing while training goes on.
        verify: check every update against its optimizer's rule in the training process
            (columns ``rule_error`` and ``rule_matches``), whatever the tensor's size.
        capture_ops: also record the outputs of tensor operations called inside each
            module's forward (kind ``op``); off, with a warning, for a ``torch.compile``'d model.

    Raises:
        TypeError: ``model`` is not a module or ``optimizer`` not an optimizer.
        ValueError: an unknown kind in ``capture`` or an out-of-range number.
        FileExistsError: ``path`` holds a trace and ``overwrite`` is False.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (got {_describe(model)})")
    optimizers = _check_optimizers(optimizer)
    options = check_options(
        path=path, capture=capture, max_values=max_values, every=every, include=include,
        exclude=exclude, overwrite=overwrite, flush_seconds=flush_seconds, on_error=on_error,
        verify=verify, capture_ops=capture_ops,
    )  # fmt: skip
    root = unwrap(model)
    _refuse_sharded(root)
    if options["capture_ops"] and compiled(model):
        warnings.warn(
            "capture_ops=True records nothing for a torch.compile'd model (compiled code calls no "
            "Python per operation): trace the model before compiling it to record its operations",
            RuntimeWarning,
            stacklevel=2,
        )
        options["capture_ops"] = False
    run = Run(root, optimizers, **options)
    try:
        run._check_path()
    except BaseException:
        run._state = "failed"  # refused before the block: no "never entered" warning
        raise
    return run


class Run(RunControls):
    """A trace being recorded (inside the ``with`` block) or recorded (after it).

    Attributes:
        path: the trace directory.
        step: the current step (see README, "Steps").
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizers: list[torch.optim.Optimizer],
        *,
        path: Path | None,
        kinds: frozenset[str],
        max_values: int | None,
        every: int,
        include: list[str] | None,
        exclude: list[str],
        overwrite: bool,
        flush_seconds: float,
        on_error: str = "raise",
        verify: bool = False,
        capture_ops: bool = False,
    ) -> None:
        self._rank = _destination.rank()
        if path is None:  # every rank traces into the directory rank 0 names
            path = Path(_destination.on_rank_zero("name", None, lambda _: str(_default_path(model))))
        self.path = path
        self._on_error = on_error
        self._verify = verify
        self._capture_ops = capture_ops
        self._model = model
        self._optimizers = optimizers
        self._kinds = kinds
        self._max_values = max_values
        self._every = every
        self._include = include
        self._exclude = exclude
        self._overwrite = overwrite
        self._flush_seconds = flush_seconds
        self._recorder: _hooks.Recorder | None = None
        self._writer: Writer | None = None
        self._state = "new"
        self._final_step = 0
        self._writes_meta = False  # this process prepared the directory (see _prepare)
        self._sigterm = SigtermGuard(self._finalize_on_signal, self._resume_after_signal)

    def __repr__(self) -> str:
        return f"<tracer.Run {str(self.path)!r} step={self.step} {self._state}>"

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "new":
            warnings.warn(
                f"tracer.trace(..., path={str(self.path)!r}) was never entered, so nothing was "
                "recorded: use it as `with tracer.trace(model, optimizer) as run:`",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def step(self) -> int:
        """The current step (see README, "Steps")."""
        return self._recorder.current_step() if self._recorder is not None else self._final_step

    # -- context manager ---------------------------------------------------------
    def __enter__(self) -> Run:
        if self._state != "new":
            raise RuntimeError("a tracer.Run can be entered only once; call tracer.trace() again")
        if self._model in _traced_modules:
            self._state = "failed"
            raise RuntimeError(
                f"this {type(self._model).__name__} is already being traced; "
                "nested traces of one model are not supported: end the outer trace first"
            )
        self._state = "entering"
        try:
            _destination.on_rank_zero("prepare", self.path, lambda _: self._prepare())
        except OSError as exc:
            if isinstance(exc, (FileExistsError, NotADirectoryError)) or self._on_error == "raise":
                self._state = "failed"
                if isinstance(exc, FileExistsError):
                    raise
                raise write_error(self.path, exc) from exc
            self._state = "failed"
            warnings.warn(
                f"tracer could not start a trace in {str(self.path)!r} ({exc}); training goes on untraced",
                RuntimeWarning,
                stacklevel=2,
            )
            return self
        self._writer = Writer(self.path, rank=self._rank, flush_seconds=self._flush_seconds)
        try:
            self._recorder = _hooks.Recorder(
                self._writer,
                kinds=self._kinds,
                max_values=self._max_values,
                every=self._every,
                params=param_infos(self._model, self._optimizers, self._selected),
                modules=module_infos(
                    self._model, self._selected, every_module=self._capture_ops and "op" in self._kinds
                ),
                optimizers=self._optimizers,
                select=self._selected,
                on_error=self._on_error,
                verify=self._verify,
                capture_ops=self._capture_ops,
                buffers=buffer_infos(self._model, self._selected),
            )
            _traced_modules.add(self._model)
            self._state = "running"
            self._install()
            self._sigterm.install()
        except BaseException:
            self._uninstall()
            self._writer.close()
            self._recorder = None
            self._state = "failed"
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state != "running" or self._recorder is None or self._writer is None:
            return  # not entered, failed to start, or already left: nothing to undo
        recorder, writer = self._recorder, self._writer
        self._sigterm.restore()
        try:
            recorder.finish()
        finally:
            try:
                self._uninstall()
            finally:
                self._final_step = recorder.step
                writer.close()
                self._recorder = None
                self._state = "finished"
        error = writer.error
        if self._writes_meta and error is None:
            try:
                write_json_atomic(self.path / META_FILE, self._meta(complete=True, recorder=recorder))
            except OSError as exc:
                error = exc
        if error is not None and exc_type is None and self._on_error == "raise":
            raise write_error(self.path, error) from error
        said = recorder.stopped or (exc_type is not None and issubclass(exc_type, TraceWriteError))
        if error is not None and not said:  # (stopped or raised: the user was told already)
            lost = "" if exc_type is None else f" (while {exc_type.__name__} propagated)"
            _dispatch._warn(
                f"tracer could not finish the trace in {str(self.path)!r}{lost}: {error}; rows after "
                "the failure were not written",
                stacklevel=3,
            )
        elif exc_type is None:
            warn_if_surprising(self, recorder)

    # -- reading -----------------------------------------------------------------
    def flush(self) -> None:
        """Write every row recorded so far (inside the block; a no-op after it)."""
        if self._state == "running" and self._writer is not None:
            if self._recorder is not None:
                self._recorder.flush_metrics(wait=True)
                self._recorder.staging.seal()
            self._writer.flush()

    def load(self, **filters: Any) -> pandas.DataFrame:
        """``tracer.load(run.path, ...)``, flushing first when called inside the block."""
        from tracer._load import load

        self.flush()
        return load(self.path, **filters)

    def report(self, **options: Any) -> Any:
        """``tracer.report(run, ...)``."""
        from tracer._report import report

        self.flush()
        return report(self.path, **options)

    # -- internals ---------------------------------------------------------------
    def _check_path(self) -> None:
        def check() -> str:
            check_destination(self.path, overwrite=self._overwrite)
            return ""

        _destination.on_rank_zero("check", self.path, lambda _: check())

    def _prepare(self) -> str:
        """Rank 0's work at ``__enter__`` (or a rank's with a directory of its own): the
        directory made ready, the metadata written (and rewritten when the block ends)."""
        self._writes_meta = True
        prepare_directory(self.path, overwrite=self._overwrite)
        write_json_atomic(self.path / META_FILE, self._meta(complete=False, recorder=None))
        return ""

    def _finalize_on_signal(self) -> None:
        """SIGTERM: every buffered row and the metadata (complete) on disk, in case the
        process ends now."""
        recorder, writer = self._recorder, self._writer
        if self._state != "running" or recorder is None or writer is None:
            return
        try:
            recorder.staging.seal()  # the rows of the step in progress, staged so far
        except Exception:  # (the signal may have come inside tracer's own staging: those rows are lost)
            pass
        writer.flush()
        if self._writes_meta and writer.error is None:
            write_json_atomic(self.path / META_FILE, self._meta(complete=True, recorder=recorder))

    def _resume_after_signal(self) -> None:
        """The replaced SIGTERM handler returned: the block goes on, and so does the trace."""
        if self._state == "running" and self._writes_meta and self._writer is not None and self._writer.error is None:
            write_json_atomic(self.path / META_FILE, self._meta(complete=False, recorder=self._recorder))

    def _selected(self, name: str) -> bool:
        return selected(name, self._include, self._exclude)

    def _install(self) -> None:
        assert self._recorder is not None
        self._recorder.install()

    def _uninstall(self) -> None:
        recorder = self._recorder
        try:
            if recorder is not None:
                recorder.uninstall()
        finally:
            _traced_modules.discard(self._model)

    def _meta(self, *, complete: bool, recorder: _hooks.Recorder | None) -> dict[str, Any]:
        adopted = recorder.adopted if recorder is not None else [False] * len(self._optimizers)
        return trace_metadata(
            self._model,
            self._optimizers,
            adopted=adopted,
            complete=complete,
            steps=self.step if complete else None,
            files=self._writer.files if self._writer is not None and complete else [],
            options={
                "capture": sorted(self._kinds),
                "max_values": self._max_values,
                "every": self._every,
                "include": self._include,
                "exclude": self._exclude,
                "verify": self._verify,
                "capture_ops": self._capture_ops,
            },
        )
