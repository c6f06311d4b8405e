"""The trace directory: which files are tracer's, checking and preparing a destination,
and writing the metadata atomically (the data files: :mod:`tracer._store`; reading:
:mod:`tracer._reader`).

Layout of a trace directory::

    _tracer.json                               metadata (never ends in .parquet)
    part-<rank>-<session>-<index>.parquet      finished data files, one per flush
    part-<rank>-<session>-<first>-<last>.parquet   files first..last merged (tracer._compact)
    .part-<rank>-<session>-<index>[-<last>].tmp    a file being written (renamed when complete)
    ._tracer.json.<8 hex>.tmp                  metadata being written (renamed when complete)

``<rank>`` is 5 digits or more, ``<session>`` 8 hex digits, ``<index>`` 6 digits or more.
A data file is tracer's own when its name has this form and its footer carries
``tracer.schema_version`` (or ``_tracer.json`` lists it under ``"files"``); tracer deletes
no other file, and refuses a directory that holds other Parquet files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tracer._reader import data_files
from tracer._schema import META_FILE

_DATA_NAME = re.compile(r"part-\d{5,}-[0-9a-f]{8}-\d{6,}(-\d{6,})?\.parquet")
_DATA_TMP_NAME = re.compile(r"\.part-\d{5,}-[0-9a-f]{8}-\d{6,}(-\d{6,})?\.tmp")
_META_TMP_NAME = re.compile(re.escape(f".{META_FILE}.") + r"[0-9a-f]{8}\.tmp")
_VERSION_KEY = b"tracer.schema_version"  # in every data file's footer (see SCHEMA)


def is_trace(path: Path) -> bool:
    """True when ``path`` is a directory that holds a tracer trace (metadata or tracer's data files)."""
    if not path.is_dir():
        return False
    if (path / META_FILE).is_file():
        return True
    listed = _listed_files(path)
    return any(_is_own_data_file(file, listed) for file in path.iterdir())


def check_destination(path: Path, *, overwrite: bool) -> None:
    """Refuse, before anything is written, a path that cannot take a new trace.

    Raises FileExistsError when ``path`` is a file, holds Parquet files tracer did not
    write (whatever ``overwrite``: ``tracer.load`` would read them), or holds a trace and
    ``overwrite`` is False.
    """
    _own_files_to_replace(path, overwrite=overwrite)


def prepare_directory(path: Path, *, overwrite: bool) -> None:
    """Make ``path`` ready for a new trace by every rank: refused as by :func:`check_destination`,
    then (``overwrite``) the old trace's own files of every rank deleted, no other file."""
    own = _own_files_to_replace(path, overwrite=overwrite)
    own.sort(key=lambda file: file.name == META_FILE)  # the metadata last: it lists the files
    for file in own:
        file.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)


def _own_files_to_replace(path: Path, *, overwrite: bool) -> list[Path]:
    """The files of the trace at ``path`` (every rank's), or FileExistsError (see check_destination)."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"trace path {str(path)!r} is a file; pass a directory path")
    if not path.is_dir():
        return []
    listed = _listed_files(path)
    own = [file for file in path.iterdir() if _is_own_file(file, listed)]
    own_set = set(own)
    foreign = [file for file in data_files(path) if file not in own_set]
    if foreign:
        raise _holds_foreign_parquet(path, foreign)
    if own and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} already holds a trace; pass overwrite=True to replace it or choose another path"
        )
    return own


def _holds_foreign_parquet(path: Path, foreign: list[Path]) -> FileExistsError:
    names = sorted(str(file.relative_to(path)) for file in foreign)
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return FileExistsError(
        f"{str(path)!r} holds Parquet files that tracer did not write ({shown}); choose an empty "
        "or new directory (overwrite=True deletes only tracer's own files)"
    )


def _is_own_file(file: Path, listed: set[str]) -> bool:
    """True for a file tracer wrote into a trace directory (see the module docstring)."""
    name = file.name
    if name == META_FILE or _DATA_TMP_NAME.fullmatch(name) or _META_TMP_NAME.fullmatch(name):
        return file.is_file()
    return _is_own_data_file(file, listed)


def _is_own_data_file(file: Path, listed: set[str]) -> bool:
    if not _DATA_NAME.fullmatch(file.name) or not file.is_file():
        return False
    return file.name in listed or has_tracer_footer(file)


def has_tracer_footer(file: Path) -> bool:
    """Whether ``file`` is a Parquet file whose footer carries tracer's schema version."""
    try:
        metadata = pq.read_schema(file).metadata or {}
    except (OSError, pa.ArrowException, UnicodeDecodeError):
        return False  # unreadable: only the metadata's list can vouch for it
    return _VERSION_KEY in metadata


def _listed_files(path: Path) -> set[str]:
    """The data file names ``_tracer.json`` lists under ``"files"`` (none when it cannot be read)."""
    try:
        files = json.loads((path / META_FILE).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in files if isinstance(name, str)} if isinstance(files, list) else set()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` as JSON in one rename: readers see the old file or the new one.

    On failure (a full disk) the temporary file is removed and the OSError re-raised.
    """
    text = json.dumps(data, indent=2, sort_keys=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
