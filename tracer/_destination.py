"""Who checks and prepares a trace directory when several processes trace into it.

In a distributed run every rank calls ``tracer.trace(model, opt, path=p)``. Rank 0 alone
checks the destination (when ``trace()`` is called) and prepares it (when the block is
entered: deleting an old trace's files with ``overwrite=True``, writing ``_tracer.json``);
the other ranks wait for its word through the process group's store, so that no rank sees
the metadata rank 0 has just written as "a trace already here", and rank 0 never deletes
files another rank has started writing. A rank that traces alone (``if rank == 0:``) waits
for nobody. Without an initialized process group, the process does both itself.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
from pathlib import Path
from typing import Any, Callable

import torch

_WAIT_SECONDS = 300.0
_counters: dict[str, "itertools.count[int]"] = {}


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


def _key(stage: str, path: Path | None) -> str:
    """The same key on every rank for the n-th ``stage`` of the same path."""
    where = "<default>" if path is None else os.path.abspath(path)
    name = f"{stage}:{where}"
    counter = _counters.setdefault(name, itertools.count())
    return f"tracer/{name}/{next(counter)}"


def on_rank_zero(stage: str, path: Path | None, work: Callable[[], str]) -> str:
    """Run ``work`` on rank 0 and hand its result (a string) to every rank.

    ``work`` raising on rank 0 raises the same error class and message on every rank.
    Outside a distributed run, ``work()`` runs here.
    """
    store = _store()
    if store is None:
        return work()
    key = _key(stage, path)
    if rank() == 0:
        try:
            result = work()
        except BaseException as exc:
            store.set(key, f"E{type(exc).__name__}\n{exc}")
            raise
        store.set(key, "O" + result)
        return result
    try:
        store.wait([key], _dt.timedelta(seconds=_WAIT_SECONDS))
    except RuntimeError as exc:  # the store's timeout
        raise RuntimeError(
            f"tracer on rank {rank()} waited {_WAIT_SECONDS:.0f} s for rank 0 to {stage} the trace "
            f"directory {str(path)!r}: call tracer.trace with the same path on rank 0 too "
            "(every rank, or rank 0 alone)"
        ) from exc
    message = store.get(key).decode("utf-8")
    if message.startswith("O"):
        return message[1:]
    name, _, text = message[1:].partition("\n")
    error = {"FileExistsError": FileExistsError, "NotADirectoryError": NotADirectoryError}.get(name, OSError)
    raise error(f"rank 0 could not {stage} the trace directory: {text}")
