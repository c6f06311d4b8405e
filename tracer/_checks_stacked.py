"""Many steps of one parameter at once: a rule's compute run on the steps stacked.

An elementwise rule (SGD's, Adam's, ...) gives each step's new value from that step's own
param, grad and state, so the steps of one parameter with the same hyper-parameters can be
stacked along a new first axis and computed in one call. On a long trace of a small model
the per-call cost of torch, paid once per step otherwise, is most of the report's time.

Rules do not declare whether they are elementwise, so it is checked on every stack: its
first and last step are also computed alone, and the stack is used only when both agree
bit for bit. A rule that reads a scalar state with ``.item()``, reduces over the whole
tensor, or warns on the extra axis is computed step by step, as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from tracer._checks import UpdateCheck
    from tracer.rules import Rule

MIN_STACK = 8
"""Fewer steps than this are computed one by one: the check of a stack costs two of them."""

Inputs = Callable[["UpdateCheck"], tuple[torch.Tensor, "torch.Tensor | None", dict[str, torch.Tensor]]]


def stack_key(check: UpdateCheck, rule_class: str | None, hparams_text: str) -> tuple[Any, ...] | None:
    """What the steps of one stack share: rule, hyper-parameters, shapes and the state's keys."""
    if check.param is None:
        return None
    dtypes = check.context.get("_state_dtypes") or {}
    state = tuple(sorted((k, v.shape, dtypes.get(k)) for k, v in check.state.items()))
    grad = None if check.grad is None else check.grad.shape
    return (rule_class, hparams_text, check.name, check.param.shape, check.dtype, grad, state, check.group_size)


def predict_stacked(rule: Rule, checks: Sequence[UpdateCheck], alone: Inputs) -> np.ndarray | None:
    """The rule's new values of ``checks`` (one row of flat float64 per check), computed in one
    call on their stacked inputs; None when the rule does not compute a stack step by step."""
    first = checks[0]
    assert first.param is not None
    param = np.stack([c.param for c in checks if c.param is not None])
    grad = None if first.grad is None else np.stack([c.grad for c in checks if c.grad is not None])
    state = {key: np.stack([c.state[key] for c in checks]) for key in first.state}
    return predict_arrays(rule, param, grad, state, first.rule_hparams, lambda i: alone(checks[i]))


def predict_arrays(
    rule: Rule,
    param: np.ndarray,
    grad: np.ndarray | None,
    state: dict[str, np.ndarray],
    hparams: dict[str, Any],
    alone: Callable[[int], tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]],
) -> np.ndarray | None:
    """The rule's new values of the steps stacked along the first axis of ``param``, ``grad``
    and each state (a row of flat float64 per step), in one call; None when the rule does not
    give the first and last step as it does alone (``alone(i)``: step ``i``'s own inputs).

    >>> predict_arrays(rules.RULES["SGD"], param, grad, {}, hparams, alone)  # doctest: +SKIP
    """
    n = len(param)
    stacked_param = torch.from_numpy(param)
    stacked_grad = None if grad is None else torch.from_numpy(grad)
    stacked_state = {key: _stacked(value, param.ndim - 1) for key, value in state.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a rule that warns on the extra axis: step by step, silently
            new = rule.predict(stacked_param, stacked_grad, stacked_state, hparams)
            if tuple(new.shape) != tuple(stacked_param.shape):
                return None
            for i in (0, n - 1):
                one = rule.predict(*alone(i), hparams)
                if not torch.equal(one.to(new.dtype), new[i]):
                    return None
    except Exception:  # any failure on the stack: compute the steps one by one instead
        return None
    return new.detach().reshape(n, -1).to(torch.float64).numpy()


def _stacked(values: np.ndarray, ndim: int) -> torch.Tensor:
    """The steps' values of one state key stacked; a scalar state (a step count) shaped to
    broadcast against the stacked parameter (of ``ndim`` dimensions per step)."""
    stacked = torch.from_numpy(values)
    if values.ndim == 1:
        stacked = stacked.reshape(len(values), *([1] * ndim))
    return stacked
