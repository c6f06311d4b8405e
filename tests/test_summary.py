"""``tracer summary``: steps far apart, names that need escaping, complex values."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _reference import make_reference, train_reference
from test_cli import run_quietly

import tracer
from tracer._summary import format_summary, summarize


@pytest.fixture
def far_apart(tmp_path):
    """Two steps of the reference example, the second one renumbered to step 2**50."""
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=2)
    file = next(run.path.glob("*.parquet"))
    table = pq.read_table(file)
    table = table.set_column(0, "step", pc.if_else(pc.equal(table["step"], 1), 2**50, table["step"]))
    pq.write_table(table, file)
    return run.path


def test_steps_far_apart_are_summarised_without_listing_the_gap(far_apart):
    summary = summarize(far_apart)
    assert [0, 2**50] == summary["steps"]
    assert "steps      2 (0 to 1125899906842624, with gaps)" in format_summary(summary)


def test_diff_says_which_steps_a_trace_has_without_listing_the_gap(far_apart, tmp_path):
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "two") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=2)
    code, out, _ = run_quietly(["diff", str(far_apart), str(run.path)])
    assert 1 == code
    assert "is in b but not in a (a has no step 1; its steps are 0, 1125899906842624)" in out


def test_a_name_with_a_newline_stays_on_its_line(tmp_path):
    import torch
    from torch import nn

    name = "enc\nout"
    model = nn.ModuleDict({name: nn.Linear(2, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model[name](torch.ones(1, 2)).sum().backward()
        opt.step()
    text = format_summary(summarize(run.path))
    assert "enc\nout" not in text
    assert "  grad             enc\\nout.weight, enc\\nout.bias" in text
    assert 2 == sum(line.startswith("  enc\\nout.") for line in text.splitlines())  # the norms table


# --------------------------------------------------------------------------- the shared series


def test_loss_per_step_under_gradient_accumulation_is_what_the_script_logs(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(3, 4, 8, 4, dtype=torch.float64), torch.randn(3, 4, 8, 1, dtype=torch.float64)
    k, logged = 4, []
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        for step in range(3):
            total = 0.0
            for micro in range(k):  # nanoGPT: each micro-batch's loss divided by k, then backward
                loss = nn.functional.mse_loss(model(x[step, micro]), y[step, micro]) / k
                loss.backward()
                total += loss.item()
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                model(x[step, 0])  # an evaluation pass: no loss, not counted
            logged.append(total)
    summary = summarize(run.path)
    assert [(s, k) for s in range(3)] == [(r["step"], r["calls"]) for r in summary["loss"]]
    assert logged == pytest.approx([r["loss"] for r in summary["loss"]], rel=1e-12)
    assert "loss per step (the sum of its micro-batch losses)" in format_summary(summary)


def test_an_lbfgs_closure_counts_once_per_step(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=3)
    x, y = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        returned = [optimizer.step(closure).item() for _ in range(2)]  # the loss at the step's start
    assert 3 == len(tracer.load(run.path, kind="loss", step=0))  # three evaluations in one step
    summary = summarize(run.path)
    assert returned == pytest.approx([r["loss"] for r in summary["loss"]], rel=1e-12)
    assert [1, 1] == [r["calls"] for r in summary["loss"]]


def test_a_gan_has_a_loss_series_per_network(tmp_path):
    from test_diagnose import gan_run

    run = gan_run(tmp_path / "t", 3)
    summary = summarize(run.path)
    assert ["discriminator", "generator"] * 3 == [r["series"] for r in summary["loss"]]
    losses = tracer.load(run.path, kind="loss")
    assert list(losses["mean"]) == [r["loss"] for r in summary["loss"]]  # call 0, then call 1, each step
    assert "  step  loss discriminator  loss generator" in format_summary(summary)


def _nan_in_the_data(path):
    import torch
    from test_diagnose import fit, mlp

    model = mlp()
    x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[40:48] = float("nan")  # the 6th batch of 8 is poisoned: seen from some step on
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=0.05), 4, x=x, y=x[:, :1], batch=32).path


def _causal(path, nan_at=None):
    from test_diagnose import causal_run

    return causal_run(path, nan_at=nan_at).path


def _amp_overflow(path):
    from test_diagnose import _amp_run

    return _amp_run(path, init_scale=2.0**127).path


@pytest.mark.parametrize(
    "make, expected",
    [
        (_nan_in_the_data, (0, "input", "", "0")),
        (_causal, None),  # the -inf of a causal mask
        (lambda path: _causal(path, nan_at=3), (3, "input", "", "0")),
        (_amp_overflow, None),  # a GradScaler's skipped steps: its inf/NaN are excused
    ],
    ids=["nan-data", "causal-mask", "causal-mask-and-nan-data", "amp-skips"],
)
def test_summary_and_diagnose_name_the_same_first_nonfinite_value(tmp_path, make, expected):
    from tracer._diagnose import diagnose

    path = make(tmp_path / "t")
    found = summarize(path)["first_nonfinite"]
    findings = [f for f in diagnose(path) if f.code == "first-nonfinite"]
    by_summary = None if found is None else (found["step"], found["kind"], found["name"], found["part"])
    first = findings[0] if findings else None
    by_diagnose = None if first is None else (first.step, first.kind, first.name, first.evidence.get("part", ""))
    assert expected == by_summary
    assert expected == by_diagnose
    if found is not None:
        assert first is not None and str(found["index"]) == first.evidence["index"]


def test_a_trace_a_run_and_a_dataframe_summarise_alike(tmp_path):
    from test_diagnose import causal_run

    run = causal_run(tmp_path / "t", nan_at=2)
    by_path, by_run, by_frame = summarize(run.path), summarize(run), summarize(tracer.load(run.path))
    for key in ("steps", "rows", "kinds", "loss", "parameters", "first_nonfinite", "skipped_steps"):
        same = {json.dumps(s[key], sort_keys=True) for s in (by_path, by_run, by_frame)}  # NaN equals NaN here
        assert 1 == len(same), key
    assert 2 == by_path["first_nonfinite"]["step"]
    assert (0, "DataFrame") == (by_frame["files"], by_frame["path"])


def test_the_series_are_computed_once_per_trace(tmp_path, monkeypatch):
    from _reference import trace_reference

    from tracer._diagnose import diagnose
    from tracer._series import series
    from tracer._trace import Trace

    trace = tracer.open(trace_reference(tmp_path / "t", steps=3))
    assert series(trace) is series(trace)
    assert series(trace) is not series(trace.path)  # a path opens another Trace
    diagnose(trace)
    losses = list(tracer.load(trace.path, kind="loss")["mean"])
    reads, rows = [], Trace.rows
    monkeypatch.setattr(
        Trace, "rows", lambda self, *args, **kwargs: reads.append(kwargs) or rows(self, *args, **kwargs)
    )
    assert losses == [r["loss"] for r in summarize(trace)["loss"]]
    assert [] == reads  # diagnose read the statistics; the summary reuses them


# --------------------------------------------------------------------------- data files, metrics


def with_metrics(frame, logged):
    """``frame`` (from ``tracer.load``) with the rows ``run.log`` writes: kind ``metric``, name
    the key, values ``[value]``, at the step; ``logged`` is ``{step: {name: value}}``."""
    import numpy as np
    import pandas as pd

    rows = []
    seq = int(frame["seq"].max()) + 1
    for step, values in logged.items():
        for name, value in values.items():
            rows.append({
                "step": step, "seq": seq, "kind": "metric", "name": name, "call": 0, "part": "", "module_type": None,
                "shape": np.array([], dtype=np.int64), "dtype": "float64", "numel": 1, "mean": value, "std": 0.0,
                "min": value, "max": value, "norm": abs(value), "nonfinite": 0, "values": np.array([value]),
                "rank": 0, "grad_enabled": None, "optimizer": None, "param_group": None, "hparams": None,
            })  # fmt: skip
            seq += 1
    out = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    return out.sort_values(["step", "seq"], kind="stable").reset_index(drop=True)


def test_summary_counts_the_data_files_only(tmp_path):
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=2)
    summary = summarize(run.path)
    assert 1 == summary["files"] == len(list(run.path.glob("part-*.parquet")))  # not _tracer.json
    everything = sum(f.stat().st_size for f in run.path.iterdir())
    assert everything == summary["bytes"]
    assert "; 1 data file, " in format_summary(summary)
    frame = format_summary(summarize(tracer.load(run.path)))
    assert "rows       20\n" in frame  # a DataFrame has no files


def test_logged_metrics_are_summarised(tmp_path):
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=3)
    frame = with_metrics(
        tracer.load(run.path), {0: {"accuracy": 0.5, "lr": 0.01}, 1: {"accuracy": 0.75}, 2: {"accuracy": 0.625}}
    )
    summary = summarize(frame)
    assert {"metric": 4} == {k: v for k, v in summary["kinds"].items() if k == "metric"}
    assert [
        {"name": "accuracy", "steps": 3, "first": 0.5, "last": 0.625, "min": 0.5, "min_step": 0, "max": 0.75, "max_step": 1},
        {"name": "lr", "steps": 1, "first": 0.01, "last": 0.01, "min": 0.01, "min_step": 0, "max": 0.01, "max_step": 0},
    ] == summary["metrics"]  # fmt: skip
    text = format_summary(summary)
    assert "logged metrics (run.log; first / last / smallest at step / largest at step)" in text
    assert "  accuracy  3      0.5 / 0.625   0.5 (step 0)   0.75 (step 1)" in text
    assert [] == summarize(run.path)["metrics"]
    assert "logged metrics" not in format_summary(summarize(run.path))


def test_run_log_metrics_reach_summary_plots_exports_and_diff(tmp_path):
    import torch
    from torch import nn

    from tracer import _plots, export

    def train(path, accuracies):
        torch.manual_seed(0)
        model = nn.Linear(2, 1).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with tracer.trace(model, opt, path=path) as run:
            if not hasattr(run, "log"):
                pytest.skip("run.log is not there yet")
            for accuracy in accuracies:
                opt.zero_grad()
                model(torch.ones(4, 2, dtype=torch.float64)).sum().backward()
                opt.step()
                run.log({"accuracy": accuracy})
        return run.path

    a, b = train(tmp_path / "a", [0.5, 0.625, 0.75]), train(tmp_path / "b", [0.5, 0.625, 0.875])
    assert [{"name": "accuracy", "steps": 3, "first": 0.5, "last": 0.75, "min": 0.5, "min_step": 0,
             "max": 0.75, "max_step": 2}] == summarize(a)["metrics"]  # fmt: skip
    assert [0.5, 0.625, 0.75] == [export.series(a, histograms=False).scalars[s]["metric/accuracy"] for s in range(3)]
    assert 'id="plot-metrics"' in _plots.html_section(a)  # the report page's plots include them
    assert 1 == _plots.metric_plot(a).count("<polyline")
    found = tracer.diff(a, b)
    assert (2, "metric", "accuracy", 0.75, 0.875) == (found.step, found.kind, found.name, found.a, found.b)
