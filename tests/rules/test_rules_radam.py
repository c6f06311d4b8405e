"""RAdam's rule against the real `torch.optim.RAdam`, across the rectification threshold."""

import pytest
import torch

from tracer.rules import radam

FLAGS = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    {"maximize": True, "betas": (0.8, 0.99)},
]


def rho_t(step: int, beta2: float) -> float:
    """RAdam's approximated SMA length at ``step``."""
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * step * beta2**step / (1 - beta2**step)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch_across_rectification(check_rule, flags, foreach, dtype):
    records = check_rule(radam.RULE, lambda p: torch.optim.RAdam(p, lr=0.05, foreach=foreach, **flags), dtype, steps=8)
    beta2 = records[0].hparams["betas"][1]
    rhos = [rho_t(rec.step + 1, beta2) for rec in records]
    assert min(rhos) <= 5 < max(rhos)


def test_explain_names_the_branch():
    hparams = {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0, "maximize": False}
    first = radam.RULE.explain("w", 1.0, -20.0, {}, hparams)
    assert "ρₜ: 1 ≤ 5, so not rectified" == first[-2]
    later = radam.RULE.explain("w", 1.0, -20.0, {"step": 9.0, "exp_avg": -2.0, "exp_avg_sq": 0.4}, hparams)
    assert later[-3].startswith("ρₜ: ") and "so rectified" in later[-3]


def test_explain_matches_predict(check_explain):
    check_explain(radam.RULE, lambda p: torch.optim.RAdam(p, lr=0.05, weight_decay=0.1), steps=8)
