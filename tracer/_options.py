"""``tracer.trace``'s arguments checked before the block starts, and the model looked through.

>>> check_options(capture="grad", every=2)["kinds"]
frozenset({'grad'})
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tracer._schema import KINDS

ALL: frozenset[str] = frozenset(KINDS)
"""Every kind of row; the default of ``capture``."""

DEFAULT_MAX_VALUES = 1024
"""Tensors with at most this many elements keep their values (see README, "max_values")."""


def check_options(
    *,
    path: Any = None,
    capture: Any = ALL,
    max_values: Any = DEFAULT_MAX_VALUES,
    every: Any = 1,
    include: Any = None,
    exclude: Any = None,
    overwrite: Any = False,
    flush_seconds: Any = 1.0,
    on_error: Any = "raise",
    verify: Any = False,
    capture_ops: Any = False,
) -> dict[str, Any]:
    """``tracer.trace``'s keyword arguments checked, as ``Run`` takes them (no model needed)."""
    kinds = _check_capture(capture)
    if max_values is not None and (not _is_int(max_values) or max_values < 0):
        raise ValueError(f"max_values must be an int >= 0 or None (got {max_values!r})")
    if not _is_int(every) or every < 1:
        raise ValueError(f"every must be an int >= 1 (got {every!r})")
    include_patterns = _check_patterns("include", include)
    exclude_patterns = _check_patterns("exclude", exclude)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False (got {overwrite!r})")
    if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) or not flush_seconds > 0:
        raise ValueError(f"flush_seconds must be a number > 0 (got {flush_seconds!r})")
    for flag, value in (("verify", verify), ("capture_ops", capture_ops)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False (got {value!r})")
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn' (got {on_error!r})")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike (got {_describe(path)})")
    return dict(
        path=None if path is None else Path(path), kinds=kinds, max_values=max_values, every=every,
        include=include_patterns, exclude=exclude_patterns, overwrite=overwrite,
        flush_seconds=float(flush_seconds), on_error=on_error, verify=verify, capture_ops=capture_ops,
    )  # fmt: skip


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose names users know: DDP/DataParallel and ``torch.compile`` removed."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, torch.nn.Module):
            model = inner
            continue
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
            continue
        return model


def _refuse_sharded(model: torch.nn.Module) -> None:
    """FSDP1 shards flattened parameters: refuse it (FSDP2's DTensors are recorded shard by shard)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:  # a sharded model has imported it already; importing it here is costly
        return
    FullyShardedDataParallel = getattr(fsdp, "FullyShardedDataParallel", ())
    for name, module in model.named_modules():
        if isinstance(module, FullyShardedDataParallel):
            where = f"module {name!r}" if name else "the model"
            raise NotImplementedError(
                f"{where} is wrapped by FullyShardedDataParallel (FSDP1), which tracer does not support: "
                "its parameters are slices of one flattened parameter per rank, so their values would be "
                "partial. Shard with FSDP2 instead (torch.distributed.fsdp.fully_shard(module)): tracer "
                "records each rank's shard and tracer.load(path, assemble=True) returns the whole tensors."
            )


def _default_path(model: torch.nn.Module) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = Path("traces") / f"{type(model).__name__}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _describe(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    items = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    for item in items:
        if not isinstance(item, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, a list of them, or None (got {_describe(item)})"
            )
    return items


def _check_capture(capture: Any) -> frozenset[str]:
    if isinstance(capture, str):
        capture = [capture]
    try:
        kinds = frozenset(capture)
    except TypeError:
        raise TypeError(f"capture must be an iterable of kinds (got {_describe(capture)})") from None
    unknown = sorted(str(k) for k in kinds - ALL)
    if unknown:
        raise ValueError(f"unknown capture kind(s) {unknown}; valid kinds are {list(KINDS)}")
    return kinds


def _check_patterns(arg: str, patterns: Any) -> list[str] | None:
    if patterns is None:
        return None if arg == "include" else []
    if isinstance(patterns, str):
        return [patterns]
    items = list(patterns) if isinstance(patterns, Iterable) else None
    if items is None or not all(isinstance(p, str) for p in items):
        raise TypeError(f"{arg} must be a glob pattern or a list of them (got {patterns!r})")
    return items
