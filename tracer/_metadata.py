"""``_tracer.json``: what a trace says about itself (model, optimizers, parameters, options).

Written by rank 0 when the block starts (``complete: false``) and again when it ends; read
back by :func:`tracer._reader.read_meta`, which checks every key's type.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Sequence
from typing import Any

import torch

from tracer._schema import SCHEMA_VERSION
from tracer._sharded import original_name


def trace_metadata(
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    adopted: Sequence[bool],
    complete: bool,
    steps: int | None,
    files: Sequence[str],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The metadata of a trace of ``model`` (JSON-ready)."""
    from tracer import __version__

    return {
        "format": "tracer",
        "schema_version": SCHEMA_VERSION,
        "tracer_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "steps": steps,
        "model": type(model).__name__,
        "optimizers": [dict(optimizer_metadata(o), adopted=a) for o, a in zip(optimizers, adopted)],
        "parameters": parameters_metadata(model, optimizers),
        "files": list(files),
        "options": options,
    }


def parameters_metadata(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> list[dict[str, Any]]:
    """Every parameter, traced or not (frozen ones have no rows, but are listed here), with
    its optimizer and group, and the other names of a shared one (nanoGPT's tied ``lm_head``)."""
    where: dict[torch.Tensor, tuple[int | None, int | None]] = {}
    for index, opt in enumerate(optimizers):
        for group_index, group in enumerate(opt.param_groups):
            for p in group["params"]:
                where.setdefault(p, (index, group_index))
    aliases: dict[int, list[str]] = {}
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        name = original_name(name)
        if first.setdefault(id(p), name) != name:
            aliases.setdefault(id(p), []).append(name)
    out = []
    for name, p in model.named_parameters():
        name = original_name(name)  # as the rows name it (tracer._selection)
        oi, gi = where.get(p, (None, None))
        entry: dict[str, Any] = {
            "name": name, "shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch."),
            "requires_grad": p.requires_grad, "optimizer": oi, "param_group": gi,
        }  # fmt: skip
        if id(p) in aliases:
            entry["aliases"] = aliases[id(p)]
        out.append(entry)
    return out


def optimizer_metadata(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer's class, qualified name and ``torch.optim`` base classes."""
    cls = type(opt)
    bases = [
        c.__name__ for c in cls.__mro__[1:] if c.__module__.startswith("torch.optim") and c is not torch.optim.Optimizer
    ]
    return {"class": cls.__name__, "qualname": f"{cls.__module__}.{cls.__qualname__}", "bases": bases}
