"""Who checks and prepares a trace directory when several processes trace into it.

In a distributed run every rank calls ``tracer.trace(model, opt, path=p)``. Rank 0 alone
checks the destination (when ``trace()`` is called) and prepares it (when the block is
entered: deleting an old trace's files with ``overwrite=True``, writing ``_tracer.json``);
the other ranks wait for its word through the process group's store, so that no rank sees
the metadata rank 0 has just written as "a trace already here", and rank 0 never deletes
files another rank has started writing. Ranks meet by counting their traces: trace on every
rank, or on rank 0 alone (which waits for nobody), for the whole run. A rank tracing into a
directory of its own (``path=f"traces/rank{rank}"``) prepares it itself. Without an
initialized process group, the process does both itself.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_WAIT_SECONDS = 300.0
_counters: dict[str, itertools.count[int]] = {}


def rank() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _store() -> Any:
    """The default process group's key-value store, or None outside a distributed run."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def _key(stage: str) -> str:
    """The same key on every rank for the n-th ``stage`` of this process (ranks meet by
    counting their traces, which is why every rank, or rank 0 alone, traces throughout)."""
    counter = _counters.setdefault(stage, itertools.count())
    return f"tracer/{stage}/{next(counter)}"


def on_rank_zero(stage: str, path: Path | None, work: Callable[[Path | None], str]) -> str:
    """Run ``work`` on rank 0 and hand its result (a string) to every rank tracing into the
    same directory.

    ``work`` raising on rank 0 raises the same error class and message on those ranks. A
    rank whose ``path`` differs from rank 0's (a directory per rank) does the work itself,
    as a process outside a distributed run does.
    """
    store = _store()
    if store is None:
        return work(path)
    key = _key(stage)
    mine = None if path is None else os.path.abspath(path)
    if rank() == 0:
        try:
            result = work(path)
        except BaseException as exc:
            store.set(key, json.dumps({"path": mine, "error": [type(exc).__name__, str(exc)]}))
            raise
        store.set(key, json.dumps({"path": mine, "result": result}))
        return result
    try:
        store.wait([key], _dt.timedelta(seconds=_WAIT_SECONDS))
    except RuntimeError as exc:  # the store's timeout
        raise RuntimeError(
            f"tracer on rank {rank()} waited {_WAIT_SECONDS:.0f} s for rank 0 to {stage} the trace "
            f"directory {str(path)!r}: call tracer.trace on rank 0 too (every rank, or rank 0 alone)"
        ) from exc
    word = json.loads(store.get(key).decode("utf-8"))
    if mine is not None and word["path"] != mine:
        return work(path)  # not rank 0's directory: nobody else writes here
    if "error" in word:
        name, text = word["error"]
        error = {"FileExistsError": FileExistsError, "NotADirectoryError": NotADirectoryError}.get(name, OSError)
        raise error(f"rank 0 could not {stage} the trace directory: {text}")
    return str(word["result"])
