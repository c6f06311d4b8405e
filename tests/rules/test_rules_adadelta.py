"""Adadelta's rule against the real `torch.optim.Adadelta`."""

import pytest
import torch

from tracer.rules import adadelta

FLAGS = [{}, {"rho": 0.5}, {"weight_decay": 0.1}, {"eps": 1e-3, "maximize": True}, {"rho": 0.8, "weight_decay": 0.1}]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(adadelta.RULE, lambda p: torch.optim.Adadelta(p, lr=0.5, foreach=foreach, **flags), dtype)


def test_explain_first_step():
    hparams = {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0, "maximize": False}
    lines = adadelta.RULE.explain("w", 1.0, -2.0, {}, hparams)
    assert "v: 0.9 · 0 + 0.1 · (−2)² = 0.4" == lines[0]
    assert lines[1].startswith("Δx: √(0 + 1e−06) / √(0.4 + 1e−06) · (−2) = ")


def test_explain_matches_predict(check_explain):
    check_explain(adadelta.RULE, lambda p: torch.optim.Adadelta(p, lr=0.5, weight_decay=0.1, maximize=True))
