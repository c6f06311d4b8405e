"""NAdam's rule against the real `torch.optim.NAdam`."""

import pytest
import torch

from tracer.rules import nadam

FLAGS = [
    {},
    {"momentum_decay": 0.1},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    {"maximize": True, "betas": (0.8, 0.99)},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(nadam.RULE, lambda p: torch.optim.NAdam(p, lr=0.05, foreach=foreach, **flags), dtype)


def test_mu_product_is_rounded_like_the_state(check_rule):
    # mu_product lives in a float32 scalar tensor even for float64 parameters;
    # without rounding it the same way, predict would be off by ~1e-9 relative
    records = check_rule(nadam.RULE, lambda p: torch.optim.NAdam(p, lr=0.05), torch.float64, steps=4)
    products = [rec.state["mu_product"].item() for rec in records if rec.state]
    assert all(p == torch.tensor(p, dtype=torch.float32).item() for p in products)


def test_explain_matches_predict(check_explain):
    check_explain(nadam.RULE, lambda p: torch.optim.NAdam(p, lr=0.05, weight_decay=0.1))
    check_explain(nadam.RULE, lambda p: torch.optim.NAdam(p, lr=0.05, weight_decay=0.1, decoupled_weight_decay=True))


def test_text_follows_the_group_flags():
    hparams = {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": False}
    assert "θ ← θ − γ·λ·θ" in nadam.RULE.text(hparams)
    assert "g ← g + λ·θ" in nadam.RULE.text({**hparams, "decoupled_weight_decay": False})
