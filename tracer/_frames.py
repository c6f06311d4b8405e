"""What the optimizer hooks read of the interpreter: the live frames (a ``step()`` that
raised has left the stack) and whether a ``step()`` runs its closure once, first.

>>> _runs_closure_once_first(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
True
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable
from typing import Any

import torch


def _stack_frames() -> Iterable[Any]:
    frame: Any = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _runs_closure_once_first(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``step(closure)`` evaluates the closure once, at its top: torch.optim's do,
    except LBFGS; a ``step`` written elsewhere may do anything."""
    step = inspect.unwrap(type(optimizer).step)  # torch wraps step() in its hook caller
    module = getattr(step, "__module__", "") or ""
    return module.startswith("torch.optim") and not isinstance(optimizer, torch.optim.LBFGS)
