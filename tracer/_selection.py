"""What a trace records: the model's modules and parameters, named as users know them, and
selected by ``include``/``exclude`` glob patterns.

>>> selected("fc1.weight", include=["fc*"], exclude=["*.bias"])
True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch

from tracer._sharded import module_type, original_name


class ParamInfo:
    """What a row needs to know about one parameter."""

    __slots__ = ("name", "module_type", "selected")

    def __init__(self, name: str, module_type: str, selected: bool) -> None:
        self.name = name
        self.module_type = module_type
        self.selected = selected


class ModuleInfo:
    """What a row needs to know about one module, and the calls of it in flight."""

    __slots__ = ("name", "module_type", "selected", "is_root", "stack")

    def __init__(self, name: str, module_type: str, *, selected: bool, is_root: bool) -> None:
        self.name = name
        self.module_type = module_type
        self.selected = selected
        self.is_root = is_root
        self.stack: list[int | None] = []  # call index of each forward in flight (None: untraced)


class BufferInfo:
    """One registered buffer (BatchNorm's ``running_mean``, ...): read from its module at
    each step, as ``module.<key>`` may be replaced by a new tensor."""

    __slots__ = ("module", "key", "name", "module_type")

    def __init__(self, module: torch.nn.Module, key: str, name: str) -> None:
        self.module = module
        self.key = key
        self.name = name
        self.module_type = module_type(module)


def selected(name: str, include: list[str] | None, exclude: list[str]) -> bool:
    """Whether ``include``/``exclude`` (glob patterns) select the module or parameter ``name``."""
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def param_infos(
    model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], select: Callable[[str], bool]
) -> dict[torch.Tensor, ParamInfo]:
    """Every parameter of the model, and those only the optimizers hold (named by position)."""
    modules = dict(model.named_modules())
    infos: dict[torch.Tensor, ParamInfo] = {}
    for name, p in model.named_parameters():
        owner = modules.get(name.rpartition(".")[0])
        name = original_name(name)  # without wrappers' segments (activation checkpointing, FSDP)
        infos[p] = ParamInfo(name, "" if owner is None else module_type(owner), select(name))
    for oi, opt in enumerate(optimizers):
        for gi, group in enumerate(opt.param_groups):
            for pi, p in enumerate(group["params"]):
                if p not in infos:
                    name = f"optimizer{oi}.group{gi}.param{pi}"
                    infos[p] = ParamInfo(name, "", select(name))
    return infos


def module_infos(
    model: torch.nn.Module, select: Callable[[str], bool], *, every_module: bool = False
) -> dict[torch.nn.Module, ModuleInfo]:
    """The modules to hook: the selected ones, and the root (its forward delimits steps);
    ``every_module`` (``capture_ops``): the others too, so that the operations inside an
    excluded module are not taken for its parent's."""
    infos: dict[torch.nn.Module, ModuleInfo] = {}
    for name, module in model.named_modules():
        is_root = module is model
        name = original_name(name)
        chosen = select(name)
        if chosen or is_root or every_module:
            infos[module] = ModuleInfo(name, module_type(module), selected=chosen, is_root=is_root)
    return infos


def buffer_infos(model: torch.nn.Module, select: Callable[[str], bool]) -> list[BufferInfo]:
    """The model's registered buffers that ``select`` keeps, by full name (``bn.running_mean``)."""
    infos = []
    for module_name, module in model.named_modules():
        for name, _ in module.named_buffers(prefix=module_name, recurse=False):
            if select(name):
                infos.append(BufferInfo(module, name.rpartition(".")[2], name))
    return infos
