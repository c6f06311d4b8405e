"""Adamax's rule against the real `torch.optim.Adamax`."""

import pytest
import torch

from tracer.rules import adamax

FLAGS = [{}, {"weight_decay": 0.1}, {"maximize": True}, {"weight_decay": 0.1, "maximize": True, "betas": (0.8, 0.9)}]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(adamax.RULE, lambda p: torch.optim.Adamax(p, lr=0.05, foreach=foreach, **flags), dtype)


def test_explain_first_step():
    hparams = {"lr": 0.002, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0, "maximize": False}
    expected = [
        "m: 0.9 · 0 + 0.1 · (−20) = −2",
        "u: max(0.999 · 0, |(−20)| + 1e−08) = 20",
        "w: 1 − 0.002 · (−2) / ((1 − 0.9^1) · 20) = 1.002",
    ]
    assert expected == adamax.RULE.explain("w", 1.0, -20.0, {}, hparams)


def test_explain_matches_predict(check_explain):
    check_explain(adamax.RULE, lambda p: torch.optim.Adamax(p, lr=0.05, weight_decay=0.1, maximize=True))
