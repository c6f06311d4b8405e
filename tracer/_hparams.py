"""A param group's hyper-parameters as the JSON text of the ``hparams`` column.

A tensor hyper-parameter (``lr=torch.tensor(0.01)``) is written as its value, and its dtype
and device under the reserved key ``"_tensors"``: torch does the scalar arithmetic of a
tensor ``lr`` in the tensor's dtype, so the update rules need to know it. When the default
dtype is not float32 it is written under ``"_default_dtype"``: torch makes the scalar state
(``step``, ``mu_product``, ...) in it. Readers that list a group's hyper-parameters skip
these keys (:func:`is_reserved`); traces written before they existed read as "no tensor
hyper-parameters, default dtype float32".

>>> hparams_json({"params": [], "lr": 0.01, "nesterov": False})
'{"lr": 0.01, "nesterov": false}'
>>> hparams_json({"params": [], "lr": torch.tensor(0.5)})
'{"_tensors": {"lr": {"device": "cpu", "dtype": "float32"}}, "lr": 0.5}'
"""

from __future__ import annotations

import json
from typing import Any

import torch

TENSORS = "_tensors"
"""Reserved key: hyper-parameter name -> ``{"dtype", "device"}`` of a tensor value (a list of
those, ``None`` for the plain numbers, for a tuple such as ``betas``)."""

DEFAULT_DTYPE = "_default_dtype"
"""Reserved key: ``torch.get_default_dtype()`` of the training process, when not float32."""


RESERVED = (TENSORS, DEFAULT_DTYPE)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _tensor_spec(value: Any) -> Any:
    """The dtype and device of a tensor value; for a list/tuple, one per element; else None."""
    if isinstance(value, torch.Tensor):
        return {"dtype": str(value.dtype).removeprefix("torch."), "device": str(value.device)}
    if isinstance(value, (list, tuple)):
        specs = [_tensor_spec(v) for v in value]
        return specs if any(s is not None for s in specs) else None
    return None


def hparams_json(group: dict[str, Any]) -> str:
    """A param group's hyper-parameters (everything but ``params``) as JSON text."""
    return _text({k: v for k, v in group.items() if k != "params"}, _specs(group), torch.get_default_dtype())


def _specs(group: dict[str, Any]) -> dict[str, Any]:
    return {k: spec for k, v in group.items() if k != "params" and (spec := _tensor_spec(v)) is not None}


def _text(values: dict[str, Any], tensors: dict[str, Any], default: torch.dtype) -> str:
    out = {k: _jsonable(v) for k, v in values.items()}
    if tensors:
        out[TENSORS] = tensors
    if default != torch.float32:
        out[DEFAULT_DTYPE] = str(default).removeprefix("torch.")
    return json.dumps(out, sort_keys=True)


def hparams_text(group: dict[str, Any]) -> str | DeferredHparams:
    """:func:`hparams_json`, or where a value is a CUDA tensor (reading it would wait for the
    GPU) a :class:`DeferredHparams` whose ``str()`` is that text, made on the writer thread."""
    for v in group.values():
        if isinstance(v, torch.Tensor) and v.device.type == "cuda":
            return DeferredHparams(group)
    return hparams_json(group)


class DeferredHparams:
    """A param group's hyper-parameters with its CUDA tensors being copied to host memory
    (no wait); ``str()`` waits for the copies and gives :func:`hparams_json`'s text."""

    __slots__ = ("_values", "_tensors", "_default", "_ready", "_done")

    def __init__(self, group: dict[str, Any]) -> None:
        from tracer._tensors import host_copy

        ready = None

        def copy(v: Any) -> Any:
            nonlocal ready
            if isinstance(v, torch.Tensor) and v.device.type == "cuda":
                host, ready = host_copy(v.detach())
                return host
            return type(v)(copy(x) for x in v) if isinstance(v, (list, tuple)) else v

        self._values = {k: copy(v) for k, v in group.items() if k != "params"}
        self._tensors = _specs(group)  # the values' own devices, not the host copies'
        self._default = torch.get_default_dtype()
        self._ready = ready
        self._done: str | None = None

    def __str__(self) -> str:
        if self._done is None:
            if self._ready is not None:
                self._ready.synchronize()
            self._done = _text(self._values, self._tensors, self._default)
        return self._done


def as_text(hparams: str | DeferredHparams | None) -> str | None:
    """The ``hparams`` column's text of what the capture recorded (writer side)."""
    return hparams if hparams is None or type(hparams) is str else str(hparams)


def is_reserved(key: str) -> bool:
    """Whether an ``hparams`` key is tracer's (``_tensors``, ``_default_dtype``), not the group's."""
    return key in RESERVED
