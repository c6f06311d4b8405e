"""RMSprop's rule against the real `torch.optim.RMSprop`."""

import pytest
import torch

from tracer.rules import rmsprop

FLAGS = [
    {},
    {"alpha": 0.9},
    {"centered": True},
    {"momentum": 0.9},
    {"centered": True, "momentum": 0.9},
    {"weight_decay": 0.1, "maximize": True},
    {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "maximize": True, "eps": 1e-3},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(rmsprop.RULE, lambda p: torch.optim.RMSprop(p, lr=0.01, foreach=foreach, **flags), dtype)


def test_explain_first_step():
    hparams = {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0, "momentum": 0, "centered": False}
    expected = [
        "v: 0.99 · 0 + 0.01 · (−20)² = 4",
        "√v + ε: √4 + ε = 2",
        "w: 1 − 0.01 · (−20) / 2 = 1.1",
    ]
    assert expected == rmsprop.RULE.explain("w", 1.0, -20.0, {}, hparams)


def test_explain_matches_predict(check_explain):
    check_explain(rmsprop.RULE, lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True, momentum=0.9))
    check_explain(rmsprop.RULE, lambda p: torch.optim.RMSprop(p, lr=0.01, weight_decay=0.1))


def test_text_follows_the_group_flags():
    hparams = {"centered": True, "momentum": 0.9}
    assert "b ← μ·b + g / (√ṽ + ε)\nθ ← θ − γ·b" in rmsprop.RULE.text(hparams)
    assert "θ ← θ − γ·g / (√v + ε)" in rmsprop.RULE.text({})
