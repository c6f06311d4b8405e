"""Adafactor's rule against the real `torch.optim.Adafactor` (factored and unfactored)."""

import pytest
import torch

from tracer.rules import adafactor

FLAGS = [
    {},
    {"beta2_decay": -0.5},
    {"eps": (1e-30, 1e-2)},
    {"d": 1.0},
    {"weight_decay": 0.1},
    {"maximize": True, "weight_decay": 0.05, "beta2_decay": -0.6, "d": 2.0},
]


class Net3D(torch.nn.Module):
    """A 3-D weight (factored over its last two dims), a 2-D and a 1-D parameter."""

    def __init__(self, dtype):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.w3 = torch.nn.Parameter(torch.randn(2, 3, 4, generator=gen, dtype=dtype))
        self.w2 = torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=dtype))
        self.b = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=dtype))

    def forward(self, x):
        return torch.tanh(torch.einsum("bi,kji->bkj", x, self.w3)).sum(1) @ self.b + (x @ self.w2).sum(1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(adafactor.RULE, lambda p: torch.optim.Adafactor(p, lr=0.05, foreach=foreach, **flags), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
def test_predict_matches_torch_3d(helpers, foreach, dtype):
    model = Net3D(dtype)
    gen = torch.Generator().manual_seed(2)
    xs = torch.randn(5, 6, 4, generator=gen, dtype=dtype)
    batches = iter(xs)
    optimizer = torch.optim.Adafactor(model.parameters(), lr=0.05, weight_decay=0.1, foreach=foreach)
    records = helpers.replay_steps(model, optimizer, lambda: model(next(batches)).pow(2).mean())
    helpers.assert_replay(records, adafactor.RULE, dtype)
    assert {"row_var", "col_var"} <= set(records[-1].state) or "variance" in records[-1].state


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_default_eps1_follows_the_parameter_dtype(helpers, dtype):
    # gradients near 1e-7 put the second moment near float32's eps² (1.4e-14),
    # where eps1 = finfo(dtype).eps decides the clamp
    model, loss_fn = helpers.tiny_problem(dtype)
    optimizer = torch.optim.Adafactor(model.parameters(), lr=0.05)
    records = helpers.replay_steps(model, optimizer, lambda: 1e-7 * loss_fn())
    helpers.assert_replay(records, adafactor.RULE, dtype)


def test_update_clipping_is_exercised(check_rule):
    records = check_rule(adafactor.RULE, lambda p: torch.optim.Adafactor(p, lr=0.05, d=1.0))
    clips = [adafactor.compute(r.param, r.grad, r.state, r.hparams)["clip"] for r in records]
    assert max(clips) > 1.0


def test_explain_vector_element():
    hparams = {"lr": 0.01, "beta2_decay": -0.8, "eps": [None, 1e-3], "d": 1.0, "weight_decay": 0.0}
    lines = adafactor.RULE.explain("b[0]", 0.5, -2.0, {"step": 0.0, "variance": 0.0}, hparams)
    assert "β̂₂: 1 − 1^(−0.8) = 0" == lines[0]
    assert "V̂: 0 · 0 + 1 · (−2)² = 4" == lines[2]
    assert "U: (−2) / √4 = −1" == lines[3]
    assert lines[-1].startswith("b[0]: 0.5 − α · U")


def test_explain_without_state_names_both_branches():
    hparams = {"lr": 0.01, "beta2_decay": -0.8, "eps": [None, 1e-3], "d": 1.0, "weight_decay": 0.0}
    lines = adafactor.RULE.explain("w[0]", 0.5, -2.0, {}, hparams)
    assert "for a vector" in lines[2] and "for a matrix" in lines[2]


def test_explain_matrix_element_names_the_whole_tensor_parts():
    hparams = {"lr": 0.01, "beta2_decay": -0.8, "eps": [None, 1e-3], "d": 1.0, "weight_decay": 0.1}
    lines = adafactor.RULE.explain("w[0,1]", 0.5, -2.0, {"step": 1.0, "row_var": 0.2, "col_var": 0.3}, hparams)
    assert any("every row of R" in line for line in lines)
    assert lines[-1].startswith("w[0,1]: 0.5 · (1 − 0.01 · 0.1) − α")
