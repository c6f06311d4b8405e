"""tracer.testing: every assertion passing and failing, on the reference example's trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _reference import make_reference, train_reference

import tracer
import tracer.testing as tt


def make_trace(path, *, steps=2, lr=0.01, momentum=0.0, dtype=torch.float64, optimizer_cls=None, **options):
    """The reference example (see tests/_reference.py) traced for ``steps`` steps."""
    model, x, y, loss_fn, optimizer = make_reference()
    if dtype != torch.float64:
        model, x, y = model.to(dtype), x.to(dtype), y.to(dtype)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if optimizer_cls is not None:
        optimizer = optimizer_cls(model.parameters(), lr=lr)
    else:
        optimizer.param_groups[0]["lr"] = lr
        optimizer.param_groups[0]["momentum"] = momentum
    with tracer.trace(model, optimizer, path=path, **options) as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=steps)
    return run


def with_values(df, kind, name, step, values):
    """A copy of ``df`` with the values of one row replaced (a trace that went wrong)."""
    df = df.copy()
    row = df.index[(df["kind"] == kind) & (df["name"] == name) & (df["step"] == step)][0]
    df.at[row, "values"] = np.asarray(values, dtype=np.float64).ravel()
    return df


class Halve(torch.optim.Optimizer):
    """A user's optimizer that tracer has no rule for: plain SGD written by hand."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The reference example, two steps, every value stored."""
    return make_trace(tmp_path_factory.mktemp("ref") / "trace")


@pytest.fixture(scope="module")
def ref_frame(ref):
    return tracer.load(ref.path)


@pytest.fixture(params=["path", "str", "run", "frame"])
def trace(request, ref, ref_frame):
    """The reference trace in each form the assertions accept."""
    return {"path": ref.path, "str": str(ref.path), "run": ref, "frame": ref_frame}[request.param]


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- passing


def test_reference_step_passes_in_every_input_form(trace):
    tt.assert_input(trace, "", [[1.0, 2.0]])
    tt.assert_activation(trace, "", [[3.0]])
    tt.assert_loss(trace, 25.0)
    tt.assert_activation_grad(trace, "", [[-10.0]])
    tt.assert_grad(trace, "weight", [[-10.0, -20.0]])
    tt.assert_grad(trace, "bias", [-10.0])
    tt.assert_param(trace, "weight", [[1.0, 1.0]])
    tt.assert_param(trace, "bias", [0.0])
    tt.assert_update(trace, "weight", [[0.1, 0.2]])
    tt.assert_update(trace, "bias", [0.1])


def test_later_steps(ref):
    tt.assert_loss(ref, 19.36, step=1)
    tt.assert_param(ref, "weight", [[1.1, 1.2]], step=1)
    tt.assert_grad(ref, "bias", [-8.8], step=1)


@pytest.mark.parametrize(
    "expected",
    [
        [[-10, -20]],
        np.array([[-10.0, -20.0]]),
        np.array([[-10.0, -20.0]], dtype=np.float32),
        torch.tensor([[-10.0, -20.0]]),
        torch.tensor([[-10, -20]]),
    ],
    ids=["list-of-ints", "numpy", "numpy-float32", "tensor-float32", "tensor-int64"],
)
def test_expected_may_be_anything_as_tensor_takes(ref, expected):
    tt.assert_grad(ref, "weight", expected)


def test_expected_number_for_a_scalar(ref):
    tt.assert_loss(ref, 25)
    tt.assert_loss(ref, np.float64(25.0))


def test_expected_python_floats_are_not_rounded_through_float32(ref):
    # torch.as_tensor([0.1, 0.2]) would be float32, about 3e-9 off: far more than atol here
    tt.assert_update(ref, "weight", [[0.1, 0.2]], rtol=0.0, atol=1e-12)


def test_state(tmp_path):
    run = make_trace(tmp_path / "momentum", momentum=0.9)
    tt.assert_state(run, "weight", "momentum_buffer", [[-10.0, -20.0]], step=1)
    message = failure(tt.assert_state, run, "weight", "momentum_buffr", [[0.0, 0.0]], step=1)
    assert "key 'momentum_buffr'" in message
    assert "'momentum_buffer'" in message


# --------------------------------------------------------------------------- failing


def test_grad_mismatch_message(trace):
    message = failure(tt.assert_grad, trace, "weight", [[-10.0, -21.0]])
    assert "grad 'weight' at step 0, call 0 is not close to expected!" in message
    assert "Mismatched elements: 1 / 2 (50.0%)" in message
    assert "First mismatch at index (0, 1): traced -20.0, expected -21.0" in message
    assert "Greatest absolute difference: 1.0 at index (0, 1)" in message
    assert "Greatest relative difference:" in message
    assert "float64" in message


def test_scalar_mismatch_message(ref):
    message = failure(tt.assert_loss, ref, 26.0, step=0)
    assert message.startswith("loss at step 0, call 0 is not close to expected!")
    assert "Mismatched elements: 1 / 1 (100.0%)" in message
    assert "First mismatch at index (): traced 25.0, expected 26.0" in message
    assert "Absolute difference: 1.0" in message


def test_mismatch_at_a_later_step_names_the_step(ref):
    message = failure(tt.assert_update, ref, "bias", [0.1], step=1)
    assert "update 'bias' at step 1" in message
    assert "traced 0.08" in message and "expected 0.1" in message


@pytest.mark.parametrize(
    "check, args",
    [
        (tt.assert_activation, ("", [[4.0]])),
        (tt.assert_input, ("", [[1.0, 3.0]])),
        (tt.assert_activation_grad, ("", [[-9.0]])),
        (tt.assert_param, ("bias", [1.0])),
        (tt.assert_update, ("weight", [[0.1, 0.3]])),
    ],
)
def test_every_assertion_fails_on_wrong_values(ref, check, args):
    message = failure(check, ref, *args)
    kind = check.__name__.removeprefix("assert_")
    assert f"{kind} {args[0]!r} at step 0, call 0" in message
    assert "First mismatch at index" in message


def test_unknown_name_lists_the_names_closest_first(trace):
    message = failure(tt.assert_grad, trace, "bais", [-10.0])
    assert "no grad named 'bais'" in message
    assert message.index("'bias'") < message.index("'weight'")
    message = failure(tt.assert_grad, trace, "weihgt", [-10.0])
    assert message.index("'weight'") < message.index("'bias'")


def test_unknown_module_name(ref):
    message = failure(tt.assert_activation, ref, "fc", [[3.0]])
    assert "no activation named 'fc'" in message
    assert "''" in message


def test_missing_step_call_and_part(ref):
    message = failure(tt.assert_grad, ref, "weight", [[-10.0, -20.0]], step=5)
    assert "step 5" in message and "steps 0, 1" in message
    message = failure(tt.assert_activation, ref, "", [[3.0]], call=2)
    assert "call 2" in message and "calls 0" in message
    message = failure(tt.assert_activation, ref, "", [[3.0]], part="1")
    assert "part '1'" in message


def test_kind_not_captured(tmp_path):
    run = make_trace(tmp_path / "t", steps=1, capture=["loss", "grad"])
    message = failure(tt.assert_update, run, "weight", [[0.1, 0.2]])
    assert "no update rows" in message and "capture" in message


def test_shape_mismatch_says_both_shapes(trace):
    message = failure(tt.assert_grad, trace, "weight", [-10.0, -20.0])
    assert "grad 'weight' at step 0" in message
    assert "traced shape (1, 2)" in message and "expected shape (2,)" in message
    message = failure(tt.assert_grad, trace, "bias", -10.0)
    assert "traced shape (1,)" in message and "expected shape ()" in message


def test_values_not_stored_fails_and_says_how_to_fix(tmp_path):
    run = make_trace(tmp_path / "stats", steps=1, max_values=0)
    message = failure(tt.assert_grad, run, "weight", [[-10.0, -20.0]])
    assert "grad 'weight' at step 0" in message
    assert "no stored values" in message
    assert "max_values=0" in message and "max_values=None" in message
    message = failure(tt.assert_grad, tracer.load(run.path), "weight", [[-10.0, -20.0]])
    assert "max_values=None" in message


def test_frame_without_needed_columns_is_a_value_error(ref):
    with pytest.raises(ValueError, match="lacks the trace column"):
        tt.assert_loss(tracer.load(ref.path, columns=["step", "kind", "name"]), 25.0)


# --------------------------------------------------------------------------- tolerances


@pytest.fixture(scope="module")
def ref32(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("ref32") / "trace", steps=1, dtype=torch.float32)


def test_default_tolerances_follow_the_traced_dtype(ref, ref32):
    tt.assert_grad(ref32, "weight", [[-10.0, -20.0 + 1e-5]])  # within float32's atol + rtol·|x|
    failure(tt.assert_grad, ref, "weight", [[-10.0, -20.0 + 1e-5]])  # not within float64's


def test_update_tolerance_is_the_parameters_dtype(ref, ref32):
    # the update column is float64 for every parameter; float32 parameters get float32 tolerances
    assert tracer.load(ref32.path, kind="update")["dtype"].eq("float64").all()
    tt.assert_update(ref32, "bias", [0.1 + 5e-6])
    message = failure(tt.assert_update, ref, "bias", [0.1 + 5e-6])
    assert "float64" in message


def test_explicit_tolerances(ref):
    tt.assert_grad(ref, "weight", [[-10.0, -20.5]], atol=0.6, rtol=0.0)
    tt.assert_grad(ref, "weight", [[-10.0, -20.5]], rtol=0.03)
    message = failure(tt.assert_grad, ref, "weight", [[-10.0, -20.5]], atol=0.1, rtol=0.0)
    assert "rtol=0, atol=0.1" in message


# --------------------------------------------------------------------------- whole traces


def test_traces_close(ref, ref_frame, tmp_path):
    tt.assert_traces_close(ref, ref_frame)
    tt.assert_traces_close(ref.path, make_trace(tmp_path / "again"))


def test_traces_not_close(ref, tmp_path):
    other = make_trace(tmp_path / "lr", lr=0.02)
    message = failure(tt.assert_traces_close, ref, other)
    assert "traces are not close!" in message
    assert "step 0: update 'weight' call 0" in message
    assert "a = 0.1" in message and "b = 0.19" in message
    assert str(other.path) in message


def test_updates_follow_rule(trace):
    tt.assert_updates_follow_rule(trace)


def test_update_that_breaks_the_rule_fails(ref_frame):
    broken = with_values(ref_frame, "update", "weight", 1, [0.088, 0.2])
    message = failure(tt.assert_updates_follow_rule, broken)
    assert message.startswith("1 of 4 traced updates does not follow the rule:\n")
    assert "step 1, 'weight' (SGD" in message
    assert "index (0, 1)" in message
    assert "observed 1.4" in message and "predicted 1.376" in message


def test_updates_that_differ_and_updates_not_checked_are_reported_apart(ref_frame):
    broken = with_values(ref_frame, "update", "weight", 1, [0.088, 0.2])
    row = broken.index[(broken["kind"] == "param") & (broken["name"] == "bias") & (broken["step"] == 0)][0]
    broken.at[row, "values"] = None  # not stored, and no verify=True: cannot be checked
    lines = failure(tt.assert_updates_follow_rule, broken).splitlines()
    differ, unchecked = (
        lines.index("1 of 4 traced updates does not follow the rule:"),
        lines.index("1 of 4 traced updates could not be checked:"),
    )
    assert differ == 0 and "step 1, 'weight' (SGD, checked by rule)" in lines[1]
    assert "step 0, 'bias' (SGD): not checked: the values of param were not stored" in lines[unchecked + 1]


def test_unchecked_update_fails_and_names_the_optimizer(tmp_path):
    run = make_trace(tmp_path / "custom", optimizer_cls=Halve)
    message = failure(tt.assert_updates_follow_rule, run)
    assert "4 of 4 traced updates could not be checked" in message
    assert "Halve" in message
    tt.assert_updates_follow_rule(run, optimizers=[Halve])  # replay checks it


def test_no_updates_to_check_fails(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    with tracer.trace(model, path=tmp_path / "fwd") as run:
        loss_fn(model(x), y).backward()
    message = failure(tt.assert_updates_follow_rule, run)
    assert "no updates to check" in message


def test_update_checks_respect_tolerances(ref_frame):
    nudged = with_values(ref_frame, "update", "bias", 0, [0.1 + 1e-4])
    failure(tt.assert_updates_follow_rule, nudged)
    tt.assert_updates_follow_rule(nudged, atol=1e-3)


# --------------------------------------------------------------------------- golden traces


def test_golden_missing_then_written_then_matched(ref, tmp_path):
    golden = tmp_path / "golden"
    message = failure(tt.assert_matches_golden, ref, golden, update=False)
    assert "no golden trace" in message and "--tracer-update-golden" in message
    tt.assert_matches_golden(ref, golden, kinds=["loss", "grad", "update"], update=True)
    stored = tracer.load(golden)
    assert {"loss", "grad", "update"} == set(stored["kind"])
    assert len(tracer.load(ref.path, kind=["loss", "grad", "update"])) == len(stored)
    tt.assert_matches_golden(ref, golden, kinds=["loss", "grad", "update"], update=False)


def test_golden_never_deletes_parquet_files_tracer_did_not_write(ref, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    golden = tmp_path / "golden"
    tt.assert_matches_golden(ref, golden, kinds=["loss"], update=True)
    pq.write_table(pa.table({"x": [1]}), golden / "part-00000.parquet")  # Spark's, say
    with pytest.raises(FileExistsError, match="did not write.*part-00000.parquet"):
        tt.assert_matches_golden(ref, golden, kinds=["loss", "grad"], update=True)
    assert (golden / "part-00000.parquet").exists()


def test_golden_divergence_message(ref, tmp_path):
    golden = tmp_path / "golden"
    tt.assert_matches_golden(ref, golden, kinds=["update"], update=True)
    other = make_trace(tmp_path / "lr", lr=0.02)
    message = failure(tt.assert_matches_golden, other, golden, kinds=["update"], update=False)
    assert "does not match the golden trace" in message
    assert "step 0: update 'weight' call 0" in message
    assert "golden = 0.1" in message and "trace = 0.19" in message
    assert "--tracer-update-golden" in message


def test_golden_keeps_only_chosen_rows_and_statistics_of_big_tensors(ref, tmp_path):
    golden = tmp_path / "golden"
    tt.assert_matches_golden(ref, golden, names=["weight"], steps=0, max_values=1, update=True)
    stored = tracer.load(golden)
    assert {"weight"} == set(stored["name"])
    assert {0} == set(stored["step"])
    assert stored["values"].isna().all()  # weight has 2 elements > max_values
    assert (stored["norm"] > 0).all()
    tt.assert_matches_golden(ref, golden, names=["weight"], steps=0, max_values=1, update=False)


def test_golden_compares_statistics_when_values_are_not_kept(ref, tmp_path):
    golden = tmp_path / "golden"
    tt.assert_matches_golden(ref, golden, kinds="update", max_values=0, update=True)
    other = make_trace(tmp_path / "lr", lr=0.02)
    message = failure(tt.assert_matches_golden, other, golden, kinds="update", max_values=0, update=False)
    assert "statistic 'mean'" in message


def test_golden_update_leaves_an_unchanged_golden_alone(ref, tmp_path):
    golden = tmp_path / "golden"
    tt.assert_matches_golden(ref, golden, update=True)
    before = {p.name: p.stat().st_mtime_ns for p in golden.iterdir()}
    tt.assert_matches_golden(ref, golden, update=True)
    assert before == {p.name: p.stat().st_mtime_ns for p in golden.iterdir()}


def test_golden_update_rewrites_and_keeps_foreign_files(ref, tmp_path):
    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "README.md").write_text("golden trace of test_x\n")
    tt.assert_matches_golden(ref, golden, kinds="loss", update=True)
    other = make_trace(tmp_path / "lr", lr=0.02)
    tt.assert_matches_golden(other, golden, kinds="loss", update=True)
    tt.assert_matches_golden(other, golden, kinds="loss", update=False)
    assert (golden / "README.md").read_text() == "golden trace of test_x\n"
    assert 1 == len(list(golden.glob("*.parquet")))


def test_golden_update_from_environment(monkeypatch):
    from tracer._golden import update_requested

    monkeypatch.setenv("TRACER_UPDATE_GOLDEN", "1")
    assert update_requested()
    monkeypatch.setenv("TRACER_UPDATE_GOLDEN", "0")
    assert not update_requested()  # nor is this session run with --tracer-update-golden


def test_golden_from_a_frame(ref_frame, tmp_path):
    golden = tmp_path / "golden"
    tt.assert_matches_golden(ref_frame, golden, update=True)
    tt.assert_matches_golden(ref_frame, golden, update=False)


def test_public_names():
    assert sorted(tt.__all__) == tt.__all__
    for name in tt.__all__:
        assert callable(getattr(tt, name))


# --------------------------------------------------------------------------- evaluation rows


X_EVAL = torch.tensor([[3.0, -1.0]], dtype=torch.float64)  # reference weights [1, 1], bias 0: ŷ = 2


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Step 0 of the reference example after two forward passes under torch.no_grad() (evaluations)."""
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path_factory.mktemp("eval") / "t") as run:
        with torch.no_grad():
            model(X_EVAL)  # ŷ = 2
            model(2 * X_EVAL)  # ŷ = 4
        train_reference(model, x, y, loss_fn, optimizer)
    return run


def calls_apart(frame):
    """``frame`` with the calls of evaluation and training forwards each counted from 0, as the
    capture side numbers them (a trace already numbered so is left as it is)."""
    frame = frame.copy()
    modules = frame["kind"].isin(["input", "activation", "activation_grad"])
    evaluation = frame["grad_enabled"].eq(False).fillna(False)
    rows = frame[modules].assign(evaluation=evaluation[modules])
    ranks = rows.groupby(["step", "kind", "name", "part", "evaluation"])["call"].rank(method="dense") - 1
    frame.loc[modules, "call"] = ranks.astype("int64")
    return frame


def test_evaluation_and_training_rows_of_one_call_are_told_apart(evaluated):
    frame = calls_apart(tracer.load(evaluated))
    both = frame[(frame.kind == "activation") & (frame.call == 0)]
    assert [False, True] == list(both.grad_enabled)  # the evaluation ran first: same step, same call
    tt.assert_activation(frame, "", [[3.0]])  # the training row, not the evaluation one first in the trace
    tt.assert_input(frame, "", [[1.0, 2.0]])
    tt.assert_activation(frame, "", [[2.0]], evaluation=True)
    tt.assert_input(frame, "", X_EVAL, evaluation=True)
    assert "(evaluation: recorded without gradients) is not close" in failure(
        tt.assert_activation, frame, "", [[3.0]], evaluation=True
    )


def test_evaluation_rows_of_a_real_trace(evaluated):
    tt.assert_activation(evaluated, "", [[2.0]], evaluation=True)  # calls 0 and 1 in any numbering: they ran first
    tt.assert_activation(evaluated, "", [[4.0]], evaluation=True, call=1)
    training = tracer.load(evaluated, kind="activation").query("grad_enabled == True")
    tt.assert_activation(evaluated, "", [[3.0]], call=int(training.call.iloc[0]))


def test_an_inference_only_trace_uses_its_evaluation_rows(tmp_path):
    model, *_ = make_reference()
    with tracer.trace(model, path=tmp_path / "t") as run, torch.no_grad():
        model(X_EVAL)
    tt.assert_activation(run, "", [[2.0]])
    tt.assert_input(run, "", X_EVAL)
    message = failure(tt.assert_activation, run, "", [[9.0]])
    assert message.startswith("activation '' at step 0, call 0 (evaluation: recorded without gradients) is not close")


def test_missing_evaluation_rows_say_what_there_is(ref, evaluated):
    message = failure(tt.assert_activation, ref, "", [[3.0]], evaluation=True)
    assert "activation '' has no evaluation rows" in message and "pass evaluation=False" in message
    message = failure(tt.assert_activation, calls_apart(tracer.load(evaluated)), "", [[4.0]], call=1)
    assert (
        "no activation '' at step 0, call 1: activation '' at step 0 has calls 0; "
        "an evaluation row (recorded without gradients) matches: pass evaluation=True"
    ) == message


def test_diff_never_compares_a_training_row_with_an_evaluation_row(ref, evaluated):
    frame = calls_apart(tracer.load(evaluated))
    found = tracer.diff(frame, ref.path, kinds=["input", "activation"])
    assert ("input", "", 0, "missing", True) == (found.kind, found.name, found.call, found.field, found.evaluation)
    assert "input '' call 0 part '0' (evaluation, no gradients) is in a but not in b" in str(found)
    training = frame[frame.grad_enabled.ne(False)]
    assert tracer.diff(training, tracer.load(ref.path, step=0), kinds=["input", "activation"]) is None
