"""Rprop's rule against the real `torch.optim.Rprop` (sign logic, step-size bounds)."""

import pytest
import torch

from tracer.rules import rprop

FLAGS = [
    {},
    {"etas": (0.3, 1.5)},
    {"step_sizes": (0.02, 0.06)},
    {"maximize": True},
    {"etas": (0.4, 1.1), "step_sizes": (1e-3, 0.08), "maximize": True},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    records = check_rule(rprop.RULE, lambda p: torch.optim.Rprop(p, lr=0.05, foreach=foreach, **flags), dtype, steps=6)
    later = [rec for rec in records if rec.state and rec.grad is not None]
    signs = torch.cat([(rec.grad * rec.state["prev"]).sign().flatten() for rec in later])
    assert {-1.0, 1.0} <= set(signs.tolist())  # both the grow and the shrink branch ran


def test_explain_sign_flip():
    hparams = {"lr": 0.01, "etas": [0.5, 1.2], "step_sizes": [1e-6, 50], "maximize": False}
    expected = [
        "η: sign((−20) · 3) gives 0.5",
        "s: clamp(0.5 · 0.02, 1e−06, 50) = 0.01",
        "g: 0 (the sign flipped, so this step does not move)",
        "w: 1 − 0.01 · sign(0) = 1",
    ]
    assert expected == rprop.RULE.explain("w", 1.0, -20.0, {"prev": 3.0, "step_size": 0.02}, hparams)


def test_explain_matches_predict(check_explain):
    check_explain(rprop.RULE, lambda p: torch.optim.Rprop(p, lr=0.05), steps=5)
