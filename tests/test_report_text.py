"""The report as compact text for a terminal: the rule once per optimizer and param group,
one line per update, the walkthrough in full only where the model is small."""

from __future__ import annotations

import re

import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer
from tracer._cli import main
from tracer._report_text import WALK_LINES


def _mlp_run(path, *, width=4, batch=8, steps=20, groups=False):
    """Five Linear layers (10 parameters) of ``width``, SGD with momentum, ``steps`` steps."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(5):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).double()
    params = ([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2:].parameters()}]
              if groups else model.parameters())  # fmt: skip
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    with tracer.trace(model, opt, path=path) as run:
        for _ in range(steps):
            opt.zero_grad()
            x = torch.randn(batch, width, dtype=torch.float64)
            nn.functional.mse_loss(model(x), torch.zeros_like(x)).backward()
            opt.step()
            if groups:
                sched.step()
    return run


@pytest.fixture(scope="module")
def twenty(tmp_path_factory):
    return tracer.report(_mlp_run(tmp_path_factory.mktemp("twenty") / "t"))


def _update_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"  \d+ +\| ", line)]


def test_twenty_steps_of_ten_parameters_are_a_few_hundred_lines(twenty):
    text = twenty.to_text()
    assert text == str(twenty)
    assert 200 < text.count("\n") < 300 < 5000 < twenty.to_markdown().count("\n")
    assert 1 == text.count("b ← μ·b + g")  # the rule, once
    lines = _update_lines(text)
    assert 20 * 10 == len(lines) and all(" | ✓ rule | " in line for line in lines)
    assert 1 == text.count("No walkthrough of steps 0–19: a tensor has more than max_elements=16")  # once


def test_one_line_per_update_holds_the_error_and_the_norms(reference_trace):
    rep = tracer.report(reference_trace)
    header = next(line for line in str(rep).splitlines() if line.startswith("  step "))
    assert ["step", "parameter", "check", "max error", "‖g‖", "‖Δθ‖", "‖θ‖", "‖Δθ‖/‖θ‖"] == [
        cell.strip() for cell in header.split("|")
    ]
    weight, bias = (line.split("|") for line in _update_lines(str(rep)))
    assert ["0", "weight", "✓ rule", "0", "22.3607", "0.223607", "1.41421", "0.158114"] == [c.strip() for c in weight]
    assert "–" == bias[-1].strip()  # a zero parameter (b = 0) has no update ratio
    assert "nan" not in str(rep)


def test_each_rule_once_per_optimizer_and_param_group_with_its_schedule(tmp_path):
    text = str(tracer.report(_mlp_run(tmp_path / "t", steps=4, groups=True)))
    rules = text.split("Update rules")[1].split("Updates")[0]
    assert 2 == rules.count("b ← μ·b + g")
    assert "SGD: 0.weight, 0.bias\n" in rules
    assert "SGD, param group 1: 2.weight, 2.bias, 4.weight, 4.bias, 6.weight, 6.bias and 2 more" in rules
    assert "γ = 0.5 (lr) at step 0 … 0.0625 at step 3 (4 values), μ = 0.9 (momentum)" in rules
    assert "γ = 0.01 (lr) at step 0 … 0.00125 at step 3 (4 values)" in rules


def test_a_tampered_update_is_a_cross(reference_trace):
    df = tracer.load(reference_trace)
    i = df.index[(df.kind == "update") & (df.name == "weight")][0]
    df.at[i, "values"] = df.at[i, "values"] + [0.0, 1e-6]
    text = str(tracer.report(df))
    weight = next(line for line in _update_lines(text) if "| weight " in line)
    assert "✗ rule" in weight and "1e−06" in weight
    assert "✗ 1 differ" in text


class Custom(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(group["lr"] * p.grad.sign())


def test_updates_not_checked_say_why_once(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    opt = Custom(model.parameters())
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt, steps=2)
    text = str(tracer.report(run))
    assert 4 == sum("| – not checked |" in line for line in _update_lines(text))
    assert 1 == text.split("Update rules")[1].count("no update rule is known for Custom")  # once, not per line
    assert "– Not checked (4 updates): no update rule is known for Custom" in text


def test_the_walkthrough_is_printed_for_the_first_step_and_offered_for_the_others(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt, steps=3)
    text = str(tracer.report(run))
    assert 1 == text.count("worked by hand\n") and "Step 0, worked by hand" in text
    assert "Steps 1–2 can be worked the same way: tracer report PATH --step N" in text
    one = str(tracer.report(run, step=2))
    assert "Step 2, worked by hand" in one and "ŷ = 1.2·1 + 1.4·2 + 0.2 = 4.2 ✓" not in one  # step 2 starts elsewhere
    assert 1 == len(_update_lines(one)) - 1


def test_a_long_walkthrough_is_offered_not_printed(tmp_path):
    run = _mlp_run(tmp_path / "t", batch=2, steps=2)
    text = str(tracer.report(run))
    found = re.search(r"Steps 0–1 can be worked by hand, step 0 in (\d+) lines: tracer report PATH --step 0", text)
    assert found and int(found.group(1)) > WALK_LINES
    assert "1. Forward pass" not in text and text.count("\n") < 100
    assert "1. Forward pass" in str(tracer.report(run, step=0))  # asked for: printed in full


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "fmt, says", [("text", "Updates\n-------"), ("markdown", "$$"), ("latex", "\\["), ("html", "<!DOCTYPE html>")]
)
def test_the_command_line_writes_each_format(capsys, reference_trace, fmt, says):
    code, out, err = run_main(capsys, "report", reference_trace, "--format", fmt)
    assert (0, "") == (code, err)
    assert says in out and "weight" in out and "SGD" in out


@pytest.mark.parametrize(
    "suffix, says", [(".md", "$$"), (".html", "<!DOCTYPE html>"), (".tex", "\\["), (".txt", "Updates\n-------")]
)
def test_the_command_lines_output_format_follows_the_suffix(capsys, reference_trace, tmp_path, suffix, says):
    target = tmp_path / f"report{suffix}"
    code, out, _ = run_main(capsys, "report", reference_trace, "-o", target)
    assert (0, f"wrote {target}\n") == (code, out)
    assert says in target.read_text(encoding="utf-8")
