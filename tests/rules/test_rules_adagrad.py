"""Adagrad's rule against the real `torch.optim.Adagrad`, dense and sparse."""

import pytest
import torch

from tracer.rules import adagrad

FLAGS = [
    {},
    {"lr_decay": 0.1},
    {"weight_decay": 0.1},
    {"initial_accumulator_value": 0.5},
    {"eps": 1e-2},
    {"lr_decay": 0.05, "weight_decay": 0.1, "initial_accumulator_value": 0.2, "maximize": True},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("flags", FLAGS)
def test_predict_matches_torch(check_rule, flags, foreach, dtype):
    check_rule(adagrad.RULE, lambda p: torch.optim.Adagrad(p, lr=0.05, foreach=foreach, **flags), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_predict_matches_fused(check_rule, dtype):
    def make(params):
        return torch.optim.Adagrad(params, lr=0.05, lr_decay=0.1, initial_accumulator_value=0.2, fused=True)

    check_rule(adagrad.RULE, make, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_predict_matches_sparse_embedding(helpers, dtype):
    torch.manual_seed(0)
    model = torch.nn.Embedding(10, 3, sparse=True, dtype=dtype)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)
    batches = iter(torch.tensor([[1, 2, 2], [4, 1, 7], [0, 0, 9], [3, 5, 2], [8, 6, 1]]))
    with torch.sparse.check_sparse_tensor_invariants():  # opting in also silences torch's warning
        records = helpers.replay_steps(model, optimizer, lambda: model(next(batches)).sin().sum())
    helpers.assert_replay(records, adagrad.RULE, dtype)
    untouched = records[0].grad[5]  # row 5 is not looked up in the first batch
    assert torch.equal(torch.zeros(3, dtype=torch.float64), untouched)


def test_state_is_filled_at_construction(helpers):
    # Adagrad fills step and sum in __init__, so even the first snapshot has them
    model, loss_fn = helpers.tiny_problem(torch.float64)
    optimizer = torch.optim.Adagrad(model.parameters(), initial_accumulator_value=0.3)
    records = helpers.replay_steps(model, optimizer, loss_fn, steps=1)
    assert {"step", "sum"} == set(records[0].state)
    helpers.assert_replay(records, adagrad.RULE, torch.float64)


def test_explain_first_step():
    hparams = {"lr": 0.01, "lr_decay": 0, "weight_decay": 0, "initial_accumulator_value": 0, "eps": 1e-10}
    expected = ["s: 0 + (−20)² = 400", "w: 1 − 0.01 · (−20) / (√400 + ε) = 1.01"]
    assert expected == adagrad.RULE.explain("w", 1.0, -20.0, {"step": 0.0, "sum": 0.0}, hparams)


def test_explain_matches_predict(check_explain):
    check_explain(adagrad.RULE, lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.1, weight_decay=0.1))
