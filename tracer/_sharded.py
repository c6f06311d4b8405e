"""A sharded tensor (``DTensor``: FSDP2, tensor parallelism) as the rank's local shard plus
where that shard sits in the global tensor — the ``global_shape``, ``shard_offset`` and
``placements`` columns of a row.

Everything here is read from the DTensor's own metadata and the rank's mesh coordinate:
no collective, no device sync (the local tensor is handed back as it is; copying it is
the caller's read). FSDP2 keeps each shard in padded storage but its DTensor's local
tensor is already narrowed to the real elements, so padding is never recorded.

    >>> s = shard_of(param)  # doctest: +SKIP
    >>> s.global_shape, s.shard_offset, s.placements  # doctest: +SKIP
    ((5, 3), (3, 0), 'Shard(dim=0)')
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NamedTuple

import torch

from tracer._tensors import Unreadable

# module-path segments that wrappers insert between a model's own names (FSDP1, activation
# checkpointing, torch.compile); FSDP2 changes no names
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


class Sharding(NamedTuple):
    """The local shard of a DTensor and where it sits in the global tensor.

    ``local`` is a plain tensor holding only the rank's real elements (its shape is the
    row's ``shape``); ``shard_offset`` is the shard's first index in the global tensor per
    dimension (all 0 for a replicated or partial tensor; for an empty shard torch's
    convention, the size of the sharded dimension); None where the shard is not one block
    of the global tensor (``_StridedShard``); ``placements`` one placement per mesh
    dimension, e.g. ``"Shard(dim=0)"`` or ``"Shard(dim=0), Replicate()"``.
    """

    local: torch.Tensor
    global_shape: tuple[int, ...]
    shard_offset: tuple[int, ...] | None
    placements: str


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (False without importing torch.distributed)."""
    module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(module, "DTensor", None) if module is not None else None
    return dtensor is not None and isinstance(tensor, dtensor)


def local_of(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor, never DTensor arithmetic: its ops may
    be collectives only this rank would run), else ``tensor`` itself.

        >>> local_of(torch.zeros(3)).shape
        torch.Size([3])
    """
    sharding = shard_of(tensor)
    return tensor if sharding is None else sharding.local


def shard_of(tensor: Any) -> Sharding | None:
    """The :class:`Sharding` of a DTensor, or None for any other tensor.

    Raises :class:`tracer._tensors.Unreadable` when the local tensor is not the shard its
    placements describe (a shape neither equal to it nor a padded version of it).

        >>> shard_of(torch.zeros(3)) is None
        True
    """
    if not is_dtensor(tensor):
        return None
    spec = tensor._spec
    global_shape = tuple(int(n) for n in tensor.shape)
    placements = tuple(spec.placements)
    text = ", ".join(repr(p) for p in placements)
    local = tensor._local_tensor  # not to_local(): with grad enabled that is an autograd op
    local = waited(local)
    if any(_is_strided(p) for p in placements):
        return Sharding(local, global_shape, None, text)
    local_shape, offset = _layout(global_shape, spec.mesh, placements)
    if tuple(local.shape) != local_shape:
        local = _unpadded(local, local_shape, text, global_shape)
    return Sharding(local, global_shape, offset, text)


def original_name(name: str) -> str:
    """A parameter or module name without the segments wrappers insert.

    >>> original_name("_fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.weight")
    'layers.0.weight'
    """
    if not any(segment in name for segment in _WRAPPER_SEGMENTS):
        return name
    return ".".join(p for p in name.split(".") if p not in _WRAPPER_SEGMENTS)


def module_type(module: torch.nn.Module) -> str:
    """The class name of ``module`` as its user wrote it: FSDP2's ``fully_shard`` swaps a
    module's class for ``FSDP<Class>`` (a subclass of ``FSDPModule`` and the class).

        >>> module_type(torch.nn.Linear(2, 2))
        'Linear'
    """
    cls = type(module)
    fsdp = sys.modules.get("torch.distributed.fsdp")
    base = getattr(fsdp, "FSDPModule", None) if fsdp is not None else None
    if base is None or not isinstance(module, base):
        return cls.__name__
    for parent in cls.__mro__[1:]:
        if not issubclass(parent, base):
            return parent.__name__
    return cls.__name__


def _layout(
    global_shape: tuple[int, ...], mesh: Any, placements: tuple[Any, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Local shape and global offset on this rank."""
    coordinate = mesh.get_coordinate()  # stored on the mesh: no communication
    if coordinate is None:  # this rank is not part of the mesh: it holds nothing
        return (0,) * len(global_shape), (0,) * len(global_shape)
    return _cached_layout(global_shape, mesh, placements, tuple(coordinate))


@functools.lru_cache(maxsize=4096)
def _cached_layout(
    global_shape: tuple[int, ...], mesh: Any, placements: tuple[Any, ...], coordinate: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """torch's own computation, cached per coordinate (equal meshes of other ranks compare equal)."""
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

    local_shape, offset = _compute_local_shape_and_global_offset(global_shape, mesh.shape, list(coordinate), placements)
    return tuple(int(n) for n in local_shape), tuple(int(n) for n in offset)


def _is_strided(placement: Any) -> bool:
    return type(placement).__name__ == "_StridedShard"


def waited(local: torch.Tensor) -> torch.Tensor:
    """The plain tensor of an ``AsyncCollectiveTensor`` (waited for, as its first use
    would), else ``local`` itself."""
    if type(local) is torch.Tensor:
        return local
    functional = sys.modules.get("torch.distributed._functional_collectives")
    act = getattr(functional, "AsyncCollectiveTensor", None)
    if act is not None and isinstance(local, act):
        return local.trigger_wait()
    return local


def _unpadded(
    local: torch.Tensor, shape: tuple[int, ...], placements: str, global_shape: tuple[int, ...]
) -> torch.Tensor:
    """``local`` narrowed to ``shape`` where it is that shard padded at the end of each dimension."""
    if local.dim() != len(shape) or any(have < want for have, want in zip(local.shape, shape)):
        raise Unreadable(
            f"a DTensor whose local tensor has shape {list(local.shape)}, not the shape {list(shape)} that "
            f"its placements {placements} give for global shape {list(global_shape)} on this rank"
        )
    for dim, want in enumerate(shape):
        if local.shape[dim] != want:
            local = local.narrow(dim, 0, want)
    return local
