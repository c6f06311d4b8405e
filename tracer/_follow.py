"""Following a trace while it is written: the steps an export has not written yet, as they finish.

A trace directory grows by whole files (each ``part-*.parquet`` is written under a hidden
name and renamed when complete) and ``_tracer.json`` says ``"complete": true`` when the
``tracer.trace`` block has ended. :func:`follow` polls the directory; when new data files
have appeared it reads the rows of the steps not exported yet (the step filter is pushed
into the Parquet reader, so old files cost a footer each) and yields the records of the
steps that are *finished*: those before the latest step every rank has reached (a step's
rows may still be arriving), and every step once the trace is complete. Each step is
yielded exactly once; the generator ends when the trace is complete.

>>> for batch in follow("traces/run1", histograms=False, poll=1.0):   # doctest: +SKIP
...     for step, scalars, hists in batch:
...         writer.add_scalar("loss", scalars["loss"], step)
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pandas as pd

from tracer._export_series import StepRecord, histogram_kinds, records
from tracer._trace import STAT_COLUMNS, Trace, TraceLike, TraceMeta

DEFAULT_POLL = 1.0
"""Seconds between two looks at the trace directory."""


def follow_path(trace: TraceLike) -> Path:
    """The directory to follow: a path, or the path of a ``run`` or of a Trace read from disk.

    Raises:
        ValueError: a DataFrame (or a Trace made from one): it does not grow.
    """
    if isinstance(trace, (str, os.PathLike)):
        return Path(trace)
    path = getattr(trace, "path", None)
    if isinstance(path, Path):
        return path
    raise ValueError(
        "follow=True needs a trace directory (a path, a run or a Trace opened from a path) that is "
        f"being written; got {type(trace).__name__}, which does not grow"
    )


def follow(
    trace: TraceLike,
    histograms: bool | Iterable[str] = True,
    *,
    poll: float = DEFAULT_POLL,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[StepRecord]]:
    """Batches of ``(step, scalars, histograms)`` records, in step order, as the trace grows.

    Waits for the directory to appear (the export may start before training does), and
    ends after the batch that holds the last step of a complete trace.

    Args:
        trace: the trace directory (or a ``run``) being written.
        histograms: as :func:`tracer.export.series`.
        poll: seconds between two looks at the directory (> 0).
        sleep: how to wait ``poll`` seconds (a test may pass its own).

    Raises:
        ValueError: ``poll`` is not a positive number, or ``trace`` is a DataFrame.
        TraceFormatError: the directory holds something that is not a trace.
    """
    if not isinstance(poll, (int, float)) or isinstance(poll, bool) or not poll > 0:
        raise ValueError(f"poll must be a positive number of seconds (got {poll!r})")
    path = follow_path(trace)
    kinds = histogram_kinds(histograms)
    columns = STAT_COLUMNS + (("values",) if kinds else ())
    next_step: int | None = None  # the first step not yielded yet
    seen: frozenset[Path] | None = None
    while True:
        state = _look(path)
        if state is not None:
            meta, files = state
            if files != seen or meta.complete:
                seen = files
                frame = _rows_from(path, next_step, columns)
                batch = _finished(Trace(path=None, frame=frame, meta=meta), kinds, bool(meta.complete))
                if batch:
                    next_step = batch[-1][0] + 1
                    yield batch
            if meta.complete:
                return
        sleep(poll)


def _look(path: Path) -> tuple[TraceMeta, frozenset[Path]] | None:
    """The metadata (read first: files listed after it include every file it counts) and the
    finished data files; None while there is no trace there yet."""
    from tracer._reader import data_files, read_meta
    from tracer._schema import META_FILE

    if not path.is_dir() or not ((path / META_FILE).is_file() or data_files(path)):
        return None
    meta = TraceMeta.parse(read_meta(path))
    return meta, frozenset(data_files(path))


def _rows_from(path: Path, step: int | None, columns: tuple[str, ...]) -> pd.DataFrame:
    """The rows of the steps from ``step`` on (all when None)."""
    from tracer._load import read_frame

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no rows past ``step`` yet is the usual case
        return read_frame(path, step=None if step is None else slice(step, None), columns=columns)


def _finished(trace: Trace, kinds: tuple[str, ...], complete: bool) -> list[StepRecord]:
    """The records of the finished steps: all of them when the trace is complete, else those
    before the latest step that every rank has reached."""
    stats = trace.stats
    if stats.empty:
        return []
    if complete:
        last = None
    else:
        last = int(stats.groupby("rank")["step"].max().min())  # still being written: not finished
    out = []
    for record in records(trace, kinds):
        if last is not None and record[0] >= last:
            break
        out.append(record)
    return out
