"""The tutorial the project grew from, as its reader writes it: the walkthrough prints every
number of the tutorial, in the tutorial's order (its two slips left out)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.optim as optim

import tracer
from tracer._cli import main


def _tutorial(path):
    """The tutorial's code, unbatched, with the weight as current torch needs it ([[1., 1.]])."""
    x = torch.tensor([1.0, 2.0])
    y = torch.tensor([8.0])
    model = nn.Linear(2, 1)
    model.weight.data = torch.tensor([[1.0, 1.0]])
    model.bias.data = torch.tensor([0.0])
    loss_fn = nn.MSELoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, optimizer, path=path) as run:
        pred = model(x)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()
    return run


# The tutorial's numbers and steps of explanation, in its order.
TUTORIAL = [
    "w₁ = weight[0,0] = 1", "w₂ = weight[0,1] = 1", "b = bias[0] = 0",  # the parameters
    "pred = model(x)",  # step 1, the forward pass
    "ŷ = w₁x₁ + w₂x₂ + b",  # the formula before the numbers
    "x₁ = 1, x₂ = 2",
    "ŷ = 1·1 + 1·2 + 0 = 3 ✓",
    "predicted 3, but the target is 8",
    "loss_fn(pred, y)",  # step 2, the loss
    "e = ŷ − y",
    "L = 1/N · Σᵢ (ŷᵢ − yᵢ)²",
    "e = 3 − 8 = −5",
    "N = 1, so L = (ŷ − y)² = (3 − 8)² = 25 ✓",
    "loss.backward()",  # step 3, the gradients
    "∂L/∂w₁ = ∂L/∂e · ∂e/∂ŷ · ∂ŷ/∂w₁",
    "L = e²  ⇒  ∂L/∂e = 2e",
    "e = ŷ − y  ⇒  ∂e/∂ŷ = 1",
    "⇒  ∂ŷ/∂w₁ = x₁, ∂ŷ/∂w₂ = x₂, ∂ŷ/∂b = 1",
    "∂L/∂w₁ = 2e·1·x₁ = 2ex₁",
    "∂L/∂w₂ = 2e·1·x₂ = 2ex₂",
    "∂L/∂b = 2e·1·1 = 2e",
    "∂L/∂w₁ = 2ex₁ = 2·(−5)·1 = −10 ✓",
    "∂L/∂w₂ = 2ex₂ = 2·(−5)·2 = −20 ✓",
    "∂L/∂b = 2e = 2·(−5) = −10 ✓",
    "raising w₁ a little lowers the loss, by about 10 times the change",  # what −10 means
    "optimizer.step()",  # step 4, the update
    "θ ← θ − γ·g",  # the rule before the numbers
    "g = ∂L/∂θ is its gradient",
    "γ = 0.01 is the learning rate",
    "w₁ (weight[0,0]): 1 − 0.01 · (−10) = 1.1",
    "w₂ (weight[0,1]): 1 − 0.01 · (−20) = 1.2",
    "b (bias[0]): 0 − 0.01 · (−10) = 0.1",
]  # fmt: skip
SUMMARY = [r"w₁ \(weight\[0,0\]\) *\| 1 *\| −10 *\| 1\.1", r"w₂ \(weight\[0,1\]\) *\| 1 *\| −20 *\| 1\.2",
           r"b \(bias\[0\]\) *\| 0 *\| −10 *\| 0\.1"]  # fmt: skip


def _assert_in_order(text: str, expected: list[str]) -> int:
    at = 0
    for piece in expected:
        found = text.find(piece, at)
        assert found >= 0, f"{piece!r} missing after position {at}:\n{text[at : at + 600]}"
        at = found + len(piece)
    return at


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    return _tutorial(tmp_path_factory.mktemp("tutorial") / "t")


def test_the_tutorials_own_code_prints_every_number_in_its_order(tutorial):
    text = str(tracer.report(tutorial))
    at = _assert_in_order(text, TUTORIAL)
    rest = text[at:]
    positions = [re.search(row, rest) for row in SUMMARY]
    assert all(positions), rest
    assert [m.start() for m in positions] == sorted(m.start() for m in positions)  # type: ignore[union-attr]
    assert "✗" not in text.split("could not be checked.")[1].split("Updates\n")[0]


def test_the_tutorials_slips_are_not_copied(tutorial):
    text = str(tracer.report(tutorial))
    assert "y = 3" not in text  # the tutorial's step 1 calls the prediction y
    assert "target is 8" in text


def test_the_walkthrough_is_in_every_format(tutorial, capsys):
    rep = tracer.report(tutorial)
    md, page, latex = rep.to_markdown(), rep.to_html(findings=False), rep.to_latex()
    _assert_in_order(md, TUTORIAL)
    for rendering in (page, latex):
        for piece in ("ŷ = 1·1 + 1·2 + 0 = 3", "2·(−5)·2 = −20", "1 − 0.01 · (−20) = 1.2"):
            assert piece in rendering
    assert 0 == main(["report", str(tutorial.path)])  # the command line's default: the same text
    assert str(rep) == capsys.readouterr().out


def test_a_batch_of_the_tutorials_example_is_a_mean_over_the_examples(tmp_path):
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[8.0], [4.0]], dtype=torch.float64)
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        nn.MSELoss()(model(x), y).backward()
        optimizer.step()
    text = str(tracer.report(run))
    _assert_in_order(text, [
        "ŷ⁽¹⁾ = 1·1 + 1·2 + 0 = 3 ✓", "ŷ⁽²⁾ = 1·2 + 1·0 + 0 = 2 ✓",
        "e⁽¹⁾ = 3 − 8 = −5", "e⁽²⁾ = 2 − 4 = −2", "L = ((−5)² + (−2)²)/2 = 14.5 ✓",
        "∂L/∂w₁ = Σₙ 2e⁽ⁿ⁾/N · x₁⁽ⁿ⁾",
        "∂L/∂w₁ = (2·(−5)·1 + 2·(−2)·2)/2 = −9 ✓",  # (−10 − 8)/2
        "∂L/∂w₂ = (2·(−5)·2 + 2·(−2)·0)/2 = −10 ✓",
        "∂L/∂b = (2·(−5) + 2·(−2))/2 = −7 ✓",
        "w₁ (weight[0,0]): 1 − 0.01 · (−9) = 1.09",
    ])  # fmt: skip
