"""SparseAdam's rule against the real `torch.optim.SparseAdam` on nn.Embedding(sparse=True)."""

import pytest
import torch

from tracer.rules import sparse_adam

BATCHES = [[1, 2, 2], [4, 1, 7], [0, 0, 9], [3, 5, 2], [8, 6, 1]]


def train(helpers, dtype, masks=None, **kwargs):
    """Five SparseAdam steps on an embedding; ``masks[i]`` zeroes columns of step i's gradient."""
    torch.manual_seed(0)
    model = torch.nn.Embedding(10, 4, sparse=True, dtype=dtype)
    optimizer = torch.optim.SparseAdam(model.parameters(), lr=0.05, **kwargs)
    batches = iter(torch.tensor(BATCHES))
    weights = iter(torch.ones(5, 4, dtype=dtype) if masks is None else masks.to(dtype))

    def loss_fn():
        return (model(next(batches)).sin() * next(weights)).sum()

    with torch.sparse.check_sparse_tensor_invariants():  # opting in also silences torch's warning
        return helpers.replay_steps(model, optimizer, loss_fn)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("flags", [{}, {"maximize": True}, {"betas": (0.8, 0.99), "eps": 1e-3}])
def test_predict_matches_torch(helpers, flags, dtype):
    records = train(helpers, dtype, **flags)
    helpers.assert_replay(records, sparse_adam.RULE, dtype)
    # rows absent from a batch keep their value even though their moments are nonzero
    later = records[3]
    assert torch.equal(later.param[0], later.actual[0])
    assert bool((later.state["exp_avg"][0] != 0).any())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_entries_inside_a_looked_up_row_are_updated(helpers, dtype):
    # a zero gradient entry in a present row still decays its moments and moves:
    # presence is read per row, not per entry
    masks = torch.ones(5, 4)
    masks[1, 1] = 0.0
    records = train(helpers, dtype, masks=masks)
    helpers.assert_replay(records, sparse_adam.RULE, dtype)
    later = records[1]
    assert 0 == later.grad[1, 1].item()
    assert later.param[1, 1].item() != later.actual[1, 1].item()


def test_present_rows():
    grad = torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[False, False], [True, True], [False, False]])
    assert torch.equal(expected, sparse_adam.present(grad))
    assert torch.equal(torch.tensor([False, True]), sparse_adam.present(torch.tensor([0.0, -1.0])))


def test_all_zero_gradient_changes_nothing():
    param = torch.ones(3, 2, dtype=torch.float64)
    hparams = {"lr": 0.1, "betas": [0.9, 0.999], "eps": 1e-8, "maximize": False}
    assert torch.equal(param, sparse_adam.RULE.predict(param, torch.zeros(3, 2, dtype=torch.float64), {}, hparams))


def test_explain_matches_predict(helpers):
    records = train(helpers, torch.float64)
    for rec in records:
        index = (1, 2)
        lines = sparse_adam.RULE.explain(
            "w[1,2]",
            rec.param[index].item(),
            rec.grad[index].item(),
            helpers.element_state(rec.state, rec.param, index),
            rec.hparams,
        )
        predicted = sparse_adam.RULE.predict(rec.param, rec.grad, rec.state, rec.hparams)[index].item()
        assert pytest.approx(predicted, rel=6e-6) == helpers.final_number(lines[-1])


def test_note_states_the_assumption():
    assert "row" in sparse_adam.RULE.note
