"""Walking the nested structures modules take and return (tuples, lists, dicts,
namedtuples, dataclasses) to the tensors inside, each with its dotted ``part``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

_MAX_DEPTH = 16


def walk(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(part, tensor)`` for every tensor inside ``obj``; other leaves are skipped.

    Parts are dotted paths: list/tuple index, namedtuple field, dict key, dataclass field.

    >>> [p for p, _ in walk((torch.ones(1), (torch.ones(1), torch.ones(1))))]
    ['0', '1.0', '1.1']
    """
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
        return
    if depth >= _MAX_DEPTH:
        return
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        items: Any = zip(obj._fields, obj)
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif isinstance(obj, dict):
        items = obj.items()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    else:
        return
    for key, value in items:
        yield from walk(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)


def parts(obj: Any) -> Iterator[tuple[str, torch.Tensor]] | list[tuple[str, torch.Tensor]]:
    """:func:`walk` of ``obj``, at once for what modules usually take and return: one
    tensor, or a tuple of one tensor.

    >>> [p for p, _ in parts((torch.ones(1),))]
    ['0']
    """
    if isinstance(obj, torch.Tensor):
        return [("", obj)]
    if type(obj) is tuple and len(obj) == 1 and isinstance(obj[0], torch.Tensor):
        return [("0", obj[0])]
    return walk(obj)


def as_tensor(value: Any) -> Any:
    """Python scalars in optimizer state as 0-d tensors (int64 for ints, as replay needs);
    anything else as it is.

    >>> as_tensor(3).dtype, as_tensor(0.5).dtype
    (torch.int64, torch.float64)
    """
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64)
    if isinstance(value, (bool, int)):
        return torch.tensor(value)
    return value
