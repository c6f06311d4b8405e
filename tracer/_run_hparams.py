"""A run's hyper-parameters over steps, and the first place two runs' hyper-parameters differ.

The hyper-parameters are those each ``update`` row carries (its param group's, as
``optimizer.step()`` saw them: a schedule changes ``lr`` from step to step). ``tracer.diff``
reports a changed learning rate as such, before the values it changes; ``tracer.compare``
shows each run's.

>>> table = hparams(tracer.open("traces/run1"))        # doctest: +SKIP
>>> table[0]["SGD", 0]["lr"]                             # doctest: +SKIP
0.1
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tracer._trace import Trace

NOT_HYPERPARAMETERS = frozenset({"foreach", "fused", "differentiable", "capturable", "initial_lr"})
"""Param-group keys that choose an implementation, not the maths, and a schedule's own
bookkeeping (``initial_lr``; the ``lr`` it sets is compared): not compared."""

NAMES = {"lr": "learning rate (lr)", "weight_decay": "weight decay (weight_decay)", "betas": "betas", "eps": "eps"}
"""How messages name the hyper-parameters torch calls by these keys."""

Group = tuple[str, int]
"""(optimizer class, param group index)."""


def hparams(trace: Trace) -> dict[int, dict[Group, dict[str, Any]]]:
    """``{step: {(optimizer, group): {key: value}}}`` from the update rows (each JSON text parsed once).

    Example::

        hparams(tracer.open("traces/run1"))[0][("SGD", 0)]["lr"]
    """
    stats = trace.stats
    if "hparams" not in stats.columns:
        return {}
    rows = stats[(stats["kind"] == "update") & stats["hparams"].notna()]
    rows = rows.drop_duplicates(["step", "optimizer", "param_group"])
    parsed: dict[str, dict[str, Any]] = {}
    out: dict[int, dict[Group, dict[str, Any]]] = {}
    for step, opt, group, text in zip(rows["step"], rows["optimizer"], rows["param_group"], rows["hparams"]):
        if text not in parsed:
            try:
                value = json.loads(text)
            except ValueError:
                value = {}
            parsed[text] = (
                {k: v for k, v in value.items() if k not in NOT_HYPERPARAMETERS} if isinstance(value, dict) else {}
            )
        key = (str(opt), 0 if group is None or group != group else int(group))
        out.setdefault(int(step), {})[key] = parsed[text]
    return out


def first_names(trace: Trace) -> dict[Group, str]:
    """The first parameter (in training order) of each (optimizer, group): how a row names it."""
    stats = trace.stats
    rows = stats[stats["kind"] == "update"].drop_duplicates(["optimizer", "param_group"])
    return {
        (str(o), 0 if g is None or g != g else int(g)): str(n)
        for o, g, n in zip(rows["optimizer"], rows["param_group"], rows["name"])
    }


@dataclasses.dataclass(frozen=True)
class HparamChange:
    """The first step where two runs' hyper-parameters differ: which group, and each key that does."""

    step: int
    optimizer: str
    group: int
    name: str  # the group's first parameter
    differ: tuple[tuple[str, Any, Any], ...]  # (key, a's value, b's value); the learning rate first

    def text(self, labels: tuple[str, str] = ("a", "b")) -> str:
        """``"the learning rate (lr) of SGD param group 0 differs: a = 0.01, b = 0.02"``."""
        la, lb = labels
        (key, va, vb), *others = self.differ
        line = f"the {NAMES.get(key, key)} of {self.optimizer} param group {self.group} differs: {la} = {va!r}, {lb} = {vb!r}"
        if others:
            line += "; also " + ", ".join(f"{NAMES.get(k, k)} ({la} = {x!r}, {lb} = {y!r})" for k, x, y in others)
        return line


def first_change(a: Trace, b: Trace, steps: set[int] | None = None) -> HparamChange | None:
    """The first step (of those both runs traced, within ``steps`` if given) at which a param
    group's hyper-parameters differ; None when they agree everywhere."""
    ha, hb = hparams(a), hparams(b)
    names = first_names(a)
    for step in sorted(set(ha) & set(hb)):
        if steps is not None and step not in steps:
            continue
        for group in sorted(set(ha[step]) & set(hb[step])):
            x, y = ha[step][group], hb[step][group]
            differ = [(k, x.get(k), y.get(k)) for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
            if differ:
                differ.sort(key=lambda d: d[0] != "lr")
                return HparamChange(step, group[0], group[1], names.get(group, ""), tuple(differ))
    return None


def schedule_text(per_step: dict[int, dict[Group, dict[str, Any]]], group: Group, key: str) -> str:
    """A hyper-parameter over the run: ``"0.1"``, or ``"0.1 → 0.0125 (changes 3 times)"``."""
    values = [per_step[s][group][key] for s in sorted(per_step) if key in per_step[s].get(group, {})]
    if not values:
        return "—"
    changes = sum(1 for x, y in zip(values, values[1:]) if x != y)
    if not changes:
        return _shown(values[0])
    return f"{_shown(values[0])} → {_shown(values[-1])} (changes {changes} time{'s' if changes > 1 else ''})"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "(" + ", ".join(_shown(v) for v in value) + ")"
    return json.dumps(value) if not isinstance(value, str) else value
