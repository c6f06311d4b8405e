"""Muon's rule against the real `torch.optim.Muon` (2-D parameters only)."""

import pytest
import torch

from tracer.rules import CannotPredict, muon

FLAGS = [
    {},
    {"nesterov": False},
    {"momentum": 0.5, "weight_decay": 0.0},
    {"adjust_lr_fn": "match_rms_adamw"},
    {"adjust_lr_fn": "original", "ns_steps": 3, "ns_coefficients": (3.0, -3.2, 1.2)},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, dtype):
    check_rule(muon.RULE, lambda p: torch.optim.Muon(p, lr=0.02, **flags), dtype, bias=False)


@pytest.mark.parametrize("shape", [(2, 5), (5, 2)])
def test_predict_matches_torch_tall_and_wide(helpers, shape):
    # a tall matrix is transposed inside Newton–Schulz, and gets a larger lr ("original")
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(shape[1], shape[0], bias=False, dtype=torch.float64)
    xs = iter(torch.randn(5, 3, shape[1], generator=gen, dtype=torch.float64))
    optimizer = torch.optim.Muon(model.parameters(), lr=0.02)
    records = helpers.replay_steps(model, optimizer, lambda: model(next(xs)).pow(2).sum())
    helpers.assert_replay(records, muon.RULE, torch.float64)


def test_adjusted_lr():
    assert 0.02 * 2 == muon.adjusted_lr(0.02, None, torch.Size([8, 2]))
    assert 0.02 == muon.adjusted_lr(0.02, "original", torch.Size([2, 8]))
    assert 0.2 * 0.02 * 8**0.5 == muon.adjusted_lr(0.02, "match_rms_adamw", torch.Size([2, 8]))


def test_non_matrix_cannot_be_predicted():
    hparams = {
        "lr": 0.02,
        "momentum": 0.95,
        "nesterov": True,
        "weight_decay": 0.1,
        "ns_coefficients": [3.4445, -4.775, 2.0315],
        "eps": 1e-7,
        "ns_steps": 5,
        "adjust_lr_fn": None,
    }
    with pytest.raises(CannotPredict, match="2-D"):
        muon.RULE.predict(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), {}, hparams)


def test_explain_shows_the_local_arithmetic():
    hparams = {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}
    expected = [
        "B: 0.9 · 0 + 0.1 · (−2) = −0.2",
        "B̃: (−2) + 0.9 · ((−0.2) − (−2)) = −0.38",
        "O: Newton–Schulz over the whole matrix (bfloat16)",
        "w[0,1]: 1 · (1 − 0.02 · 0.1) − γ'·O = 0.998 − γ'·O",
    ]
    assert expected == muon.RULE.explain("w[0,1]", 1.0, -2.0, {}, hparams)


@pytest.mark.parametrize(
    ("adjust_lr_fn", "expected"),
    [
        (None, "γ' ← γ·√max(1, m/n)   (θ is m×n)"),
        ("original", "γ' ← γ·√max(1, m/n)   (θ is m×n)"),
        ("match_rms_adamw", "γ' ← 0.2·γ·√max(m, n)   (θ is m×n)"),
        ("unknown", "γ' ← γ"),
    ],
)
def test_text_names_the_lr_adjustment(adjust_lr_fn, expected):
    hparams = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.1, "adjust_lr_fn": adjust_lr_fn}
    assert [expected] == [line for line in muon.RULE.text(hparams).split("\n") if line.startswith("γ'")]
    assert 1 == muon.RULE.latex(hparams).count(r"\gamma' \leftarrow")
