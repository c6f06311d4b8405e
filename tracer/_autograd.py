"""What the hooks read of autograd: whether a backward pass is running, the name of the
function that made a loss, and whether a tensor hook's tensor is still alive; and
:class:`NoGrad`, the hooks' ``torch.no_grad()``.

>>> _in_backward()
False
"""

from __future__ import annotations

from typing import Any

import torch

_grad_enabled = torch.is_grad_enabled
_set_grad_enabled = torch._C._set_grad_enabled


class NoGrad:
    """``torch.no_grad()`` for the hooks, which enter it for every module call: the same
    switch of the grad mode, without the decorator machinery that makes torch's cost ten
    times more.

    >>> with NoGrad():
    ...     torch.is_grad_enabled()
    False
    """

    __slots__ = ("_before",)

    def __enter__(self) -> None:
        self._before = _grad_enabled()
        _set_grad_enabled(False)

    def __exit__(self, *exc: object) -> None:
        _set_grad_enabled(self._before)


def _in_backward() -> bool:
    return torch._C._current_autograd_node() is not None


def _grad_fn_name(tensor: torch.Tensor) -> str | None:
    """``MseLossBackward0`` for an MSE loss: the loss row's ``module_type``."""
    fn = tensor.grad_fn
    return None if fn is None else type(fn).__name__


def _alive(handle: Any) -> bool:
    ref = getattr(handle, "hooks_dict_ref", None)
    return ref is not None and ref() is not None
