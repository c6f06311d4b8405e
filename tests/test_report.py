"""tracer.report: every torch.optim optimizer's traced updates are explained and checked."""

from __future__ import annotations

import sys

import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer

# (optimizer class, constructor kwargs): every flag that changes the maths
CONFIGS = [
    (torch.optim.SGD, {"lr": 0.1}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
    (torch.optim.Adam, {"lr": 0.01}),
    (torch.optim.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.AdamW, {"lr": 0.01, "amsgrad": True}),
    (torch.optim.Adamax, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.NAdam, {"lr": 0.01, "momentum_decay": 0.004}),
    (torch.optim.NAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    (torch.optim.RAdam, {"lr": 0.01}),
    (torch.optim.RAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    (torch.optim.RMSprop, {"lr": 0.01}),
    (torch.optim.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
    (torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.5}),
    (torch.optim.Adadelta, {"lr": 1.0, "rho": 0.8, "weight_decay": 0.1}),
    (torch.optim.ASGD, {"lr": 0.01, "t0": 2, "weight_decay": 0.1}),
    (torch.optim.Rprop, {"lr": 0.01}),
    (torch.optim.Adafactor, {"lr": 0.01}),
    (torch.optim.Adafactor, {"lr": 0.01, "weight_decay": 0.1, "maximize": True}),
]  # fmt: skip


def _mlp(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def _trace_optimizer(tmp_path, cls, kwargs, dtype=torch.float64, steps=7, params=None):
    model = _mlp(dtype)
    opt = cls(params(model) if params else model.parameters(), **kwargs)
    data = [(torch.randn(5, 3, dtype=dtype), torch.randn(5, 2, dtype=dtype)) for _ in range(steps)]
    with tracer.trace(model, opt, path=tmp_path / "t", max_values=None) as run:
        for x, y in data:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    return run


def _assert_all_checked(frame, check="rule"):
    assert not frame.empty
    bad = frame[frame.matches.map(lambda m: m is not True)]
    assert bad.empty, bad[["step", "name", "max_abs_error", "reason"]].to_string()
    assert {check} == set(frame.check)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls, kwargs", CONFIGS, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_every_optimizer_and_flag_matches_its_rule_float64(tmp_path, cls, kwargs, foreach):
    if foreach and cls is torch.optim.Adafactor or foreach:
        kwargs = {**kwargs, "foreach": True}
    run = _trace_optimizer(tmp_path, cls, kwargs)
    frame = tracer.report(run).to_frame()
    _assert_all_checked(frame)
    assert 7 * 4 == len(frame)


@pytest.mark.parametrize("cls, kwargs", CONFIGS, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_every_optimizer_matches_its_rule_float32(tmp_path, cls, kwargs):
    run = _trace_optimizer(tmp_path, cls, {**kwargs, "foreach": True}, dtype=torch.float32)
    _assert_all_checked(tracer.report(run).to_frame())


def test_muon_on_matrices(tmp_path):
    run = _trace_optimizer(
        tmp_path, torch.optim.Muon, {"lr": 0.02},
        params=lambda m: [p for p in m.parameters() if p.dim() == 2],
    )  # fmt: skip
    _assert_all_checked(tracer.report(run).to_frame())


def test_sparse_adam_on_a_sparse_embedding(tmp_path):
    torch.manual_seed(0)
    model = nn.Embedding(6, 3, sparse=True).double()
    opt = torch.optim.SparseAdam(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t", max_values=None) as run:
        for ids in ([0, 2], [2, 5], [1, 2]):
            opt.zero_grad()
            model(torch.tensor(ids)).pow(2).sum().backward()
            opt.step()
    _assert_all_checked(tracer.report(run).to_frame())


def test_lbfgs_one_iteration_is_checked(tmp_path):
    model = nn.Linear(3, 1).double()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=1)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with tracer.trace(model, opt, path=tmp_path / "t", max_values=None) as run:
        opt.step(closure)
    frame = tracer.report(run).to_frame()
    assert 2 == len(frame)
    assert frame.matches.map(lambda m: m is not False).all(), frame[["name", "reason"]]


def test_schedule_groups_and_frozen_parameters(tmp_path):
    model = _mlp(torch.float64)
    model[0].bias.requires_grad_(False)  # frozen: no grad, no update rows
    opt = torch.optim.SGD(
        [{"params": [model[0].weight], "lr": 0.5}, {"params": model[2].parameters()}], lr=0.1, momentum=0.9
    )
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    with tracer.trace(model, opt, path=tmp_path / "t", max_values=None) as run:
        for step in range(4):
            opt.zero_grad()
            out = model(torch.randn(4, 3, dtype=torch.float64))
            (out.sum() if step != 2 else out[:, 0].sum() * 0 + model[0].weight.sum()).backward()
            opt.step()
            sched.step()
    frame = tracer.report(run).to_frame()
    _assert_all_checked(frame)
    assert "0.bias" not in set(frame.name)
    lrs = frame[frame.name == "0.weight"].hparams.map(lambda h: h["lr"]).tolist()
    assert [0.5, 0.25, 0.125, 0.0625] == lrs
    assert {0, 1} == set(frame.param_group)


def test_a_tampered_update_is_flagged(reference_trace):
    df = tracer.load(reference_trace)
    i = df.index[(df.kind == "update") & (df.name == "weight")][0]
    df.at[i, "values"] = df.at[i, "values"] + [0.0, 1e-6]
    frame = tracer.report(df).to_frame().set_index("name")
    assert frame.loc["weight", "matches"] is False
    assert pytest.approx(1e-6, rel=1e-3) == frame.loc["weight", "max_abs_error"]
    assert frame.loc["bias", "matches"] is True
    assert "✗ differs" in tracer.report(df).to_markdown()


class Custom(torch.optim.Optimizer):
    """An optimizer tracer has no rule for: θ ← θ − lr·sign(g)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad.sign())


def test_unknown_optimizer_is_checked_by_replay_only_when_passed_in(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    opt = Custom(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt, steps=2)
    plain = tracer.report(run).to_frame()
    assert plain.matches.map(lambda m: m is None).all()
    assert plain.check.isna().all()
    assert "no update rule is known for Custom" in plain.reason[0]
    assert "optimizers=[Custom]" in plain.reason[0]
    assert "Custom" not in tracer.report(run).to_markdown().split("Not checked")[0].split("\n", 1)[0]
    replayed = tracer.report(run, optimizers=[Custom]).to_frame()
    _assert_all_checked(replayed, check="replay")


def test_subclass_of_a_known_optimizer_uses_its_rule(tmp_path):
    class MySGD(torch.optim.SGD):
        pass

    model, x, y, loss_fn, _ = make_reference()
    opt = MySGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt)
    frame = tracer.report(run).to_frame()
    _assert_all_checked(frame)
    assert {"SGD"} == set(frame.rule_class)
    assert "the rule of SGD, its base class" in str(tracer.report(run))
    assert "the rule of SGD, its base class" in tracer.report(run).to_markdown()


def test_report_never_imports_a_class_named_in_the_trace(reference_trace, tmp_path):
    df = tracer.load(reference_trace)
    df["optimizer"] = df["optimizer"].where(df.optimizer.isna(), "os.system")
    before = set(sys.modules)
    frame = tracer.report(df).to_frame()
    assert frame.matches.map(lambda m: m is None).all()
    assert set(sys.modules) - before <= {m for m in sys.modules if m.startswith("tracer")}


def test_values_not_stored_are_reported_not_guessed(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t", max_values=0) as run:
        train_reference(model, x, y, loss_fn, opt)
    frame = tracer.report(run).to_frame()
    assert frame.matches.map(lambda m: m is None).all()
    assert "max_values=None" in frame.reason[0]
    assert "‖Δθ‖/‖θ‖" in str(tracer.report(run))


def test_reference_markdown_reads_like_the_tutorial(reference_trace):
    md = tracer.report(reference_trace).to_markdown()
    for expected in [
        "ŷ = w₁x₁ + w₂x₂ + b`",
        "ŷ = 1·1 + 1·2 + 0 = 3 ✓",
        "e = 3 − 8 = −5",
        "L = (ŷ − y)² = (3 − 8)² = 25 ✓",
        "∂L/∂w₁ = ∂L/∂e · ∂e/∂ŷ · ∂ŷ/∂w₁",
        "∂L/∂w₁ = 2ex₁ = 2·(−5)·1 = −10 ✓",
        "∂L/∂w₂ = 2ex₂ = 2·(−5)·2 = −20 ✓",
        "∂L/∂b = 2e = 2·(−5) = −10 ✓",
        "w₁ (weight[0,0]): 1 − 0.01 · (−10) = 1.1",
        "w₂ (weight[0,1]): 1 − 0.01 · (−20) = 1.2",
        "b (bias[0]): 0 − 0.01 · (−10) = 0.1",
        "| parameter | old value | gradient | new value |",
        "| w₂ (weight[0,1]) | 1 | −20 | 1.2 |",
        r"\theta_t \leftarrow \theta_{t-1} - \gamma g_t",
    ]:
        assert expected in md, expected
    stages = ("1. Forward pass: pred = model(x)", "2. Loss: loss = loss_fn(pred, y)", "3. Gradients: loss.backward()",
              "4. Update: optimizer.step()", "Summary")  # fmt: skip
    order = [md.index(s) for s in stages]
    assert sorted(order) == order


def test_a_batch_of_one_is_worked_as_the_unbatched_example(reference_trace):
    text = str(tracer.report(reference_trace))  # x = [[1, 2]]: a batch of one, no example index
    assert "ŷ = 1·1 + 1·2 + 0 = 3 ✓" in text and "⁽" not in text


def test_report_frame_columns(reference_trace):
    frame = tracer.report(reference_trace).to_frame()
    for column in ["step", "name", "optimizer", "rule", "latex", "hparams", "predicted", "observed",
                   "max_abs_error", "matches", "check"]:  # fmt: skip
        assert column in frame.columns
    row = frame.set_index("name").loc["weight"]
    assert [1.1, 1.2] == row.predicted == row.observed
    assert 0.0 == row.max_abs_error and row.matches is True and "rule" == row.check
    assert "θ ← θ − γ·g" == row.rule and 0.01 == row.hparams["lr"]


def test_html_is_self_contained_and_escapes_hostile_names(tmp_path):
    hostile = "<script>alert('x')</script>"
    model = nn.ModuleDict({hostile: nn.Linear(2, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model[hostile](torch.ones(1, 2)).sum().backward()
        opt.step()
    page = tracer.report(run).to_html()
    assert "<script>" not in page and "&lt;script&gt;" in page
    import re

    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert all(link.startswith(("#", "data:")) for link in links), links  # nothing to fetch
    assert page.startswith("<!DOCTYPE html>")
    assert "&lt;script&gt;" in tracer.report(run)._repr_html_()


def test_renderings_and_filters(tmp_path):
    run = _trace_optimizer(tmp_path, torch.optim.Adam, {"lr": 0.01}, steps=3)
    rep = tracer.report(run, step=1, name="2.*")
    assert {1} == set(rep.to_frame().step)
    assert {"2.weight", "2.bias"} == set(rep.to_frame().name)
    assert "\\[" in rep.to_latex() and "m̂" in str(rep) or "m" in str(rep)
    assert rep._repr_markdown_() == rep.to_markdown()
    assert "Report" in repr(rep)
    by_frame = tracer.report(tracer.load(run), step=slice(1, 2)).to_frame()
    assert {1} == set(by_frame.step)


def test_a_long_report_writes_each_rule_once_and_folds_steps(tmp_path):
    torch.manual_seed(0)
    layers = [m for _ in range(10) for m in (nn.Linear(4, 4), nn.ReLU())]
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with tracer.trace(model, opt, path=tmp_path / "t", capture=["grad", "param", "update", "state", "loss"]) as run:
        for _ in range(25):
            opt.zero_grad()
            model(torch.randn(3, 4)).pow(2).mean().backward()
            opt.step()
    rep = tracer.report(run)
    assert 25 * 20 > rep.COMPACT_AFTER
    page = rep.to_html(findings=False)
    assert 1 == page.count("b ← μ·b + g")  # the SGD-momentum rule, written once
    assert 25 == page.count('<details class="section"')
    assert 20 == page.count('<details class="section" open>')  # later steps are folded
    assert "‖Δθ‖/‖θ‖" in page
    md = rep.to_markdown()
    assert "Step 24" in md and "✗" not in md.split("could not be checked.")[1]
    text = str(rep)  # the terminal's text: the rule once, one line per update
    assert 1 == text.count("b ← μ·b + g") and 25 * 20 == sum(" ✓ rule " in line for line in text.splitlines())


def test_html_formulas_are_mathml_when_latex2mathml_is_installed(reference_trace):
    pytest.importorskip("latex2mathml")
    page = tracer.report(reference_trace).to_html(findings=False)
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in page
    assert "&#x003B8;" in page or "θ" in page  # θ, rendered by the browser, no script
    assert "<script" not in page


def test_an_update_made_outside_an_optimizer_is_reported_not_checked(reference_trace):
    from tracer.testing import assert_updates_follow_rule

    frame = tracer.load(reference_trace)
    frame.loc[frame.optimizer.notna(), ["optimizer", "hparams"]] = None  # as `w -= lr * w.grad` records
    table = tracer.report(frame).to_frame()
    assert [None, None] == list(table.matches) and [None, None] == list(table.optimizer)
    assert table.reason[0].startswith("no optimizer made this update")
    assert [1.1, 1.2] == table.observed[0]
    text = tracer.report(frame).to_markdown()
    assert "weight (no optimizer): – not checked" in text and "(nan" not in text
    assert "– Not checked (2 updates): no optimizer made this update" in str(tracer.report(frame))
    with pytest.raises(AssertionError, match=r"no updates to check in a DataFrame \(its 2 traced updates were made"):
        assert_updates_follow_rule(frame)


def test_missing_check_and_reason_are_none_not_nan(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    checked, unchecked = torch.optim.SGD([model.weight], lr=0.01), Custom([model.bias], lr=0.1)
    with tracer.trace(model, [checked, unchecked], path=tmp_path / "t") as run:
        loss_fn(model(x), y).backward()
        checked.step()
        unchecked.step()
    frame = tracer.report(run).to_frame().set_index("name")
    assert ("rule", None) == (frame.loc["weight", "check"], frame.loc["weight", "reason"])
    assert frame.loc["bias", "check"] is None and frame.loc["bias", "matches"] is None
    assert frame.loc["bias", "reason"].startswith("no update rule is known for Custom")


def test_the_checks_of_a_large_model_read_no_activation_values(tmp_path, monkeypatch):
    from tracer._trace import Trace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model(torch.randn(4, 32)).sum().backward()
        opt.step()
    reads = []
    real = Trace.rows

    def spy(self, kind=None, name=None, step=None, columns=None, **kwargs):
        reads.append((kind, columns))
        return real(self, kind, name, step, columns, **kwargs)

    monkeypatch.setattr(Trace, "rows", spy)
    assert 4 == tracer.report(run.path).counts["matched"]
    with_values = [kind for kind, columns in reads if columns is None or "values" in columns]
    assert [("grad", "param", "update", "state", "skipped")] == with_values  # Trace.updates(): the checks' rows
