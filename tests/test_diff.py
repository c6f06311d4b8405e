"""tracer.diff: the first divergence between two traces, in training order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _reference import make_reference, train_reference

import tracer
from tracer import Divergence
from tracer._diff import HparamDivergence


def make_trace(path, *, steps=2, lr=0.01, batch=1, **options):
    """The reference example (tests/_reference.py), ``steps`` steps, the sample repeated ``batch`` times."""
    model, x, y, loss_fn, optimizer = make_reference()
    optimizer.param_groups[0]["lr"] = lr
    x, y = x.repeat(batch, 1), y.repeat(batch, 1)
    with tracer.trace(model, optimizer, path=path, **options) as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=steps)
    return run


def with_values(df, kind, name, step, values):
    """A copy of ``df`` with the values of one row replaced."""
    df = df.copy()
    row = df.index[(df["kind"] == kind) & (df["name"] == name) & (df["step"] == step)][0]
    df.at[row, "values"] = np.asarray(values, dtype=np.float64).ravel()
    return df


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    return {
        "ref": make_trace(root / "ref"),
        "same": make_trace(root / "same"),
        "lr": make_trace(root / "lr", lr=0.02),
        "three": make_trace(root / "three", steps=3),
        "gap": make_trace(root / "gap", steps=3, every=2),
        "stats": make_trace(root / "stats", max_values=0),
        "stats_lr": make_trace(root / "stats_lr", lr=0.02, max_values=0),
    }


def test_identical_traces(traces):
    ref = traces["ref"]
    assert tracer.diff(ref, traces["same"]) is None
    assert tracer.diff(ref.path, str(traces["same"].path)) is None
    assert tracer.diff(tracer.load(ref.path), ref) is None
    assert tracer.diff(tracer.open(ref.path), tracer.open(traces["same"].path)) is None


def test_a_trace_and_its_dataframe_give_the_same_divergence(traces):
    from_paths = tracer.diff(traces["ref"].path, traces["lr"].path)
    assert from_paths == tracer.diff(tracer.open(traces["ref"].path), tracer.load(traces["lr"].path))
    assert from_paths == tracer.diff(tracer.load(traces["ref"].path), tracer.open(traces["lr"].path))


def test_a_changed_learning_rate_is_reported_as_such_before_the_values(traces):
    found = tracer.diff(traces["ref"], traces["lr"])
    assert isinstance(found, HparamDivergence) and isinstance(found, Divergence)
    assert (0, "update", "weight", "hparams", 0.01, 0.02) == (
        found.step, found.kind, found.name, found.field, found.a, found.b
    )  # fmt: skip
    assert ("SGD", 0, (("lr", 0.01, 0.02),)) == (found.change.optimizer, found.change.group, found.change.differ)
    text = str(found)
    assert text.startswith(
        "traces diverge at step 0: the learning rate (lr) of SGD param group 0 differs: a = 0.01, b = 0.02\n"
        "  the first value that differs:\n"
        "    traces diverge at step 0: update 'weight' call 0: values differ at index (0, 0)"
    )
    assert found.then == tracer.diff(traces["ref"], traces["lr"], hparams=False)
    assert 11 == found.later  # the value divergence, and the 10 rows after it


def test_learning_rates_differ_first_value_divergence_is_the_step_0_update(traces):
    found = tracer.diff(traces["ref"], traces["lr"], hparams=False)
    assert type(found) is Divergence
    assert (0, "update", "weight", 0, "", "values", 0) == (
        found.step,
        found.kind,
        found.name,
        found.call,
        found.part,
        found.field,
        found.index,
    )
    assert 0.1 == pytest.approx(found.a) and 0.2 == pytest.approx(found.b)
    # later: the bias update of step 0, then step 1's activation, loss, grads, params, updates
    assert 10 == found.later
    text = str(found)
    assert "traces diverge at step 0: update 'weight' call 0" in text
    assert "index (0, 0)" in text
    assert f"a = {found.a!r}, b = {found.b!r}" in text
    assert "10 later rows also differ" in text


def scheduled(path, *, gamma, momentum=0.0, steps=3):
    """The reference example under a StepLR schedule: the lr changes after step 0 by ``gamma``."""
    model, x, y, loss_fn, optimizer = make_reference()
    optimizer.param_groups[0]["momentum"] = momentum
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
    with tracer.trace(model, optimizer, path=path) as run:
        for _ in range(steps):
            train_reference(model, x, y, loss_fn, optimizer, steps=1)
            schedule.step()
    return run.path


def test_a_learning_rate_that_a_schedule_changes_later_is_found_at_its_step(tmp_path):
    a, b = scheduled(tmp_path / "a", gamma=1.0), scheduled(tmp_path / "b", gamma=0.5)
    found = tracer.diff(a, b)
    assert (1, "hparams", 0.01, 0.005) == (found.step, found.field, found.a, found.b)
    assert (1, "update") == (found.then.step, found.then.kind)  # step 1's update is the first value it changes
    assert "the learning rate (lr) of SGD param group 0 differs: a = 0.01, b = 0.005" in str(found)


def test_values_that_differ_before_the_hyper_parameters_come_first(tmp_path):
    a, b = scheduled(tmp_path / "a", gamma=1.0), scheduled(tmp_path / "b", gamma=0.5)
    nudged = with_values(tracer.load(b), "grad", "bias", 0, [-11.0])  # step 0, before the lr changes
    found = tracer.diff(tracer.load(a), nudged)
    assert (0, "grad", "bias", "values") == (found.step, found.kind, found.name, found.field)
    assert type(found) is Divergence


def test_other_hyper_parameters_are_named_after_the_learning_rate(tmp_path):
    a = scheduled(tmp_path / "a", gamma=1.0, steps=1)
    b = scheduled(tmp_path / "b", gamma=1.0, momentum=0.9, steps=1)
    found = tracer.diff(a, b)
    assert (
        "traces diverge at step 0: the momentum of SGD param group 0 differs: a = 0.0, b = 0.9\n  no value differs beyond the tolerances"
        == str(found)
    )  # one step: momentum does not act yet
    found = tracer.diff(traces_with_lr_and_momentum(tmp_path), a)
    assert ("lr", "momentum") == tuple(k for k, _, _ in found.change.differ)
    assert "differs: a = 0.02, b = 0.01; also momentum (a = 0.9, b = 0.0)" in str(found)


def traces_with_lr_and_momentum(tmp_path):
    model, x, y, loss_fn, optimizer = make_reference()
    optimizer.param_groups[0].update(lr=0.02, momentum=0.9)
    with tracer.trace(model, optimizer, path=tmp_path / "both") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=1)
    return run.path


def test_logged_metrics_are_compared(traces):
    from test_summary import with_metrics

    a = with_metrics(tracer.load(traces["ref"].path), {0: {"accuracy": 0.5}, 1: {"accuracy": 0.75}})
    b = with_metrics(tracer.load(traces["ref"].path), {0: {"accuracy": 0.5}, 1: {"accuracy": 0.625}})
    assert tracer.diff(a, a.copy()) is None
    found = tracer.diff(a, b)
    assert (1, "metric", "accuracy", "values", 0.75, 0.625) == (
        found.step,
        found.kind,
        found.name,
        found.field,
        found.a,
        found.b,
    )
    assert "traces diverge at step 1: metric 'accuracy' call 0: values differ at index (): a = 0.75, b = 0.625" in str(
        found
    )


def test_missing_last_step(traces):
    found = tracer.diff(traces["three"], traces["ref"])
    assert (2, "missing", True, False) == (found.step, found.field, found.a, found.b)
    assert (found.kind, found.name, found.part) == ("input", "", "0")  # the step's first event
    assert 9 == found.later
    text = str(found)
    assert "is in a but not in b" in text and "b has no step 2" in text
    assert "is in b but not in a" in str(tracer.diff(traces["ref"], traces["three"]))


def test_missing_middle_step(traces):
    found = tracer.diff(traces["three"], traces["gap"])  # gap traced steps 0 and 2 only
    assert (1, "missing") == (found.step, found.field)
    assert "b has no step 1; its steps are 0, 2" in str(found)
    assert 9 == found.later  # step 2 is the same in both


def test_renamed_parameter(traces):
    a = tracer.load(traces["ref"].path)
    b = a.copy()
    b.loc[b["name"] == "weight", "name"] = "fc.weight"
    found = tracer.diff(a, b)
    assert (0, "grad", "weight", "missing") == (found.step, found.kind, found.name, found.field)
    assert "b has grad 'fc.weight' at step 0 instead" in str(found)


def test_training_order_within_a_step(traces):
    a = tracer.load(traces["ref"].path)
    b = with_values(with_values(a, "grad", "bias", 0, [-11.0]), "activation", "", 0, [[4.0]])
    found = tracer.diff(a, b)
    assert ("activation", "") == (found.kind, found.name)  # the forward pass happened first
    assert 1 == found.later
    assert str(found).endswith("1 later row also differs")


def test_kinds(traces):
    found = tracer.diff(traces["ref"], traces["lr"], kinds=["loss", "grad"])
    assert (1, "loss", "loss") == (found.step, found.kind, found.name)
    assert tracer.diff(traces["ref"], traces["lr"], kinds="input") is None
    with pytest.raises(ValueError, match="unknown kind"):
        tracer.diff(traces["ref"], traces["lr"], kinds=["gradient"])


def test_tolerances(traces):
    assert tracer.diff(traces["ref"], traces["lr"], rtol=0.0, atol=10.0, hparams=False) is None
    only_lr = tracer.diff(traces["ref"], traces["lr"], rtol=0.0, atol=10.0)
    assert (None, 0) == (only_lr.then, only_lr.later)
    assert str(only_lr).endswith("differs: a = 0.01, b = 0.02\n  no value differs beyond the tolerances")
    found = tracer.diff(traces["ref"], traces["lr"], rtol=0.0, atol=1e-3, hparams=False)
    assert (found.rtol, found.atol) == (0.0, 1e-3)
    assert "rtol=0, atol=0.001" in str(found)


def test_statistics_are_compared_when_values_are_not_stored(traces):
    assert tracer.diff(traces["stats"], traces["ref"]) is None  # one side without values
    found = tracer.diff(traces["stats"], traces["stats_lr"]).then
    assert (0, "update", "weight", "mean", None) == (found.step, found.kind, found.name, found.field, found.index)
    assert "statistic 'mean'" in str(found)


def test_shape_divergence(tmp_path):
    found = tracer.diff(make_trace(tmp_path / "one", steps=1), make_trace(tmp_path / "two", steps=1, batch=2))
    assert ("input", "shape", (1, 2), (2, 2)) == (found.kind, found.field, found.a, found.b)
    assert "has shape (1, 2) in a and (2, 2) in b" in str(found)


def test_nan_in_both_is_not_a_divergence(traces):
    a = with_values(tracer.load(traces["ref"].path), "loss", "loss", 0, [float("nan")])
    assert tracer.diff(a, a.copy()) is None
    found = tracer.diff(a, tracer.load(traces["ref"].path))
    assert "loss" == found.kind and np.isnan(found.a) and 25.0 == found.b


def test_update_rows_use_the_parameters_precision(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    model, x, y = model.float(), x.float(), y.float()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, optimizer, path=tmp_path / "f32") as run:
        train_reference(model, x, y, loss_fn, optimizer)
    a = tracer.load(run.path)
    nudged = with_values(a, "update", "bias", 0, [a.loc[a["kind"] == "update", "values"].iloc[1][0] + 1e-6])
    assert tracer.diff(a, nudged) is None  # float32 parameter: float32 tolerances


def test_update_rows_alone_are_judged_at_the_precision_in_the_metadata(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    model, x, y = model.float(), x.float(), y.float()
    runs = []
    for lr in (0.01, 0.01 * (1 + 1e-6)):  # updates that differ by about float32 resolution
        model_copy, _, _, _, _ = make_reference()
        model_copy = model_copy.float()
        optimizer = torch.optim.SGD(model_copy.parameters(), lr=lr)
        with tracer.trace(model_copy, optimizer, path=tmp_path / f"lr{lr}") as run:
            train_reference(model_copy, x, y, loss_fn, optimizer)
        runs.append(run.path)
    assert (
        tracer.diff(*runs, kinds="update", hparams=False) is None
    )  # the param rows are not compared, yet float32 rules
    assert tracer.diff(*runs, kinds="update", rtol=0.0, atol=0.0, hparams=False) is not None  # they do differ
    assert "hparams" == tracer.diff(*runs, kinds="update").field  # and so do the learning rates


def test_empty_traces(tmp_path):
    model, _, _, _, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "empty"):
        pass
    assert tracer.diff(tmp_path / "empty", tmp_path / "empty") is None
    found = tracer.diff(tmp_path / "empty", make_trace(tmp_path / "full", steps=1))
    assert (0, "input", "missing", False, True) == (found.step, found.kind, found.field, found.a, found.b)
    assert "a has no step 0; its steps are none" in str(found)


def test_bad_input(tmp_path):
    with pytest.raises(tracer.TraceFormatError, match="does not exist"):
        tracer.diff(tmp_path / "nope", tmp_path / "nope")


def test_divergence_is_a_frozen_dataclass(traces):
    found = tracer.diff(traces["ref"], traces["lr"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.step = 3
    assert repr(found).startswith(
        "HparamDivergence(step=0, kind='update', name='weight', call=0, part='', field='hparams'"
    )
    assert repr(found.then).startswith("Divergence(step=0, kind='update', name='weight'")
