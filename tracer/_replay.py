"""Replay check: a fresh optimizer of the traced class, stepped once on the traced state.

Classes come from ``torch.optim`` or from the caller; a class named in a trace is never
imported, so a report runs no code from a trace.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch


def find_class(class_name: str, bases: Sequence[str], extra: Sequence[type] = ()) -> tuple[type | None, str]:
    """The optimizer class to replay with, and how it was found (or why none was)."""
    for cls in extra:
        if cls.__name__ == class_name:
            return cls, f"{class_name} passed to report()"
    candidate = getattr(torch.optim, class_name, None)
    if (
        isinstance(candidate, type)
        and issubclass(candidate, torch.optim.Optimizer)
        and candidate is not torch.optim.Optimizer
    ):
        return candidate, f"torch.optim.{class_name}"
    return None, (
        f"{class_name} is not a torch.optim class and was not passed in "
        f"(tracer.report(trace, optimizers=[{class_name}]) enables the replay check)"
    )


def replay(
    cls: type,
    param: torch.Tensor,
    grad: torch.Tensor | None,
    state: dict[str, torch.Tensor],
    hparams: dict[str, Any],
) -> torch.Tensor:
    """The parameter after one ``cls.step()`` from the traced param, grad, state and hparams.

    Raises:
        CannotReplay: ``cls.step()`` needs a closure (LBFGS): one parameter's values cannot replay it.
        Exception: whatever the optimizer raises when it cannot be rebuilt or stepped.
    """
    needs_closure(cls)
    p = torch.nn.Parameter(param.clone())
    accepted = inspect.signature(cls).parameters
    kwargs = {k: _restore(v) for k, v in hparams.items() if k in accepted and k != "params"}
    optimizer = cls([p], **kwargs)
    group = optimizer.param_groups[0]
    for key, value in hparams.items():
        group[key] = _restore(value)
    optimizer.state[p] = {k: _state_value(v) for k, v in state.items()}
    if grad is not None:
        g = grad.clone()
        if cls.__name__ == "SparseAdam" or getattr(cls, "_sparse_grads", False):
            g = g.to_sparse()
        p.grad = g
    optimizer.step()
    return p.detach()


class CannotReplay(Exception):
    """One parameter's traced values cannot replay this optimizer's step; the message says why."""


def needs_closure(cls: type) -> None:
    """Raise :class:`CannotReplay` when ``cls.step()`` cannot run without a closure."""
    if issubclass(cls, torch.optim.LBFGS):
        raise CannotReplay(
            f"{cls.__name__}.step() re-evaluates the loss through its closure and moves all its parameters as one "
            "vector: it is replayed from every closure evaluation the trace recorded, over all its parameters, "
            "not from one parameter's values"
        )
    try:
        closure = inspect.signature(inspect.unwrap(cls.step)).parameters.get("closure")  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise CannotReplay(
            f"{cls.__name__}.step() requires a closure that re-evaluates the loss, which a replay from one "
            "parameter's traced values cannot give it"
        )


def _restore(value: Any) -> Any:
    """JSON gave lists where torch keeps tuples (``betas``): give them back as tuples."""
    if isinstance(value, list):
        return tuple(_restore(v) for v in value)
    return value


def _state_value(t: torch.Tensor) -> Any:
    # Python ints in state (LBFGS counters) were traced as 0-d int64 tensors
    if t.dim() == 0 and t.dtype == torch.int64:
        return int(t.item())
    return t.clone()
