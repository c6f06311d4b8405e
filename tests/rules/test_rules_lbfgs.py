"""LBFGS's rule against the real `torch.optim.LBFGS`, and where it refuses to predict."""

import pytest
import torch

from tracer.rules import CannotPredict, lbfgs

HPARAMS = {
    "lr": 1.0,
    "max_iter": 1,
    "max_eval": 1,
    "tolerance_grad": 1e-7,
    "tolerance_change": 1e-9,
    "history_size": 100,
    "line_search_fn": None,
}


def train(helpers, dtype, steps, bias=False, **kwargs):
    """LBFGS steps on a TinyNet (one closure, same batch); each record's hparams name the group's parameters."""
    model, loss_fn = helpers.tiny_problem(dtype, bias=bias, fixed_batch=True)
    optimizer = torch.optim.LBFGS(model.parameters(), **kwargs)
    records = helpers.replay_steps(model, optimizer, loss_fn, steps=steps, closure=True)
    names = [name for name, _ in model.named_parameters()]
    for rec in records:
        rec.hparams = {**rec.hparams, "params": names}  # as a caller that keeps the group's parameter names
    return records


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lr", [1.0, 0.05])
def test_first_step_matches_torch(helpers, lr, dtype):
    records = train(helpers, dtype, steps=1, lr=lr, max_iter=1)
    assert {} == records[0].state
    helpers.assert_replay(records, lbfgs.RULE, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("history_size", [100, 2])
def test_later_steps_replay_the_history(helpers, history_size, dtype):
    # one parameter tensor, max_iter=1: the two-loop recursion is rebuilt from the state
    records = train(helpers, dtype, steps=5, lr=0.5, max_iter=1, history_size=history_size)
    helpers.assert_replay(records, lbfgs.RULE, dtype)
    assert min(history_size, 3) == records[-1].state["old_dirs"].shape[0]


def test_later_steps_need_no_param_count(helpers):
    # once the state holds the history, the size of d shows the optimizer holds one tensor
    records = train(helpers, torch.float64, steps=3, lr=0.5, max_iter=1)
    for rec in records[1:]:
        del rec.hparams["params"]
    helpers.assert_replay(records[1:], lbfgs.RULE, torch.float64)


def test_first_step_is_a_scaled_gradient_step():
    param = torch.tensor([1.0, 2.0], dtype=torch.float64)
    grad = torch.tensor([-1.0, 3.0], dtype=torch.float64)  # ‖g‖₁ = 4, so t = lr / 4
    expected = param - 0.25 * grad
    assert torch.equal(expected, lbfgs.RULE.predict(param, grad, {}, {**HPARAMS, "params": 1}))


def test_converged_gradient_leaves_param_unchanged():
    param = torch.tensor([1.0, 2.0], dtype=torch.float64)
    tiny = torch.full((2,), 1e-9, dtype=torch.float64)
    assert torch.equal(param, lbfgs.RULE.predict(param, tiny, {}, {**HPARAMS, "params": ["w"]}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"max_iter": 20}, "max_iter=20"),
        ({"line_search_fn": "strong_wolfe"}, "line search"),
        ({"params": ["weight", "bias"]}, "2 parameters"),
        ({}, "single parameter tensor"),  # empty state, parameter count unknown
    ],
)
def test_cannot_predict(change, reason):
    param = torch.ones(2, dtype=torch.float64)
    with pytest.raises(CannotPredict, match=reason):
        lbfgs.RULE.predict(param, param, {}, {**HPARAMS, **change})


def test_missing_history_cannot_be_predicted():
    param = torch.ones(2, dtype=torch.float64)
    with pytest.raises(CannotPredict, match="history"):
        lbfgs.RULE.predict(param, param, {"n_iter": torch.tensor(1.0), "func_evals": torch.tensor(1.0)}, HPARAMS)


def test_several_parameters_are_detected_from_the_state(helpers):
    records = train(helpers, torch.float64, steps=2, bias=True, max_iter=1)
    weight_step2 = records[2]  # the state lives on the first parameter
    assert "lin.weight" == weight_step2.name
    del weight_step2.hparams["params"]
    with pytest.raises(CannotPredict, match="several parameters"):
        lbfgs.RULE.predict(weight_step2.param, weight_step2.grad, weight_step2.state, weight_step2.hparams)


def test_several_parameters_cannot_be_predicted(helpers):
    records = train(helpers, torch.float64, steps=2, bias=True, max_iter=1)
    for rec in records:
        with pytest.raises(CannotPredict):
            lbfgs.RULE.predict(rec.param, rec.grad, rec.state, rec.hparams)


def test_note_explains_the_limits():
    assert "max_iter=1" in lbfgs.RULE.note
    assert "single parameter tensor" in lbfgs.RULE.note


def test_text_shows_the_two_loop_recursion():
    text = lbfgs.RULE.text(HPARAMS)
    assert text.endswith("θ ← θ + t·d")
    assert "strong-Wolfe" in lbfgs.RULE.text({**HPARAMS, "line_search_fn": "strong_wolfe"})
    assert r"\theta \leftarrow \theta + t d" in lbfgs.RULE.latex(HPARAMS)


def test_explain_first_step():
    expected = [
        "d: −(−20) = 20",
        "t: min(1, 1/‖g‖₁) · 1   (‖g‖₁ over every parameter)",
        "w[0,1]: 1 + t · 20",
    ]
    assert expected == lbfgs.RULE.explain("w[0,1]", 1.0, -20.0, {}, HPARAMS)
