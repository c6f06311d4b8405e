"""Merging a trace's small finished files into large ones, in the background, atomically.

The writer renames one small file into place per flush (rows readable within
``flush_seconds``, the crash guarantee); a long run would end as tens of thousands of
them, and reading time grows with the file count. A :class:`Compactor` merges them as they
accumulate, like an LSM tree: ``FANOUT`` files of one level whose index ranges are adjacent
become one file of the next level, named by the range it covers::

    part-00000-<session>-000016.parquet            level 0: file number 16
    part-00000-<session>-000000-000015.parquet     level 1: files 0..15, merged

Atomicity: the merged file is renamed into place *before* its sources are deleted, and a
reader (:func:`tracer._reader.data_files`) ignores every file whose range lies inside
another's: at every moment each row is read exactly once. The sources are deleted
``DELETE_AFTER_SECONDS`` later, so a reader that listed them just before the merge can
still read them; a slower one lists again (see :func:`tracer._reader.read_trace`). A crash
between the rename and the deletions leaves covered files that readers ignore and
``overwrite=True`` removes.

>>> Part.parse("part-00000-0a1b2c3d-000000-000015.parquet").last
15
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracer._schema import KINDS, SCHEMA, STRING_COLUMNS

FANOUT = 16
"""Files of one level merged into one of the next."""

MAX_MERGE_BYTES = 64 << 20
"""Files this large on disk (alone or together) are not merged again: their count is
already small for their size, and rewriting them would cost more than reading them."""

DELETE_AFTER_SECONDS = 2.0
"""How long a merged file's sources stay (ignored by readers) before they are deleted: a
reader that listed them just before the merge can still open them."""

_ROW_GROUP_ROWS = 64 << 10
_NAME = re.compile(r"part-(?P<rank>\d{5,})-(?P<session>[0-9a-f]{8})-(?P<first>\d{6,})(?:-(?P<last>\d{6,}))?\.parquet")
_STAT_COLUMNS = ["step", "seq", "kind", "name", "call", "rank"]


def _in_background() -> None:
    """This thread at a lower CPU priority (nice +10), on Linux, where a thread has a nice
    value of its own: on a busy machine the training's threads go first, and merging, which
    can wait, takes the time they leave."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere a thread's id is not a task id: never renice another process
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + 10, 19))


@dataclass(frozen=True)
class Part:
    """A data file's place: the writer (rank, session) and the range of file numbers it holds."""

    rank: str
    session: str
    first: int
    last: int

    @classmethod
    def parse(cls, name: str) -> Part | None:
        match = _NAME.fullmatch(name)
        if match is None:
            return None
        first = int(match["first"])
        last = int(match["last"]) if match["last"] is not None else first
        return cls(match["rank"], match["session"], first, last) if last >= first else None

    def covers(self, other: Part) -> bool:
        """Whether ``other`` is a different file of the same writer whose range lies in this one's."""
        return (
            (self.rank, self.session) == (other.rank, other.session)
            and self.first <= other.first
            and other.last <= self.last
            and (self.first, self.last) != (other.first, other.last)
        )

    def name(self) -> str:
        last = "" if self.first == self.last else f"-{self.last:06d}"
        return f"part-{self.rank}-{self.session}-{self.first:06d}{last}.parquet"


def uncovered(files: Sequence[Path]) -> list[Path]:
    """``files`` without those another file's range covers (merged, not yet deleted)."""
    parts = {file: Part.parse(file.name) for file in files}
    by_writer: dict[tuple[Path, str, str], list[Part]] = {}
    for file, part in parts.items():
        if part is not None and part.first != part.last:
            by_writer.setdefault((file.parent, part.rank, part.session), []).append(part)
    if not by_writer:
        return list(files)
    keep = []
    for file, part in parts.items():
        merged = by_writer.get((file.parent, part.rank, part.session), ()) if part is not None else ()
        if not any(m.covers(part) for m in merged if part is not None):
            keep.append(file)
    return keep


@dataclass
class _Entry:
    part: Part
    level: int
    nbytes: int  # on disk; 0 for a file number that produced no file
    exists: bool = True


class Compactor:
    """Merges a writer's finished files on its own thread (see the module docstring).

    ``done(index, name)`` is called by the writer for every file number, with None when
    that number produced no file (a failed write), so that ranges stay contiguous;
    ``on_merge(sources, merged)`` is told each merge (the writer keeps its ``files`` list).
    """

    def __init__(
        self,
        directory: Path,
        rank: int,
        session: str,
        *,
        compression: str = "zstd",
        on_merge: Callable[[list[str], str], None] = lambda sources, merged: None,
    ) -> None:
        self.directory = directory
        self._rank = f"{rank:05d}"
        self._session = session
        self._compression = compression
        self._on_merge = on_merge
        self._entries: dict[int, _Entry] = {}  # first file number -> its file
        self._cond = threading.Condition()
        self._closing = False
        self.error: BaseException | None = None
        self.merges = 0
        self._doomed: list[tuple[float, list[str]]] = []  # (when merged, sources to delete)
        self._thread = threading.Thread(target=self._run, name="tracer-compactor", daemon=True)
        self._thread.start()

    def done(self, index: int, name: str | None) -> None:
        nbytes = 0
        if name is not None:
            with contextlib.suppress(OSError):
                nbytes = (self.directory / name).stat().st_size
        with self._cond:
            self._entries[index] = _Entry(Part(self._rank, self._session, index, index), 0, nbytes, name is not None)
            self._cond.notify_all()

    def close(self, *, final_merge: bool = True) -> None:
        """Stop after the merges now due (and, with ``final_merge``, one of the level-0 leftovers)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if final_merge and self.error is None:
            run = self._leftovers()
            if run:
                self._merge(run)
        self._delete(math.inf)

    # -- the compactor's thread -------------------------------------------------------
    def _run(self) -> None:
        _in_background()
        while True:
            with self._cond:
                run = self._due()
                while run is None and not self._closing:
                    self._cond.wait(DELETE_AFTER_SECONDS if self._doomed else None)
                    self._delete(time.monotonic() - DELETE_AFTER_SECONDS)
                    run = self._due()
                if run is None:
                    return
            if not self._merge(run):
                return
            self._delete(time.monotonic() - DELETE_AFTER_SECONDS)

    def _delete(self, merged_before: float) -> None:
        """Delete the sources of the merges done before ``merged_before`` (time.monotonic)."""
        while self._doomed and self._doomed[0][0] <= merged_before:
            _, names = self._doomed.pop(0)
            for name in names:
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()

    def _due(self) -> list[_Entry] | None:
        """The first ``FANOUT`` adjacent files of one level, small enough to merge (lock held)."""
        ordered = [self._entries[k] for k in sorted(self._entries)]
        for level in sorted({e.level for e in ordered}):
            run: list[_Entry] = []
            for entry in ordered:
                if entry.level != level or entry.nbytes > MAX_MERGE_BYTES:
                    run = []
                    continue
                if run and entry.part.first != run[-1].part.last + 1:
                    run = []
                run.append(entry)
                if len(run) == FANOUT:
                    if sum(e.nbytes for e in run) <= MAX_MERGE_BYTES:
                        return run
                    run = run[1:]
        return None

    def _leftovers(self) -> list[_Entry] | None:
        """At close: the adjacent level-0 files at the end, when there are two or more."""
        ordered = [self._entries[k] for k in sorted(self._entries)]
        run: list[_Entry] = []
        for entry in reversed(ordered):
            if entry.level != 0 or entry.nbytes > MAX_MERGE_BYTES or (run and entry.part.last + 1 != run[0].part.first):
                break
            run.insert(0, entry)
        return run if sum(e.exists for e in run) >= 2 else None

    def _merge(self, run: list[_Entry]) -> bool:
        part = Part(self._rank, self._session, run[0].part.first, run[-1].part.last)
        sources = [e.part.name() for e in run if e.exists]
        tmp = self.directory / f".{part.name()[: -len('.parquet')]}.tmp"
        try:
            nbytes = self._write(sources, tmp)
            os.replace(tmp, self.directory / part.name())  # readers ignore the sources from here on
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.error = exc  # merging is an optimisation: stop merging, keep the small files
            return False
        self._on_merge(sources, part.name())
        self._doomed.append((time.monotonic(), sources))
        with self._cond:
            for entry in run:
                del self._entries[entry.part.first]
            self._entries[part.first] = _Entry(part, run[0].level + 1, nbytes)
        self.merges += 1
        return True

    def _write(self, sources: list[str], tmp: Path) -> int:
        """The sources' rows in one file, sorted by kind then name then training order, in
        row groups that never span two kinds (so filters on kind and name skip groups)."""
        # one thread: a background merge must not take the training's cores
        tables = [pq.read_table(self.directory / name, schema=SCHEMA, use_threads=False) for name in sources]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        order = pc.index_in(table["kind"], value_set=pa.array(KINDS))
        keyed = table.append_column("_kind_order", order)
        keyed = keyed.take(
            pc.sort_indices(
                keyed,
                sort_keys=[
                    ("_kind_order", "ascending"),
                    ("name", "ascending"),
                    ("step", "ascending"),
                    ("seq", "ascending"),
                ],
            )
        )
        table = keyed.drop_columns(["_kind_order"])
        bounds = _kind_bounds(table)
        with pq.ParquetWriter(
            tmp,
            SCHEMA,
            compression=self._compression,
            compression_level=1 if self._compression == "zstd" else None,
            use_dictionary=list(STRING_COLUMNS),
            use_byte_stream_split=["values.list.element"],
            write_statistics=_STAT_COLUMNS,
        ) as file:
            for start, stop in bounds:
                for at in range(start, stop, _ROW_GROUP_ROWS):
                    end = min(at + _ROW_GROUP_ROWS, stop)
                    file.write_table(table.slice(at, end - at), row_group_size=end - at)
        return tmp.stat().st_size


def _kind_bounds(table: pa.Table) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of one kind in a table sorted by kind."""
    if table.num_rows == 0:
        return []
    kinds = table["kind"].to_pylist()
    bounds = []
    start = 0
    for i in range(1, len(kinds)):
        if kinds[i] != kinds[i - 1]:
            bounds.append((start, i))
            start = i
    bounds.append((start, len(kinds)))
    return bounds
