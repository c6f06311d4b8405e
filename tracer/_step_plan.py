"""An optimizer's staged ``step()`` as it was last time, to stage the next one in a few
operations: :class:`StepPlan`.

The pre-step hook of a model with thousands of small parameters would otherwise walk every
parameter and state tensor and build one row each, every step. Most loops step the same
parameters with the same state tensors (updated in place) every step, so the first staged
step records what it found: the parameters it staged, the state tensors (by identity),
which buffer each tensor went into, and the rows as a :class:`~tracer._row_template.Template`.
A later step checks that nothing of it changed (the param groups and their parameters,
which parameters have a gradient, the state tensors being the same objects, the gradients being plain dense
tensors) and then only gathers the new gradients and copies each buffer's tensors with one
concatenation. Anything else (a new state tensor, a parameter without a gradient this
time, a dispatch mode) makes the recorder stage the step afresh and record a new plan.

>>> plan = recorder._plans[optimizer]          # doctest: +SKIP
>>> plan.matches(optimizer, want_state=True)   # doctest: +SKIP
"""

from __future__ import annotations

from operator import is_
from typing import TYPE_CHECKING, Any

import torch

from tracer._row_template import Template

if TYPE_CHECKING:
    from tracer._selection import ParamInfo

_EMPTY: dict[str, Any] = {}
_DENSE = torch.strided


class PlannedKey:
    """One buffer of a planned step: its tensors' role (``"grad"``, ``"param"`` or
    ``"state"``), where each comes from, their sizes, and the update rows of a ``"param"``
    buffer (its parameters' copy is also their updates' snapshot)."""

    __slots__ = ("role", "sources", "tensors", "numels", "total", "updates")

    def __init__(self, role: str, sources: list[int], tensors: list[torch.Tensor], updates: Template | None) -> None:
        self.role = role
        self.sources = sources  # a "grad" key's: the index of each gradient among the staged parameters
        self.numels = [t.numel() for t in tensors]
        # the parameters or state tensors (the same objects every step); not a step's gradients
        self.tensors = [] if role == "grad" else tensors
        self.total = sum(self.numels)
        self.updates = updates


class StepPlan:
    """What one optimizer's staged ``step()`` found (see the module's docstring)."""

    __slots__ = ("groups", "params", "candidates", "mask", "staged_at", "staged", "alone", "states", "keys", "template")

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        candidates: list[torch.Tensor],
        staged_at: list[int],
        alone: list[tuple[torch.Tensor, ParamInfo, int]],
        states: list[Any],
        keys: list[PlannedKey],
        template: Template,
    ) -> None:
        self.groups = [len(group["params"]) for group in opt.param_groups]
        self.params = [p for group in opt.param_groups for p in group["params"]]  # compared by identity
        self.candidates = candidates  # the selected parameters of every group, in order
        self.mask = [p.grad is not None for p in candidates]  # which of them the step updated
        self.staged_at = staged_at  # the staged ones' places among the candidates
        self.staged = [candidates[i] for i in staged_at]
        self.alone = alone  # the stepped ones too large (or not plain) to stage: (p, info, group)
        self.states = states  # the staged parameters' state values, in order (compared by identity)
        self.keys = keys
        self.template = template

    def gradients(self, opt: torch.optim.Optimizer, want_state: bool) -> list[torch.Tensor] | None:
        """The staged parameters' gradients now, or None when this plan does not describe
        ``opt``'s coming step."""
        groups = opt.param_groups
        if [len(group["params"]) for group in groups] != self.groups:
            return None
        params = [p for group in groups for p in group["params"]]
        if not all(map(is_, params, self.params)):
            return None  # a parameter replaced in its group
        grads = [p.grad for p in self.candidates]
        if [g is not None for g in grads] != self.mask:
            return None
        staged: list[Any] = [grads[i] for i in self.staged_at]
        for g in staged:
            if type(g) is not torch.Tensor or g.layout is not _DENSE:
                return None
        if want_state:
            state = opt.state
            values = [v for p in self.staged for v in state.get(p, _EMPTY).values()]
            if len(values) != len(self.states) or not all(map(is_, values, self.states)):
                return None
        return staged

    def tensors(self, key: PlannedKey, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors ``key``'s buffer copies this step."""
        return [grads[i] for i in key.sources] if key.role == "grad" else key.tensors


def plan_of(
    opt: torch.optim.Optimizer,
    params: dict[torch.Tensor, ParamInfo],
    staged: list[tuple[torch.Tensor, ParamInfo]],
    alone: list[tuple[torch.Tensor, ParamInfo, int, Any]],
    states: list[Any],
    keys: list[PlannedKey],
    template: Template,
) -> StepPlan:
    """The plan of a step just staged afresh: ``staged`` and ``alone`` are the parameters
    it staged and left to the per-tensor path, ``states`` the staged ones' state values."""
    candidates = []
    for group in opt.param_groups:
        for p in group["params"]:
            info = params.get(p)
            if info is not None and info.selected:
                candidates.append(p)
    at = {id(p): i for i, p in enumerate(candidates)}
    return StepPlan(
        opt, candidates, [at[id(p)] for p, _ in staged], [(p, info, gi) for p, info, gi, _ in alone], states, keys,
        template,
    )  # fmt: skip
