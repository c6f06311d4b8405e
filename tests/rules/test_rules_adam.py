"""Adam's and AdamW's rule against the real `torch.optim.Adam` and `torch.optim.AdamW`."""

import pytest
import torch

from tracer.rules import RULES, adam

FLAGS = [
    {},
    {"amsgrad": True},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "amsgrad": True},
    {"maximize": True},
    {"weight_decay": 0.1, "maximize": True, "betas": (0.8, 0.99), "eps": 1e-3},
]

HPARAMS = {
    "lr": 0.001,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "weight_decay": 0,
    "amsgrad": False,
    "maximize": False,
    "decoupled_weight_decay": False,
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, cls, foreach, dtype):
    check_rule(RULES[cls.__name__], lambda p: cls(p, lr=0.05, foreach=foreach, **flags), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_predict_matches_fused(check_rule, cls, dtype):
    check_rule(RULES[cls.__name__], lambda p: cls(p, lr=0.05, weight_decay=0.1, amsgrad=True, fused=True), dtype)


def test_adam_with_decoupled_weight_decay_is_adamw(check_rule):
    records = check_rule(
        adam.RULE, lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)
    )
    assert all(rec.hparams["decoupled_weight_decay"] for rec in records)


def test_predict_follows_the_lr_of_each_step(check_rule):
    records = check_rule(
        adam.ADAMW_RULE,
        lambda p: torch.optim.AdamW(p, lr=0.1),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    expected = [0.1, 0.05, 0.025, 0.0125, 0.00625]
    assert expected == [rec.hparams["lr"] for rec in records if rec.name == "lin.bias"]


def test_rule_names():
    assert "Adam" == RULES["Adam"].optimizer
    assert "AdamW" == RULES["AdamW"].optimizer


def test_explain_first_step():
    expected = [
        "m: 0.9 · 0 + 0.1 · (−20) = −2",
        "v: 0.999 · 0 + 0.001 · (−20)² = 0.4",
        "m̂: (−2) / (1 − 0.9^1) = −20",
        "v̂: 0.4 / (1 − 0.999^1) = 400",
        "w[0,1]: 1 − 0.001 · (−20) / (√400 + 1e−08) = 1.001",
    ]
    assert expected == adam.RULE.explain("w[0,1]", 1.0, -20.0, {}, HPARAMS)


def test_explain_decoupled_weight_decay():
    hparams = {**HPARAMS, "weight_decay": 0.01, "decoupled_weight_decay": True}
    lines = adam.RULE.explain("w[0,1]", 1.0, -20.0, {"step": 1.0, "exp_avg": -2.0, "exp_avg_sq": 0.4}, hparams)
    assert "θ: 1 · (1 − 0.001 · 0.01) = 0.99999" == lines[0]


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_explain_matches_predict(check_explain, cls):
    check_explain(RULES[cls.__name__], lambda p: cls(p, lr=0.05, weight_decay=0.1, amsgrad=True))
    check_explain(RULES[cls.__name__], lambda p: cls(p, lr=0.05, maximize=True))


def test_text_follows_the_group_flags():
    assert "g ← g + λ·θ" in adam.RULE.text({**HPARAMS, "weight_decay": 0.1})
    decoupled = adam.RULE.text({**HPARAMS, "weight_decay": 0.1, "decoupled_weight_decay": True})
    assert "θ ← θ − γ·λ·θ" in decoupled
    assert "g ← g + λ·θ" not in decoupled
    assert "vₘₐₓ" in adam.RULE.text({**HPARAMS, "amsgrad": True})
    assert "vₘₐₓ" not in adam.RULE.text(HPARAMS)
    assert r"v_t^{max}" in adam.RULE.latex({**HPARAMS, "amsgrad": True})
