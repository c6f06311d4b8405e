"""Verification in the training process (``tracer.trace(..., verify=True)``).

Just before ``optimizer.step()`` updates a parameter, :func:`predict` runs the optimizer's
rule (:mod:`tracer.rules`, the one the report uses) on float64 copies of the live
parameter, gradient and state; just after, :func:`verdict` compares the prediction with the
parameter's new value by the one tolerance policy (:class:`tracer._check_tolerance.Tolerance`).
The update row then carries ``rule_error`` (the largest |predicted − observed|) and
``rule_matches``. Nothing is stored but those two numbers, so a tensor of any size is
checked; nothing the optimizer reads is touched (the rule computes on copies and draws no
random numbers).

>>> import torch
>>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
>>> opt = torch.optim.SGD([p], lr=0.5)
>>> p.grad = torch.tensor([1.0, -1.0])
>>> before = p.detach().clone()
>>> pending = predict(opt, '{"lr": 0.5}', p, {})
>>> opt.step()
>>> verdict(pending, before, p.detach())
(0.0, True)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import NamedTuple

import torch

from tracer import rules
from tracer._sharded import local_of, shard_of
from tracer._tensors import dtype_name
from tracer.rules import _shared

_PARAM_DTYPE = getattr(_shared, "PARAM_DTYPE", "_dtype")  # the reserved hparams keys the rules read
_STATE_DTYPES = getattr(_shared, "STATE_DTYPES", "_state_dtypes")


class Prediction(NamedTuple):
    """The rule's new value of one parameter, computed before its step."""

    predicted: torch.Tensor  # float64, in the checked shape (a complex tensor's real view)
    dtype: str  # the parameter's dtype: the tolerance's


def _rule(cls: type) -> rules.Rule | None:
    """The rule of an optimizer class, or of its nearest base class that has one."""
    return _rule_by_bases(cls.__name__, tuple(c.__name__ for c in cls.__mro__[1:]))


@functools.cache
def _rule_by_bases(name: str, bases: tuple[str, ...]) -> rules.Rule | None:
    return rules.rule_for(name, bases)[0]


def wide(t: torch.Tensor) -> torch.Tensor:
    """A float64 copy of ``t`` as the rules see it: dense, a complex tensor as its real view."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64, copy=True)


def predict(
    opt: torch.optim.Optimizer, hparams: str, p: torch.Tensor, state: Mapping[str, torch.Tensor]
) -> Prediction | None:
    """The rule's new value of ``p`` from its live value, gradient and ``state`` (the state
    rows' parts and tensors); None where no rule applies (no rule, or the rule cannot predict
    this update: the report says why).

    Raises:
        Exception: whatever else fails (the caller warns once and records nulls).
    """
    rule = _rule(type(opt))
    if rule is None or isinstance(opt, torch.optim.LBFGS):  # LBFGS: see tracer._lbfgs_replay
        return None
    grad_tensor = p.grad
    if shard_of(p) is not None:  # a DTensor: element-wise rules hold shard by shard
        if rule.optimizer in _NOT_ELEMENTWISE:
            return None  # the rule needs the whole tensor: checked on the assembled rows
        p, grad_tensor = local_of(p), None if grad_tensor is None else local_of(grad_tensor)
        state = {k: local_of(v) for k, v in state.items()}
    grad = None if grad_tensor is None else wide(grad_tensor)
    context = {  # what the report's check adds to the traced hparams: the dtypes the trace records
        _PARAM_DTYPE: dtype_name(p.dtype),
        _STATE_DTYPES: {k: dtype_name(v.dtype) for k, v in state.items()},
    }
    try:
        predicted = rule.predict(
            wide(p), grad, {k: wide(v) for k, v in state.items()}, {**json.loads(str(hparams)), **context}
        )
    except rules.CannotPredict:
        return None
    return Prediction(predicted, dtype_name(p.dtype))


_NOT_ELEMENTWISE = frozenset({"LBFGS", "Muon", "Adafactor"})
"""Rules whose update of an element depends on other elements: not checkable on a shard."""


def verdict(prediction: Prediction, before: torch.Tensor, after: torch.Tensor) -> tuple[float, bool]:
    """``(rule_error, rule_matches)`` of a step that took a parameter from ``before`` to ``after``.

    The policy's bound is at least ``atol + rtol·|θ̂|``: an update within that everywhere
    matches, seen in a few passes over the tensor; any other goes through the policy itself
    (:meth:`Tolerance.judge`, as the report's checks do).
    """
    from tracer._check_tolerance import Tolerance  # the report's own policy

    predicted = prediction.predicted.detach().reshape(-1)
    observed = after.detach()
    observed = torch.view_as_real(observed) if observed.is_complex() else observed
    error = torch.sub(predicted, observed.reshape(-1).to(predicted.device)).abs_()
    rtol, atol, _ = Tolerance().resolve(prediction.dtype)
    if bool(error.le(predicted.abs().mul_(rtol).add_(atol)).all()):
        return (float(error.max()) if error.numel() else 0.0), True
    return _judged(prediction, before, after)


def _judged(prediction: Prediction, before: torch.Tensor, after: torch.Tensor) -> tuple[float, bool]:
    """The verdict by :meth:`Tolerance.judge` on float64 copies (NaN, infinities, the step term)."""
    from tracer._check_tolerance import Tolerance
    from tracer._checks import UpdateCheck  # (imports pandas: lazily)

    old = wide(before).reshape(-1).cpu()
    update = wide(after).reshape(-1).cpu().sub_(old)
    check = UpdateCheck(
        step=0, name="", optimizer=None, param_group=None, hparams={}, dtype=prediction.dtype,
        shape=tuple(prediction.predicted.shape), param=old.numpy(), update=update.numpy(),
        predicted=prediction.predicted.detach().reshape(-1).cpu().numpy(),
    )  # fmt: skip
    Tolerance().judge([check])
    return float(check.max_abs_error if check.max_abs_error is not None else float("nan")), bool(check.matches)
