"""The step walkthrough of small models: forward, loss and chain rule, derived, checked (✓) by the trace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tracer
from tracer._explain import Walk
from tracer._render import to_text


def _report(tmp_path, model, x, loss_fn, passes=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(passes):
            loss_fn(model(x)).backward()
        opt.step()
    return tracer.report(run)


def _walk(tmp_path, model, x, loss_fn, passes=1) -> str:
    """The walkthrough of step 0 as text, or the sentence saying why there is none."""
    walk = _report(tmp_path, model, x, loss_fn, passes).walkthroughs[0]
    return to_text(list(walk.blocks)) if isinstance(walk, Walk) else walk


def _linear(n_in, n_out, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).double()


def _f64(*rows):
    """One row: an unbatched example, as the tutorial writes it; several: a batch."""
    return torch.tensor(rows[0] if len(rows) == 1 else rows, dtype=torch.float64)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Sigmoid, nn.Tanh])
def test_sequential_chain_every_number_checks(tmp_path, activation):
    model = nn.Sequential(_linear(2, 3), activation(), _linear(3, 1, seed=1))
    walk = _walk(tmp_path, model, _f64([0.5, -1.0]), lambda out: nn.functional.mse_loss(out, _f64([2.0])))
    assert "1. Forward pass" in walk and "3. Gradients: loss.backward()" in walk and "chain rule" in walk
    assert walk.count("✓") >= 3 + 3 + 1 + 1 + 4 + 3 + 3 + 9  # units, loss, ∂L/∂ŷ, last layer, h, z, first layer
    assert "✗" not in walk
    assert f"= {activation.__name__}:" in walk
    assert "∂L/∂0.weight[2,1]" in walk  # down to the first layer's gradients
    assert "h = W·a + b (a Linear layer)  ⇒  ∂h[j]/∂W[j,i] = a[i]" in walk  # derived, before the numbers
    assert walk.index("⇒") < walk.index("∂L/∂2.weight[0,0] =")
    assert "(ŷ is h[2], the output of the last layer)" in walk


def test_a_batch_is_worked_example_by_example(tmp_path):
    model = nn.Sequential(_linear(2, 2), nn.ReLU(), _linear(2, 1, seed=1))
    x, y = _f64([0.5, -1.0], [1.0, 2.0], [-1.0, 0.0]), _f64([2.0], [0.0], [1.0])
    walk = _walk(tmp_path, model, x, lambda out: nn.functional.mse_loss(out, y))
    assert "h[0][1]⁽³⁾ = " in walk  # the third example's second unit
    assert "∂L/∂0.weight[1,0] = Σₙ ∂L/∂h[0][1]⁽ⁿ⁾ · x[0]⁽ⁿ⁾ = " in walk
    assert "With the numbers (N = 3):" in walk and "✗" not in walk


@pytest.mark.parametrize(
    "reduction, shown", [("mean", "L = ((−5)² + (−2)²)/2 = 14.5 ✓"), ("sum", "L = (−5)² + (−2)² = 29 ✓")]
)
def test_mse_mean_or_sum_is_the_one_the_loss_was(tmp_path, reduction, shown):
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    y = _f64([8.0], [4.0])
    walk = _walk(
        tmp_path, model, _f64([1.0, 2.0], [2.0, 0.0]), lambda out: nn.functional.mse_loss(out, y, reduction=reduction)
    )
    assert shown in walk
    assert ("∂L/∂eᵢ = 2eᵢ/N" if reduction == "mean" else "∂L/∂eᵢ = 2eᵢ ") in walk
    expected = "(2·(−5)·1 + 2·(−2)·2)/2 = −9 ✓" if reduction == "mean" else "2·(−5)·1 + 2·(−2)·2 = −18 ✓"
    assert f"∂L/∂w₁ = {expected}" in walk


def test_l1_loss_is_explained(tmp_path):
    walk = _walk(tmp_path, _linear(2, 1), _f64([1.0, 2.0]), lambda out: nn.functional.l1_loss(out, _f64([8.0])))
    assert "Mean absolute error" in walk and "✗" not in walk
    assert "sign(ŷᵢ − yᵢ)/N" in walk
    assert "∂L/∂w₂ = (−1)·2 = −2 ✓" in walk  # the prediction is below 8: ∂L/∂ŷ = −1


def test_binary_cross_entropy_recovers_the_target(tmp_path):
    model = nn.Sequential(_linear(2, 1), nn.Sigmoid())
    walk = _walk(tmp_path, model, _f64([1.0, 2.0]), lambda out: nn.functional.binary_cross_entropy(out, _f64([1.0])))
    assert "but the target is 1 (recovered" in walk
    assert "Binary cross-entropy" in walk and "✗" not in walk
    assert "h = σ(z) = 1 / (1 + e^(−z))  ⇒  ∂h/∂z = σ(z)(1 − σ(z))" in walk


def test_cross_entropy_recovers_the_class(tmp_path):
    walk = _walk(
        tmp_path, _linear(2, 3), _f64([1.0, 2.0]), lambda out: nn.functional.cross_entropy(out, torch.tensor(2))
    )
    assert "The target class is 2" in walk
    assert "Cross-entropy" in walk and "✗" not in walk
    assert "∂L/∂ŷ[j] = softmax(ŷ)[j] − (1 if j = c else 0)" in walk


def test_cross_entropy_of_a_batch_recovers_each_class(tmp_path):
    x = _f64([1.0, 2.0], [0.0, -1.0])
    walk = _walk(tmp_path, _linear(2, 3), x, lambda out: nn.functional.cross_entropy(out, torch.tensor([2, 0])))
    assert "The target class is 2, 0" in walk and "✗" not in walk
    assert "c⁽²⁾ = 0: −log" in walk


def test_the_signs_and_sizes_of_the_gradients_are_explained(tmp_path):
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(_f64([1.0, 1.0]))
        model.bias.zero_()
    walk = _walk(tmp_path, model, _f64([1.0, 3.0]), lambda out: nn.functional.mse_loss(out, _f64([0.0])))
    # ŷ = 4 is above the target 0: every gradient is positive, and x₂ = 3 makes w₂'s the largest
    assert "∂L/∂w₁ = 8 is positive: raising w₁ a little raises the loss, by about 8 times the change" in walk
    assert "The loss reacts most to w₂: |∂L/∂w₂| = 24 is the largest (∂ŷ/∂w₂ = x₂ = 3 is the largest factor)" in walk


@pytest.mark.parametrize(
    "case, says",
    [
        ("gelu", "GELU is not worked by hand"),
        ("sum", "the loss (Sum) is not worked by hand"),
        ("batch", "the batch holds 8 examples; a walkthrough works at most 4 by hand"),
        ("twice", "the model ran more than once in a step"),
        ("image", "the input has shape [1, 1, 2]"),
    ],
)
def test_models_not_covered_say_why_in_one_sentence(tmp_path, case, says):
    model = nn.Sequential(_linear(2, 2), nn.GELU(), _linear(2, 1)) if case == "gelu" else _linear(2, 1)
    x = {"batch": torch.ones(8, 2, dtype=torch.float64), "image": torch.ones(1, 1, 2, dtype=torch.float64)}.get(
        case, _f64([1.0, 2.0])
    )
    loss = (lambda out: out.sum()) if case in ("gelu", "sum") else (lambda out: out.pow(2).mean())
    rep = _report(tmp_path, model, x, loss, passes=2 if case == "twice" else 1)
    reason = rep.walkthroughs[0]
    assert isinstance(reason, str) and says in reason
    text = str(rep)
    assert f"No walkthrough of step 0: {reason}." in text  # never silently left out
    assert "1. Forward pass" not in text and 1 == text.count(reason)


def test_a_large_model_says_why_once_and_reads_no_values(tmp_path):
    model = nn.Sequential(_linear(32, 32), nn.ReLU(), _linear(32, 1))
    rep = _report(tmp_path, model, torch.ones(1, 32, dtype=torch.float64), lambda out: out.pow(2).mean())
    assert {} == rep.walkthroughs
    assert "No walkthrough: the model is too large to work by hand" in str(rep)
    assert 1 == rep.to_markdown().count("No walkthrough")


def test_a_name_filter_gives_no_walkthrough_and_says_so(reference_trace):
    text = str(tracer.report(reference_trace, name="weight"))
    assert "No walkthrough: a name filter selects only some parameters" in text


def test_a_step_with_a_nan_says_so(tmp_path):
    walk = _walk(tmp_path, _linear(2, 1), _f64([1.0, float("nan")]), lambda out: out.pow(2).mean())
    assert "a value of this step is NaN or infinite (tracer diagnose finds where it started)" == walk


def test_a_step_the_grad_scaler_skipped_says_why_it_is_not_worked(tmp_path):
    model = _linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for scale in (1.0, float("inf")):
            opt.zero_grad()
            scaler.scale(nn.functional.mse_loss(model(_f64([1.0, 2.0])), _f64([8.0])) * scale).backward()
            scaler.step(opt)
            scaler.update()
    text = str(tracer.report(run, step=1))
    assert "No walkthrough of step 1: a value of this step is NaN or infinite" in text  # the inf loss
    assert "Step 1: ⚠ The GradScaler skipped SGD.step() at this step" in text
