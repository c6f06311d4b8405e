"""verify=True: every update checked against its rule in the training process (tracer._verify)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tracer
import tracer._verify

OPTIMIZERS = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "RMSprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    "Adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1),
    "NAdam": lambda ps: torch.optim.NAdam(ps, lr=0.01),
    "Rprop": lambda ps: torch.optim.Rprop(ps, lr=0.01),
}


def _model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 32), nn.Dropout(0.2), nn.Tanh(), nn.Linear(32, 1)).to(dtype)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 48, dtype=model[0].weight.dtype), torch.randn(8, 1, dtype=model[0].weight.dtype)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_update_of_a_large_weight_matches(tmp_path, name, dtype):
    model = _model(dtype)
    assert model[0].weight.numel() > tracer.DEFAULT_MAX_VALUES
    optimizer = OPTIMIZERS[name](model.parameters())
    with tracer.trace(model, optimizer, path=tmp_path / "t", verify=True) as run:
        _train(model, optimizer)
    updates = tracer.load(run, kind="update")
    assert 12 == len(updates)
    assert updates.set_index("name")["values"].isna()["0.weight"].all()  # not stored, checked all the same
    assert [True] * 12 == updates["rule_matches"].tolist(), updates[["step", "name", "rule_error"]]
    scale = (updates["norm"] / updates["numel"] ** 0.5).to_numpy()
    assert (updates["rule_error"].to_numpy() <= 1e-3 * scale).all()


# float64: the issue's 1 + 1e-6; float32's step tolerance (3.1e-5 of the step) allows that much
@pytest.mark.parametrize("dtype, scale", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_a_perturbed_update_is_flagged(tmp_path, dtype, scale):
    class PerturbedSGD(torch.optim.SGD):
        """SGD whose every update is scaled by 1 + scale."""

        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"]]
            before = [p.detach().clone() for p in params]
            super().step(closure)
            with torch.no_grad():
                for p, b in zip(params, before):
                    p.copy_(b + (p - b) * (1 + scale))

    model = _model(dtype)
    optimizer = PerturbedSGD(model.parameters(), lr=0.1, momentum=0.9)
    with tracer.trace(model, optimizer, path=tmp_path / "t", verify=True) as run:
        _train(model, optimizer)
    updates = tracer.load(run, kind="update")
    assert [False] * 12 == updates["rule_matches"].tolist()
    assert (updates["rule_error"] > 0).all()


def test_verify_changes_nothing_in_training(tmp_path):
    def run(verify: bool | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = _model(torch.float32)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        if verify is None:
            _train(model, optimizer)
        else:
            with tracer.trace(model, optimizer, path=tmp_path / str(verify), verify=verify, max_values=0):
                _train(model, optimizer)
        return [p.detach().clone() for p in model.parameters()], torch.get_rng_state()

    plain, plain_rng = run(None)
    for verify in (True, False):
        params, rng = run(verify)
        assert all(torch.equal(a, b) for a, b in zip(plain, params))
        assert torch.equal(plain_rng, rng)


def test_without_verify_the_columns_are_null(tmp_path):
    model = _model(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        _train(model, optimizer, steps=1)
    updates = tracer.load(run, kind="update")
    assert 4 == len(updates)
    assert updates["rule_matches"].isna().all() and updates["rule_error"].isna().all()


def test_no_rule_gives_nulls_without_a_warning(tmp_path):
    class Halving(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(0.5)

    model = _model(torch.float64)
    optimizer = Halving(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tracer.trace(model, optimizer, path=tmp_path / "t", verify=True) as run:
            _train(model, optimizer, steps=2)
    updates = tracer.load(run, kind="update")
    assert 8 == len(updates)
    assert updates["rule_matches"].isna().all()


def test_a_failure_to_verify_is_one_warning_and_nulls(tmp_path, monkeypatch):
    def broken(t):
        raise RuntimeError("no copy today")

    monkeypatch.setattr(tracer._verify, "wide", broken)
    model = _model(torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="could not verify.*RuntimeError: no copy today") as caught:
        with tracer.trace(model, optimizer, path=tmp_path / "t", verify=True) as run:
            _train(model, optimizer, steps=2)
    assert 1 == sum("could not verify" in str(w.message) for w in caught)
    updates = tracer.load(run, kind="update")
    assert 8 == len(updates)  # the rows are all there
    assert updates["rule_matches"].isna().all()


def test_verdict_of_a_step_by_hand():
    p = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([p], lr=0.5)
    p.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    before = p.detach().clone()
    pending = tracer._verify.predict(optimizer, '{"lr": 0.5}', p, {})
    assert pending is not None
    assert torch.equal(torch.tensor([0.5, 2.5], dtype=torch.float64), pending.predicted)
    assert (0.25, False) == tracer._verify.verdict(pending, before, torch.tensor([0.5, 2.75], dtype=torch.float64))
    assert (0.0, True) == tracer._verify.verdict(pending, before, torch.tensor([0.5, 2.5], dtype=torch.float64))


def test_nan_follows_the_policy():
    before = torch.tensor([float("nan"), 1.0], dtype=torch.float64)
    same = tracer._verify.Prediction(before.clone(), "float64")
    assert (0.0, True) == tracer._verify.verdict(same, before, before.clone())  # NaN against NaN matches
    finite = tracer._verify.Prediction(torch.tensor([1.0, 1.0], dtype=torch.float64), "float64")
    assert not tracer._verify.verdict(finite, torch.ones(2, dtype=torch.float64), before.clone())[1]


def test_the_step_term_of_the_policy_applies():
    # θ = 1 → θ̂ = 101: an error within step_rtol·|θ̂ − θ| (but beyond rtol·|θ̂|) matches
    from tracer._check_tolerance import Tolerance

    rtol, atol, step_rtol = Tolerance().resolve("float64")
    bound = atol + rtol * 101 + step_rtol * 100
    assert bound / 2 > atol + rtol * 101  # the quick test alone would not pass it
    before = torch.tensor([1.0], dtype=torch.float64)
    prediction = tracer._verify.Prediction(torch.tensor([101.0], dtype=torch.float64), "float64")
    assert tracer._verify.verdict(prediction, before, torch.tensor([101.0 + bound / 2], dtype=torch.float64))[1]
    assert not tracer._verify.verdict(prediction, before, torch.tensor([101.0 + 2 * bound], dtype=torch.float64))[1]


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_complex_parameters_are_verified(tmp_path, name):
    torch.manual_seed(0)
    model = _ComplexLinear()
    optimizer = OPTIMIZERS[name](model.parameters())
    with tracer.trace(model, optimizer, path=tmp_path / "t", verify=True, max_values=0) as run:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(4, 3, dtype=torch.complex128)).abs().pow(2).sum().backward()
            optimizer.step()
    assert [True] * 3 == tracer.load(run, kind="update")["rule_matches"].tolist()


def test_a_step_that_raised_is_not_verified(tmp_path):
    class Failing(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            raise RuntimeError("after the update")

    model = _model(torch.float64)
    optimizer = Failing(model.parameters(), lr=0.1)
    with tracer.trace(model, optimizer, path=tmp_path / "t", verify=True) as run:
        with pytest.raises(RuntimeError, match="after the update"):
            _train(model, optimizer, steps=1)
    updates = tracer.load(run, kind="update")
    assert 4 == len(updates)
    assert updates["rule_matches"].isna().all()


class _ComplexLinear(nn.Module):
    """x·wᵀ with a complex weight (nn.Linear(...).to(complex) warns that complex modules are new)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3, dtype=torch.complex128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T
