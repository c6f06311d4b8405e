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
    out = {k: _jsonable(v) for k, v in group.items() if k != "params"}
    tensors = {k: spec for k, v in group.items() if k != "params" and (spec := _tensor_spec(v)) is not None}
    if tensors:
        out[TENSORS] = tensors
    default = torch.get_default_dtype()
    if default != torch.float32:
        out[DEFAULT_DTYPE] = str(default).removeprefix("torch.")
    return json.dumps(out, sort_keys=True)


def is_reserved(key: str) -> bool:
    """Whether an ``hparams`` key is tracer's (``_tensors``, ``_default_dtype``), not the group's."""
    return key in RESERVED
