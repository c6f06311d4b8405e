"""LBFGS steps checked by replaying torch's own ``LBFGS.step`` on the recorded closure evaluations.

One LBFGS ``step(closure)`` evaluates the closure once or many times (``max_iter``, a
strong-Wolfe line search) and moves all its parameters as one flat vector. The replay
starts a fresh ``torch.optim.LBFGS`` from the parameters and state before the step and
hands it a closure that, at evaluation k, gives back the loss and gradients recorded at
evaluation k, after noting where the replay evaluated it; the replayed step matches when
its final parameters are the traced ones and every point it evaluated at is the traced one.

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
>>> opt = torch.optim.LBFGS([w], max_iter=3)
>>> def closure():
...     opt.zero_grad(); loss = (w ** 2).sum(); loss.backward(); return loss.detach()
>>> live = LiveLBFGS(opt)
>>> def recorded():
...     loss = closure(); live.evaluated(loss); return loss
>>> _ = opt.step(recorded)
>>> sorted(live.verdicts().values())
[(0.0, True)]
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

_FRESH = ("al",)  # scratch LBFGS keeps in its state: written before it is read, so not replayed


@dataclasses.dataclass
class Evaluation:
    """One closure evaluation: the loss it returned, the gradients it left (None: no
    gradient) and the parameters it was evaluated at, in the optimizer's parameter order."""

    loss: float
    grads: list[torch.Tensor | None]
    params: list[torch.Tensor]


class Diverged(Exception):
    """The replay asked for other closure evaluations than the traced step made."""


@dataclasses.dataclass
class Replayed:
    """The replayed step: the new parameters, and where it evaluated the closure (points[k][i])."""

    params: list[torch.Tensor]
    points: list[list[torch.Tensor]]


def replay_lbfgs(
    hparams: Mapping[str, Any],
    params: Sequence[torch.Tensor],
    state: Mapping[str, Any],
    evaluations: Sequence[Evaluation],
) -> Replayed:
    """``torch.optim.LBFGS.step`` from ``params`` (before the step) and the first parameter's
    ``state`` (torch's form: lists of tensors, ints), its closure fed by ``evaluations``.

    Raises:
        Diverged: the replay evaluated the closure more or fewer times than recorded.
        Exception: whatever torch raises on hyper-parameters or state it cannot take.
    """
    ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
    accepted = inspect.signature(torch.optim.LBFGS).parameters
    optimizer = torch.optim.LBFGS(ps, **{k: v for k, v in hparams.items() if k in accepted and k != "params"})
    optimizer.param_groups[0].update({k: v for k, v in hparams.items() if k != "params"})
    optimizer.state[ps[0]] = {k: _copy(v) for k, v in state.items() if k not in _FRESH}
    points: list[list[torch.Tensor]] = []

    def closure() -> torch.Tensor:
        k = len(points)
        if k >= len(evaluations):
            raise Diverged(
                f"the replayed LBFGS step evaluates the closure a {_nth(k + 1)} time; the traced step "
                f"evaluated it {len(evaluations)} time(s)"
            )
        points.append([p.detach().clone() for p in ps])
        for p, g in zip(ps, evaluations[k].grads):
            p.grad = None if g is None else g.detach().clone().to(p.dtype)
        return torch.tensor(evaluations[k].loss, dtype=torch.float64)

    with torch.no_grad():
        optimizer.step(closure)
    if len(points) != len(evaluations):
        raise Diverged(
            f"the replayed LBFGS step evaluated the closure {len(points)} time(s); the traced step "
            f"evaluated it {len(evaluations)} times"
        )
    return Replayed([p.detach() for p in ps], points)


def _nth(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class LiveLBFGS:
    """verify of one LBFGS step in the training process: copies of the parameters, state and
    hyper-parameters before it, every closure evaluation inside it, and the verdicts after."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        group = optimizer.param_groups[0]
        self.live: list[torch.Tensor] = list(group["params"])
        self.before = [p.detach().clone() for p in self.live]
        self.hparams = {k: _copy(v) for k, v in group.items() if k != "params"}
        self.state = {k: _copy(v) for k, v in optimizer.state.get(self.live[0], {}).items()}
        self.evaluations: list[Evaluation] = []

    def evaluated(self, loss: Any) -> None:
        """The closure just returned ``loss``: keep its gradients and where it ran."""
        params = self.before if not self.evaluations else [p.detach().clone() for p in self.live]
        grads = [None if p.grad is None else p.grad.detach().clone() for p in self.live]
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        self.evaluations.append(Evaluation(value, grads, params))

    def verdicts(self) -> dict[torch.Tensor, tuple[float, bool]]:
        """``{parameter: (rule_error, rule_matches)}`` of the step just made.

        A replay that evaluates elsewhere than the traced step (or more or fewer times)
        makes every parameter's update a mismatch; its error is then the largest over the
        final values and every evaluation point.
        """
        from tracer._verify import Prediction, verdict, wide

        try:
            replayed = replay_lbfgs(self.hparams, self.before, self.state, self.evaluations)
        except Diverged:
            return {p: (math.inf, False) for p in self.live}
        found = {}
        for i, p in enumerate(self.live):
            dtype = str(p.dtype).removeprefix("torch.")
            error, matches = verdict(Prediction(wide(replayed.params[i]), dtype), self.before[i], p.detach())
            for k, point in enumerate(replayed.points[1:], start=1):
                e, m = verdict(Prediction(wide(point[i]), dtype), self.before[i], self.evaluations[k].params[i])
                error, matches = max(error, e), matches and m
            found[p] = (error, matches)
        return found
