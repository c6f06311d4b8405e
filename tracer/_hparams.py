"""A param group's hyper-parameters as the JSON text of the ``hparams`` column.

>>> hparams_json({"params": [], "lr": 0.01, "nesterov": False})
'{"lr": 0.01, "nesterov": false}'
"""

from __future__ import annotations

import json
from typing import Any

import torch


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


def hparams_json(group: dict[str, Any]) -> str:
    """A param group's hyper-parameters (everything but ``params``) as JSON text."""
    return json.dumps({k: _jsonable(v) for k, v in group.items() if k != "params"}, sort_keys=True)
