"""What the hooks read of autograd: whether a backward pass is running, the name of the
function that made a loss, and whether a tensor hook's tensor is still alive.

>>> _in_backward()
False
"""

from __future__ import annotations

from typing import Any

import torch


def _in_backward() -> bool:
    return torch._C._current_autograd_node() is not None


def _grad_fn_name(tensor: torch.Tensor) -> str | None:
    """``MseLossBackward0`` for an MSE loss: the loss row's ``module_type``."""
    fn = tensor.grad_fn
    return None if fn is None else type(fn).__name__


def _alive(handle: Any) -> bool:
    ref = getattr(handle, "hooks_dict_ref", None)
    return ref is not None and ref() is not None
