"""SGD's rule against the real `torch.optim.SGD`."""

import pytest
import torch

from tracer.rules import sgd

FLAGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.9, "nesterov": True},
    {"weight_decay": 0.1},
    {"maximize": True},
    {"momentum": 0.9, "dampening": 0.2, "weight_decay": 0.05, "maximize": True},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05, "maximize": True},
]

HPARAMS = {"lr": 0.01, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False, "maximize": False}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(sgd.RULE, lambda p: torch.optim.SGD(p, lr=0.05, foreach=foreach, **flags), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_predict_matches_fused(check_rule, dtype):
    def make(params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, fused=True)

    check_rule(sgd.RULE, make, dtype)


def test_predict_follows_the_lr_of_each_step(check_rule):
    records = check_rule(
        sgd.RULE,
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        steps=5,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    )
    expected = [0.1, 0.1, 0.05, 0.05, 0.025]
    assert expected == [rec.hparams["lr"] for rec in records if rec.name == "lin.bias"]


def test_first_momentum_step_uses_the_gradient_as_buffer():
    param = torch.tensor([1.0, 2.0], dtype=torch.float64)
    grad = torch.tensor([-10.0, 4.0], dtype=torch.float64)
    hparams = {**HPARAMS, "momentum": 0.9, "dampening": 0.5}
    expected = param - 0.01 * grad
    assert torch.equal(expected, sgd.RULE.predict(param, grad, {}, hparams))


def test_no_grad_leaves_param_unchanged():
    param = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert torch.equal(param, sgd.RULE.predict(param, None, {}, HPARAMS))


def test_explain_reference_case():
    # the README walkthrough: w=[[1,1]], b=[0], grads [[-10,-20]], [-10], lr 0.01
    assert ["w[0,1]: 1 − 0.01 · (−20) = 1.2"] == sgd.RULE.explain("w[0,1]", 1.0, -20.0, {}, HPARAMS)
    assert ["w[0,0]: 1 − 0.01 · (−10) = 1.1"] == sgd.RULE.explain("w[0,0]", 1.0, -10.0, {}, HPARAMS)
    assert ["b[0]: 0 − 0.01 · (−10) = 0.1"] == sgd.RULE.explain("b[0]", 0.0, -10.0, {}, HPARAMS)


def test_explain_reference_case_matches_predict():
    param = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    grad = torch.tensor([[-10.0, -20.0]], dtype=torch.float64)
    expected = torch.tensor([[1.1, 1.2]], dtype=torch.float64)
    assert torch.equal(expected, sgd.RULE.predict(param, grad, {}, HPARAMS))


def test_explain_momentum_weight_decay_nesterov():
    hparams = {**HPARAMS, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.1, "nesterov": False}
    expected = [
        "g: (−20) + 0.1 · 1 = −19.9",
        "b: 0.9 · 2 + 0.5 · (−19.9) = −8.15",
        "w[0,1]: 1 − 0.01 · (−8.15) = 1.0815",
    ]
    assert expected == sgd.RULE.explain("w[0,1]", 1.0, -20.0, {"momentum_buffer": 2.0}, hparams)
    hparams = {**HPARAMS, "momentum": 0.5, "nesterov": True, "maximize": True}
    expected = [
        "g: −(−20) = 20",
        "b: g = 20",
        "g: 20 + 0.5 · 20 = 30",
        "w[0,1]: 1 − 0.01 · 30 = 0.7",
    ]
    assert expected == sgd.RULE.explain("w[0,1]", 1.0, -20.0, {}, hparams)


def test_explain_matches_predict(check_explain):
    check_explain(sgd.RULE, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True))
    check_explain(sgd.RULE, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, maximize=True))


def test_text_shows_only_the_selected_branches():
    assert "θ ← θ − γ·g" == sgd.RULE.text(HPARAMS)
    expected = "g ← g + λ·θ\nb ← μ·b + g   (b ← g at t = 1)\ng ← g + μ·b\nθ ← θ − γ·g"
    assert expected == sgd.RULE.text({**HPARAMS, "weight_decay": 0.1, "momentum": 0.9, "nesterov": True})


def test_latex_shows_only_the_selected_branches():
    assert r"\theta_t \leftarrow \theta_{t-1} - \gamma g_t" == sgd.RULE.latex(HPARAMS)
    latex = sgd.RULE.latex({**HPARAMS, "momentum": 0.9, "dampening": 0.1})
    assert latex.startswith(r"\begin{aligned}")
    assert r"(1 - \tau) g_t" in latex
