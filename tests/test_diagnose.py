"""tracer.diagnose: each diagnostic triggered by a tiny model built to show it, silent on healthy runs."""

from __future__ import annotations

import copy
import dataclasses
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer
from tracer._diagnose import CODES, Finding, Findings, Thresholds, diagnose, html_section

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def codes(findings):
    return sorted({f.code for f in findings})


def only(findings, code, name=None):
    hits = [f for f in findings if f.code == code and (name is None or f.name == name)]
    assert len(hits) == 1, f"expected one {code} finding for {name!r}, got:\n{findings}"
    return hits[0]


def regression_data(n=64, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=dtype)
    y = x[:, :1] - 0.5 * x[:, 1:2] + torch.relu(x[:, 2:3])
    return x, y


def mlp(dtype=torch.float64, seed=0, width=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)).to(
        dtype
    )


def fit(path, model, optimizer, steps, *, x=None, y=None, batch=16, loss_fn=nn.functional.mse_loss, **options):
    """A plain training loop on mini-batches, traced into ``path``."""
    if x is None:
        x, y = regression_data(dtype=next(model.parameters()).dtype)
    g = torch.Generator().manual_seed(1)
    with tracer.trace(model, optimizer, path=path, **options) as run:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return run


# --------------------------------------------------------------------------- healthy runs: silence


def test_reference_example_has_no_findings(reference_trace):
    findings = diagnose(reference_trace)
    assert [] == list(findings)
    assert not findings.has_errors
    assert "no findings" in str(findings)


def test_reference_example_trained_to_convergence_has_no_findings(tmp_path):
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=30)
    assert [] == list(diagnose(run))


@pytest.mark.parametrize(
    "make_opt, options",
    [
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), {}),
        (lambda p: torch.optim.Adam(p, lr=0.01), {}),
        (lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01), {"max_values": 0}),
        (lambda p: torch.optim.SGD(p, lr=0.1), {"every": 2}),
    ],
    ids=["sgd-momentum", "adam", "adamw-stats-only", "sgd-every-2"],
)
def test_converging_mlp_has_no_findings(tmp_path, make_opt, options):
    model = mlp()
    run = fit(tmp_path / "t", model, make_opt(model.parameters()), 40, **options)
    loss = tracer.load(run.path, kind="loss")["mean"]
    assert loss.iloc[-5:].mean() < 0.5 * loss.iloc[:5].mean()  # it does converge
    assert [] == list(diagnose(run))


def test_float32_mlp_converging_to_zero_loss_has_no_findings(tmp_path):
    # full batch on a few samples: the loss reaches ~0 and every gradient collapses, which
    # must not read as vanishing gradients or too-small updates
    model = mlp(torch.float32)
    x, y = regression_data(8, torch.float32)
    run = fit(tmp_path / "t", model, torch.optim.Adam(model.parameters(), lr=0.02), 150, x=x, y=y, batch=8)
    assert tracer.load(run.path, kind="loss")["mean"].iloc[-1] < 1e-3
    assert [] == list(diagnose(run))


# --------------------------------------------------------------------------- non-finite values


def test_first_nonfinite_points_at_the_layer_that_overflowed(tmp_path):
    # float32 and a learning rate far too high: the weights grow until a Linear overflows
    model = mlp(torch.float32)
    x, y = regression_data(64, torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=3.0)
    run = fit(tmp_path / "t", model, optimizer, 40, x=x, y=100 * y)
    df = tracer.load(run.path)
    finding = only(diagnose(run), "first-nonfinite")
    assert "error" == finding.severity
    first = df[df.nonfinite > 0].iloc[0]  # loads sorts by (step, seq): training order
    assert (int(first["step"]), first["kind"], first["name"]) == (finding.step, finding.kind, finding.name)
    assert df[(df.step < finding.step)].nonfinite.sum() == 0  # nothing earlier
    assert finding.evidence["nonfinite"] > 0
    assert f"step {finding.step}" in finding.message


def test_first_nonfinite_in_the_data_says_so(tmp_path):
    model = mlp()
    x, y = regression_data()
    x = x.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        for step in range(4):
            batch = x[step * 8 : step * 8 + 8].clone()
            if step == 2:
                batch[3, 1] = float("nan")
            optimizer.zero_grad()
            nn.functional.mse_loss(model(batch), y[:8]).backward()
            optimizer.step()
    finding = only(diagnose(run), "first-nonfinite")
    assert (2, "input", "") == (finding.step, finding.kind, finding.name)
    assert "[3, 1]" == finding.evidence["index"]
    assert math.isnan(finding.evidence["value"])
    assert "data" in finding.message
    assert finding.steps[0] == 2 and finding.steps[-1] == 3  # everything after is poisoned


def test_first_nonfinite_log_of_zero_in_the_loss(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()).double()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        for step in range(3):
            optimizer.zero_grad()
            p = model(x)
            if step == 1:
                p = p * 0  # a probability that reached 0
            (-torch.log(p)).mean().backward()
            optimizer.step()
    finding = only(diagnose(run), "first-nonfinite")
    assert (1, "loss") == (finding.step, finding.kind)
    assert "loss computation" in finding.message


def test_first_nonfinite_made_by_the_optimizer(tmp_path):
    # Adam with eps=0 and a gradient that is exactly zero: 0/0 in the update
    model = nn.Linear(2, 1).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, eps=0.0)
    x = torch.zeros(4, 2, dtype=torch.float64)  # zero inputs: the weight's gradient is 0
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
    finding = only(diagnose(run), "first-nonfinite")
    assert (0, "update", "weight") == (finding.step, finding.kind, finding.name)
    assert "optimizer" in finding.message


# --------------------------------------------------------------------------- loss


def test_loss_diverging_and_exploding_gradients_with_a_learning_rate_too_high(tmp_path):
    model = mlp()
    run = fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=2.0), 14)
    findings = diagnose(run)
    diverging = only(findings, "loss-diverging")
    assert "error" == diverging.severity
    assert diverging.evidence["late_median"] > 2 * diverging.evidence["early_median"]
    exploding = [f for f in findings if f.code == "exploding-grad"]
    assert exploding and all(f.severity == "warning" for f in exploding)
    assert all(f.evidence["growth"] > 100 for f in exploding)
    assert findings.has_errors


def test_loss_flat_when_the_optimizer_holds_another_models_parameters(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1)  # the classic mistake
    with pytest.warns(RuntimeWarning, match="holds none of the model's parameters"):  # said at once
        run = fit(tmp_path / "t", model, optimizer, 10)
    finding = only(diagnose(run), "loss-flat")
    assert "warning" == finding.severity
    assert "optimizer holds the model's parameters" in finding.message


# --------------------------------------------------------------------------- gradients


def test_vanishing_gradients_in_a_deep_sigmoid_network(tmp_path):
    torch.manual_seed(0)
    layers = []
    for _ in range(8):
        layers += [nn.Linear(8, 8), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(8, 1)).double()
    x, y = regression_data(32)
    x = x.repeat(1, 2)
    run = fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.01), 6, x=x, y=y)
    vanishing = {f.name: f for f in diagnose(run) if f.code == "vanishing-grad"}
    assert {"0", "2"} <= set(vanishing)  # the first layers, far from the loss
    assert "16" not in vanishing  # the last layer has the largest gradient
    assert vanishing["0"].evidence["ratio_to_largest"] < 1e-3


# --------------------------------------------------------------------------- updates


def test_update_ratio_too_small(tmp_path):
    model = mlp()
    run = fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=1e-7), 8)
    findings = diagnose(run)
    small = [f for f in findings if f.code == "update-ratio"]
    assert {"0.weight", "2.weight", "4.weight"} == {f.name for f in small}  # weights only, no biases
    assert all(f.evidence["median_ratio"] < 1e-6 for f in small)
    assert "loss-flat" in codes(findings)


def test_update_ratio_too_large_can_be_tuned_by_thresholds(tmp_path):
    model = mlp()
    run = fit(tmp_path / "t", model, torch.optim.Adam(model.parameters(), lr=0.01), 40)
    assert [] == list(diagnose(run))
    strict = diagnose(run, thresholds=Thresholds(update_ratio_high=1e-3))
    assert {"0.weight", "2.weight", "4.weight"} == {f.name for f in strict if f.code == "update-ratio"}
    same = diagnose(run, thresholds={"update_ratio_high": 1e-3})
    assert strict.to_frame().drop(columns="evidence").equals(same.to_frame().drop(columns="evidence"))


def test_never_changes_with_a_zero_learning_rate(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.0}, {"params": [*model[2].parameters(), *model[4].parameters()]}],
        lr=0.05,
    )
    findings = diagnose(fit(tmp_path / "t", model, optimizer, 6))
    never = {f.name: f for f in findings if f.code == "never-changes"}
    assert {"0.weight", "0.bias"} == set(never)
    assert 0.0 == never["0.weight"].evidence["lr"]
    assert "learning rate is 0" in never["0.weight"].message


def test_never_changes_for_a_module_frozen_by_accident(tmp_path):
    model = mlp()
    model[2].requires_grad_(False)
    findings = diagnose(fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.05), 6))
    finding = only(findings, "never-changes")
    assert ("param", "2", "warning") == (finding.kind, finding.name, finding.severity)
    assert "requires_grad=False" in finding.message


def test_changes_without_grad_from_weight_decay_alone(tmp_path):
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Linear(4, 1)
            self.aux = nn.Linear(4, 1)  # switched off by a zero gate, but still decayed

        def forward(self, x):
            return self.main(x) + 0.0 * self.aux(x)

    torch.manual_seed(0)
    model = Gated().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.1)
    findings = diagnose(fit(tmp_path / "t", model, optimizer, 6))
    hits = {f.name: f for f in findings if f.code == "changes-without-grad"}
    assert {"aux.weight", "aux.bias"} == set(hits)
    assert "warning" == hits["aux.weight"].severity
    assert 6 == hits["aux.weight"].evidence["steps_without_grad"]


def test_rule_mismatch_for_an_optimizer_that_does_more_than_its_rule(tmp_path):
    class ClampedSGD(torch.optim.SGD):
        """A hand-written SGD that also clamps the weights: not what SGD's rule says."""

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"]).clamp_(-0.2, 0.2)

    model = mlp()
    run = fit(tmp_path / "t", model, ClampedSGD(model.parameters(), lr=0.05), 6)
    mismatches = [f for f in diagnose(run) if f.code == "rule-mismatch"]
    assert mismatches and all(f.severity == "error" for f in mismatches)
    weight = next(f for f in mismatches if f.name == "0.weight")
    assert weight.evidence["max_abs_error"] > 1e-3
    assert "SGD" in weight.message


# --------------------------------------------------------------------------- dead units


def _dead_model(bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    with torch.no_grad():
        model[0].bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
    return model


def test_dead_relu_units_from_values(tmp_path):
    model = _dead_model([-50.0] * 6 + [0.5] * 2)  # 6 of 8 units can never fire
    findings = diagnose(fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.01), 8))
    finding = only(findings, "dead-relu")
    assert ("warning", "1", "activation") == (finding.severity, finding.name, finding.kind)
    assert (6, 8, 0.75, "values") == (
        finding.evidence["dead_units"], finding.evidence["units"], finding.evidence["dead_fraction"], finding.evidence["basis"]
    )  # fmt: skip


@pytest.mark.parametrize("max_values", [None, 0], ids=["values", "stats-only"])
def test_a_dead_relu_layer_is_an_error(tmp_path, max_values):
    model = _dead_model([-50.0] * 8)
    run = fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.01), 8, max_values=max_values)
    finding = only(diagnose(run), "dead-relu")
    assert ("error", 1.0) == (finding.severity, finding.evidence["dead_fraction"])
    expected = "values" if max_values is None else "tensor max (values not stored)"
    assert expected == finding.evidence["basis"]


def test_a_half_dead_layer_cannot_be_told_without_values(tmp_path):
    model = _dead_model([-50.0] * 6 + [0.5] * 2)
    run = fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.01), 8, max_values=0)
    assert "dead-relu" not in codes(diagnose(run))


# --------------------------------------------------------------------------- AMP


def _amp_run(path, init_scale, make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01)):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = make_optimizer(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    x, y = regression_data(64, torch.float32)
    with tracer.trace(model, optimizer, path=path) as run:
        for step in range(8):
            batch = slice(8 * step, 8 * step + 8)
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x[batch])
            loss = nn.functional.mse_loss(out.float(), 10 * y[batch])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return run


def test_amp_skipped_steps_are_reported_and_their_infs_excused(tmp_path):
    run = _amp_run(tmp_path / "t", init_scale=2.0**127)  # overflows until the scaler backs off
    findings = diagnose(run)
    finding = only(findings, "amp-skipped")
    assert finding.steps and 0 == finding.steps[0]
    assert "marked in the trace" == finding.evidence["detected"]
    # inf in the scaled loss and the gradients of a skipped step is the scaler doing its job
    assert ["amp-skipped"] == codes(findings)


def test_amp_without_overflow_reports_no_skip(tmp_path):
    found = codes(diagnose(_amp_run(tmp_path / "t", init_scale=2.0**8)))
    assert "amp-skipped" not in found and "first-nonfinite" not in found


def test_amp_skip_inferred_for_a_fused_optimizer(tmp_path):
    # A fused optimizer takes the scaler's found-inf flag into its kernel: step() runs, and
    # leaves the parameters as they were. No `skipped` mark; the gradients it saw were inf.
    try:
        torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.01, fused=True)
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - older torch without fused CPU Adam
        pytest.skip(f"no fused Adam on CPU: {exc}")
    run = _amp_run(tmp_path / "t", 2.0**127, lambda params: torch.optim.Adam(params, lr=0.01, fused=True))
    findings = diagnose(run)
    finding = only(findings, "amp-skipped")
    assert "inferred" in finding.evidence["detected"]
    df = tracer.load(run.path, kind=["grad", "update"])
    for step in finding.steps:
        at = df[df.step == step]
        assert (at[at.kind == "grad"].nonfinite > 0).any() and (at[at.kind == "update"].norm == 0).all()
    # the infs of skipped steps are the scaler's business, and those steps follow no rule
    assert "first-nonfinite" not in codes(findings)
    assert not [f for f in findings if f.code == "rule-mismatch" and set(f.steps) & set(finding.steps)]


# --------------------------------------------------------------------------- API


def test_inputs_path_run_and_dataframe_agree(tmp_path):
    model = mlp()
    run = fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=1e-7), 6)
    by_run, by_path, by_frame = diagnose(run), diagnose(str(run.path)), diagnose(tracer.load(run.path))
    assert by_run and by_run == by_path == by_frame


def test_a_dataframe_without_values_uses_the_statistics(tmp_path):
    model = _dead_model([-50.0] * 8)
    run = fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.01), 8)
    columns = [c for c in tracer.load(run.path).columns if c not in ("values", "shape", "hparams")]
    finding = only(diagnose(tracer.load(run.path, columns=columns)), "dead-relu")
    assert "tensor max (values not stored)" == finding.evidence["basis"]
    assert "values" == only(diagnose(run), "dead-relu").evidence["basis"]


def test_findings_api(tmp_path):
    model = mlp()
    findings = diagnose(fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=2.0), 14))
    assert isinstance(findings, Findings) and isinstance(findings, list)
    assert all(isinstance(f, Finding) for f in findings)
    severities = [f.severity for f in findings]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)  # most severe first
    frame = findings.to_frame()
    assert ["severity", "code", "step", "steps", "kind", "name", "message", "evidence"] == list(frame.columns)
    assert len(findings) == len(frame)
    assert set(frame.code) <= set(CODES)
    text = str(findings)
    assert text.startswith(findings.summary()) and "ERROR" in text and "loss-diverging" in text
    assert "evidence:" in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        findings[0].severity = "info"
    assert len(set(findings)) == len(findings)  # hashable, and all different
    assert all(f.message.endswith((".", "?")) for f in findings)


def test_empty_findings_render():
    empty = Findings()
    assert not empty.has_errors
    assert ["severity", "code", "step", "steps", "kind", "name", "message", "evidence"] == list(
        empty.to_frame().columns
    )
    assert "no findings" in empty._repr_html_()


def test_html_escapes_hostile_names(tmp_path):
    hostile = "<script>alert(1)</script>"
    model = nn.Sequential()
    model.add_module(hostile, nn.Linear(4, 8))
    model.add_module("act", nn.ReLU())
    model.add_module("out", nn.Linear(8, 1))
    model.double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    findings = diagnose(fit(tmp_path / "t", model, optimizer, 6), thresholds={"update_ratio_high": 1e-9})
    assert any(f.name == f"{hostile}.weight" for f in findings)
    for page in (html_section(findings), findings._repr_html_()):
        assert "<script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="unknown threshold.*'nope'.*min_steps"):
        diagnose(pd.DataFrame(), thresholds={"nope": 1})
    with pytest.raises(TypeError, match="thresholds must be"):
        diagnose(pd.DataFrame(), thresholds=3)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(tracer.TraceFormatError):
        diagnose(tmp_path / "missing")
    with pytest.raises(ValueError, match="lacks the trace columns"):
        diagnose(pd.DataFrame({"step": [0]}))
    with pytest.raises(TypeError, match="a trace is a path, a tracer.Run, .*got int"):
        diagnose(42)


def test_thresholds_are_documented():
    doc = Thresholds.__doc__
    for field in dataclasses.fields(Thresholds):
        assert f"{field.name}:" in doc, field.name


# --------------------------------------------------------------------------- example


def test_nan_hunt_example_points_at_the_first_nonfinite_value(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["nan_hunt.py", str(tmp_path / "nan")])
    runpy.run_path(str(EXAMPLES / "nan_hunt.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "first-nonfinite" in out
    findings = diagnose(tmp_path / "nan")
    first = findings[0]
    assert ("error", "first-nonfinite") == (first.severity, first.code)
    assert f"step {first.step}" in out


def test_thresholds_parse_from_command_line_strings():
    parsed = Thresholds.parse(
        ["update_ratio_high=0.3", "min_steps=3", "relu_types=ReLU, GELU", "rule_check_steps=none"]
    )
    assert Thresholds(update_ratio_high=0.3, min_steps=3, relu_types=("ReLU", "GELU"), rule_check_steps=None) == parsed
    with pytest.raises(ValueError, match="NAME=VALUE with NAME one of .*'window'.* \\(got 'nope=1'\\)"):
        Thresholds.parse(["nope=1"])
    with pytest.raises(ValueError, match="min_steps must be a number \\(got 'many'\\)"):
        Thresholds.parse(["min_steps=many"])


def test_findings_to_json(tmp_path):
    import json

    model = mlp()
    findings = diagnose(fit(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=2.0), 14))
    records = json.loads(findings.to_json())
    assert [f.code for f in findings] == [r["code"] for r in records]
    assert set(records[0]) == {"severity", "code", "step", "steps", "kind", "name", "message", "evidence"}
    assert "[]" == Findings().to_json()


# --------------------------------------------------------------------------- false alarms on public training code


class CausalEncoder(nn.Module):
    """What ``nn.Transformer`` users write: a causal mask of ``-inf`` passed to the model."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 1)

    def forward(self, x, mask):
        return self.head(self.encoder(x, mask=mask, is_causal=True))


def causal_run(path, steps=6, nan_at=None):
    """A causal encoder trained on sequences; ``nan_at``: a NaN in the batch of that step."""
    torch.manual_seed(0)
    model = CausalEncoder().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    with tracer.trace(model, optimizer, path=path) as run:
        for step in range(steps):
            x = torch.randn(4, 5, 8, generator=g, dtype=torch.float64)
            if step == nan_at:
                x[1, 2, 3] = float("nan")
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x, mask), x[..., :1]).backward()
            optimizer.step()
    return run


def test_a_causal_mask_of_minus_inf_is_not_a_nonfinite_value(tmp_path):
    run = causal_run(tmp_path / "t")
    inputs = tracer.load(run.path, kind="input", columns=["name", "part", "nonfinite", "min"])
    masks = inputs[inputs.nonfinite > 0]
    assert {("", "1"), ("encoder", "mask")} <= set(zip(masks.name, masks.part))  # the -inf is in the trace
    assert (masks["min"] == -math.inf).all()
    assert "first-nonfinite" not in codes(diagnose(run))  # was an error (exit 1) before


def test_a_nan_in_the_data_of_a_masked_model_is_still_found(tmp_path):
    finding = only(diagnose(causal_run(tmp_path / "t", nan_at=3)), "first-nonfinite")
    assert (3, "input", "", "0") == (finding.step, finding.kind, finding.name, finding.evidence["part"])
    assert "[1, 2, 3]" == finding.evidence["index"]  # the NaN of the data, not the mask's -inf


class TinyGPT(nn.Module):
    """nanoGPT's weight tying: ``wte.weight = lm_head.weight``, one tensor under two names."""

    def __init__(self, vocab=32, width=16):
        super().__init__()
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(vocab, width), "h": nn.Linear(width, width)})
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        return self.lm_head(torch.tanh(self.transformer.h(self.transformer.wte(idx))))


def gpt_run(path, freeze=None, embedding_lr=1e-2):
    torch.manual_seed(0)
    model = TinyGPT().double()
    if freeze is not None:
        model.get_submodule(freeze).requires_grad_(False)
    tied = model.lm_head.weight
    rest = [p for p in model.parameters() if p.requires_grad and p is not tied]
    optimizer = torch.optim.AdamW([{"params": [tied], "lr": embedding_lr}, {"params": rest}], lr=1e-2)
    data = torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(0))
    with tracer.trace(model, optimizer, path=path) as run:
        for _ in range(10):
            optimizer.zero_grad()
            logits = model(data[:, :-1])
            nn.functional.cross_entropy(logits.reshape(-1, 32), data[:, 1:].reshape(-1)).backward()
            optimizer.step()
    return run


def test_a_tied_embedding_is_not_frozen(tmp_path):
    run = gpt_run(tmp_path / "t")
    assert ["lm_head.weight"] == list(tracer.open(run.path).meta.parameters[0].aliases)
    assert "lm_head.weight" not in set(tracer.load(run.path, kind="update", columns=["name"]).name)
    assert [] == list(diagnose(run))  # was: never-changes for module 'lm_head'


def test_a_finding_on_a_tied_parameter_gives_its_other_name(tmp_path):
    finding = only(diagnose(gpt_run(tmp_path / "t", embedding_lr=0.0)), "never-changes")
    assert ("update", "transformer.wte.weight") == (finding.kind, finding.name)
    assert "lm_head.weight" == finding.evidence["aliases"]


def test_a_frozen_module_beside_a_tied_embedding_is_still_found(tmp_path):
    finding = only(diagnose(gpt_run(tmp_path / "t", freeze="transformer.h")), "never-changes")
    assert ("param", "transformer.h") == (finding.kind, finding.name)


class GAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def gan_run(path, steps, *, wasserstein=False, center=2.0, capture=("loss", "grad", "param", "update", "state")):
    """The PyTorch DCGAN tutorial's loop on 2-d points: the discriminator's step, then the
    generator's; ``wasserstein``: a WGAN critic's loss (no sigmoid) instead of BCE."""
    torch.manual_seed(0)
    model = GAN().double()
    G, D = model.generator, model.discriminator
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    bce, g = nn.BCEWithLogitsLoss(), torch.Generator().manual_seed(0)
    ones, zeros = torch.ones(32, 1, dtype=torch.float64), torch.zeros(32, 1, dtype=torch.float64)
    with tracer.trace(model, [opt_d, opt_g], path=path, capture=capture) as run:
        for _ in range(steps):
            real = torch.randn(32, 2, generator=g, dtype=torch.float64) * 0.5 + center
            fake = G(torch.randn(32, 4, generator=g, dtype=torch.float64))
            opt_d.zero_grad()
            if wasserstein:
                loss_d = D(fake.detach()).mean() - D(real).mean()
            else:
                loss_d = bce(D(real), ones) + bce(D(fake.detach()), zeros)
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            (-D(fake).mean() if wasserstein else bce(D(fake), ones)).backward()
            opt_g.step()
    return run


def test_a_gan_is_not_flat(tmp_path):
    from tracer._series import series

    run = gan_run(tmp_path / "t", 20, center=0.0)  # the generator starts where the data is: a balanced game
    s = series(tracer.open(run.path))
    assert ["discriminator", "generator"] == s.loss_series
    averaged = s.losses.groupby("step")["loss"].mean().to_numpy()
    early, late = np.median(averaged[:4]), np.median(averaged[-4:])
    assert early - late < 0.01 * early  # the one averaged series of before: "not decreasing"
    assert "loss-flat" not in codes(diagnose(run))


def test_a_generator_layer_is_compared_with_the_generator(tmp_path):
    from tracer._series import series

    run = gan_run(tmp_path / "t", 20, wasserstein=True, center=128.0)  # a critic on unnormalised pixels
    grads = series(tracer.open(run.path)).layer_grads
    rms = (grads.norm / grads.numel**0.5).groupby(grads.layer).median()
    assert rms["generator.0"] < 1e-3 * rms["discriminator.2"]  # what it was compared with before
    assert rms["generator.0"] > 1e-3 * rms["generator.2"]
    assert "vanishing-grad" not in codes(diagnose(run))


class BigramLM(nn.Module):
    def __init__(self, vocab=2000, width=64):
        super().__init__()
        self.wte, self.h, self.lm_head = nn.Embedding(vocab, width), nn.Linear(width, width), nn.Linear(width, vocab)

    def forward(self, idx):
        return self.lm_head(torch.relu(self.h(self.wte(idx))))


def test_a_divergence_in_the_first_steps_is_a_divergence(tmp_path):
    torch.manual_seed(0)
    model = BigramLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    g = torch.Generator().manual_seed(0)
    with tracer.trace(model, optimizer, path=tmp_path / "t", max_values=0) as run:
        for _ in range(8):
            data = torch.randint(0, 2000, (8, 33), generator=g)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data[:, :-1]).reshape(-1, 2000), data[:, 1:].reshape(-1)).backward()
            optimizer.step()
    findings = diagnose(run)
    finding = only(findings, "loss-diverging")
    assert 7.5 < finding.evidence["start"] < 7.7  # ln 2000: the loss of the first step
    assert finding.evidence["late_median"] < 2 * finding.evidence["early_median"]  # the early window holds the jump
    assert finding.evidence["late_median"] > 20 * finding.evidence["start"]
    assert "loss-flat" not in codes(findings)  # what it was reported as
