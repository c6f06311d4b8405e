"""Update rules of the torch.optim optimizers: text, LaTeX, predict and explain.

One module per torch.optim optimizer declares its algorithm once, as `Line`s
(condition on the param group, text, LaTeX, explain template) and one compute
function replaying torch's single-tensor step; `_base.Rule` renders and runs them.

Look a rule up by optimizer class name, falling back to the base classes of a
subclass:

>>> from tracer.rules import rule_for
>>> rule, used = rule_for("MySGD", ["SGD", "Optimizer"])
>>> used
'SGD'
>>> rule.text({"lr": 0.01, "momentum": 0, "weight_decay": 0})
'θ ← θ − γ·g'
>>> rule.explain("w[0,1]", 1.0, -20.0, {}, {"lr": 0.01})
['w[0,1]: 1 − 0.01 · (−20) = 1.2']
"""

from __future__ import annotations

from collections.abc import Sequence

from . import (
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    asgd,
    lbfgs,
    muon,
    nadam,
    radam,
    rmsprop,
    rprop,
    sgd,
    sparse_adam,
)
from ._base import CannotPredict, Rule

__all__ = ["RULES", "UNSUPPORTED", "CannotPredict", "Rule", "rule_for"]

RULES: dict[str, Rule] = {
    "SGD": sgd.RULE,
    "Adam": adam.RULE,
    "AdamW": adam.ADAMW_RULE,
    "Adamax": adamax.RULE,
    "NAdam": nadam.RULE,
    "RAdam": radam.RULE,
    "RMSprop": rmsprop.RULE,
    "Adagrad": adagrad.RULE,
    "Adadelta": adadelta.RULE,
    "ASGD": asgd.RULE,
    "Rprop": rprop.RULE,
    "SparseAdam": sparse_adam.RULE,
    "Adafactor": adafactor.RULE,
    "Muon": muon.RULE,
    "LBFGS": lbfgs.RULE,
}

# Every torch.optim optimizer has a rule; a class torch adds later goes here
# (or gets a rule) - tests/rules/test_rules_table.py fails until it does.
UNSUPPORTED: dict[str, str] = {}


def rule_for(class_name: str, bases: Sequence[str] = ()) -> tuple[Rule | None, str | None]:
    """The rule for an optimizer class, or for the first of its base classes that has one.

    Args:
        class_name: the optimizer's class name, e.g. ``"AdamW"``.
        bases: its base class names, nearest first (``[c.__name__ for c in cls.__mro__[1:]]``).

    Returns:
        ``(rule, name_used)``, or ``(None, None)`` when no name has a rule.
    """
    for name in (class_name, *bases):
        rule = RULES.get(name)
        if rule is not None:
            return rule, name
    return None, None
