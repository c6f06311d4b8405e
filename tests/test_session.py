"""tracer.trace: steps, calls, parts, options, neutrality, hook removal, bad input."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer


def rows(df, kind, name=None):
    out = df[df.kind == kind]
    return out if name is None else out[out.name == name]


# --------------------------------------------------------------------------- steps / call / part


def test_gradient_accumulation_shares_the_step_and_counts_calls(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(2):  # two optimizer steps of two micro-batches each
            opt.zero_grad()
            for _ in range(2):
                (loss_fn(model(x), y) / 2).backward()
            opt.step()
        assert 2 == run.step
    df = tracer.load(run.path)
    act = rows(df, "activation", "")
    assert [(0, 0), (0, 1), (1, 0), (1, 1)] == list(zip(act.step, act.call))
    loss = rows(df, "loss")
    assert [(0, 0), (0, 1), (1, 0), (1, 1)] == list(zip(loss.step, loss.call))
    agrad = rows(df, "activation_grad", "")
    assert [(0, 0), (0, 1), (1, 0), (1, 1)] == list(zip(agrad.step, agrad.call))
    grad = rows(df, "grad", "weight")
    assert [0, 1] == grad.step.tolist()
    assert [-10.0, -20.0] == grad.iloc[0]["values"].tolist()  # (−5, −10) from each half-loss, summed


def test_module_called_twice_in_one_forward(tmp_path):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(self.lin(x))

    model = Twice()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    df = tracer.load(run.path)
    assert [0, 1] == rows(df, "activation", "lin").call.tolist()
    assert [0, 1] == sorted(rows(df, "activation_grad", "lin").call.tolist())
    first_out = rows(df, "activation", "lin").iloc[0]["values"]
    second_in = rows(df, "input", "lin").iloc[1]["values"]
    assert first_out.tolist() == second_in.tolist()


def test_lstm_nested_outputs_have_dotted_parts(tmp_path):
    model = nn.LSTM(3, 4, batch_first=True)
    with tracer.trace(model, path=tmp_path / "t") as run:
        out, (h, c) = model(torch.randn(2, 5, 3))
        out.sum().backward()
    df = tracer.load(run.path)
    assert ["0", "1.0", "1.1"] == rows(df, "activation", "").part.tolist()
    assert [[2, 5, 4], [1, 2, 4], [1, 2, 4]] == [s.tolist() for s in rows(df, "activation", "")["shape"]]
    assert ["0"] == rows(df, "activation_grad", "").part.tolist()  # only `out` got a gradient


def test_dict_namedtuple_kwargs_and_non_tensors(tmp_path):
    Pair = collections.namedtuple("Pair", "h c")

    class Fancy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, scale=1.0, *, mask=None, note="text"):
            y = self.lin(x) * scale
            return {"y": y, "pair": Pair(y + 1, y - 1), "n": 3, "s": "skip", "none": None}

    model = Fancy()
    with tracer.trace(model, path=tmp_path / "t") as run:
        model(torch.ones(1, 2), 2.0, mask=torch.tensor([True, False]), note="hi")
    df = tracer.load(run.path)
    assert ["0", "mask"] == rows(df, "input", "").part.tolist()
    mask = rows(df, "input", "").iloc[1]
    assert "bool" == mask["dtype"] and [1.0, 0.0] == mask["values"].tolist()
    assert ["y", "pair.h", "pair.c"] == rows(df, "activation", "").part.tolist()


def test_integer_bool_half_and_empty_tensors_are_exact(tmp_path):
    class Echo(nn.Module):
        def forward(self, *tensors):
            return tensors

    ints = torch.tensor([0, -3, 2**40], dtype=torch.int64)
    flags = torch.tensor([True, False, True])
    half = torch.tensor([0.1, 65504.0, -1e-4], dtype=torch.float16)
    bf16 = torch.tensor([0.1, 3.0e38, -7.0], dtype=torch.bfloat16)
    empty = torch.zeros(0, 3)
    model = Echo()
    with tracer.trace(model, path=tmp_path / "u") as run:
        model(ints, flags, half, bf16, empty)
    df = rows(tracer.load(run.path), "activation", "")
    by_part = {r.part: r for r in df.itertuples()}
    assert ints.tolist() == by_part["0"].values.tolist()
    assert "int64" == by_part["0"].dtype
    assert [1.0, 0.0, 1.0] == by_part["1"].values.tolist()
    assert half.double().tolist() == by_part["2"].values.tolist()  # exact: no rounding to float64 text
    assert bf16.double().tolist() == by_part["3"].values.tolist()
    assert "bfloat16" == by_part["3"].dtype
    assert [0, 3] == by_part["4"].shape.tolist() and 0 == by_part["4"].numel
    assert [] == by_part["4"].values.tolist()


def test_huge_int64_values_are_not_stored_wrong(tmp_path):
    model = nn.Identity()
    with tracer.trace(model, path=tmp_path / "t") as run:
        model(torch.tensor([2**60 + 1], dtype=torch.int64))
    act = rows(tracer.load(run.path), "activation").iloc[0]
    assert act["values"] is None  # 2**60 + 1 has no exact float64


def test_without_optimizer_each_forward_is_a_step(tmp_path):
    model = nn.Linear(2, 1)
    with tracer.trace(model, path=tmp_path / "t") as run:
        for _ in range(3):
            model(torch.ones(1, 2)).sum().backward()
        assert 2 == run.step
    df = tracer.load(run.path)
    assert [0, 1, 2] == rows(df, "loss").step.tolist()
    assert [0, 1, 2] == rows(df, "activation_grad").step.tolist()
    # no optimizer: .grad after each backward (accumulating, never zeroed here), and the
    # parameters at each step, whose update is nil: nothing changed them
    grads = rows(df, "grad").set_index(["step", "name"])["values"]
    assert [1.0, 1.0] == grads[(0, "weight")].tolist()
    assert [3.0, 3.0] == grads[(2, "weight")].tolist()
    assert (rows(df, "update")["norm"] == 0).all()
    assert 6 == len(rows(df, "param"))


def test_every_traces_every_nth_step(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t", every=2) as run:
        train_reference(model, x, y, loss_fn, opt, steps=5)
    df = tracer.load(run.path)
    assert {0, 2, 4} == set(df.step)
    assert [0, 2, 4] == rows(df, "loss").step.tolist()


def test_include_exclude_and_capture(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(
        model, opt, path=tmp_path / "t", include=["0*", "2"], exclude="*.bias",
        capture=["activation", "grad", "loss"],
    ) as run:  # fmt: skip
        model(torch.ones(4, 2)).sum().backward()
        opt.step()
    df = tracer.load(run.path)
    assert {"activation", "grad", "loss"} == set(df.kind)
    assert ["0", "2"] == rows(df, "activation").name.tolist()
    assert ["0.weight"] == rows(df, "grad").name.tolist()
    assert 1 == len(rows(df, "loss"))  # the loss is always traced


def test_max_values(tmp_path):
    model = nn.Linear(4, 16)
    for max_values, stored in [(0, set()), (4, {"4"}), (16, {"4", "16"}), (None, {"4", "16"})]:
        path = tmp_path / f"t{max_values}"
        with tracer.trace(model, path=path, max_values=max_values, capture=["input", "activation"]):
            model(torch.ones(1, 4))
        df = tracer.load(path)
        assert stored == {str(r.numel) for r in df.itertuples() if r.values is not None}
        assert df["norm"].notna().all()  # statistics are always stored


def test_full_capture_of_large_tensors_is_exact_at_every_step(tmp_path):
    # tensors of 16384+ elements are copied into recycled memory (CopyPool): a block
    # reused too early would show a later step's numbers in an earlier row
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 128)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(128, 128, dtype=torch.float64), torch.randn(128, 128, dtype=torch.float64)
    expected = collections.defaultdict(dict)
    with tracer.trace(model, opt, path=tmp_path / "t", max_values=None, flush_seconds=0.05) as run:
        for step in range(5):
            opt.zero_grad()
            out = model(x)
            expected["activation"][step] = out.detach().clone()
            nn.functional.mse_loss(out, y).backward()
            w = model[0].weight
            expected["grad"][step], expected["param"][step] = w.grad.clone(), w.detach().clone()
            opt.step()
            expected["update"][step] = w.detach() - expected["param"][step]
    df = tracer.load(run)
    for kind, name in [("activation", "2"), ("grad", "0.weight"), ("param", "0.weight"), ("update", "0.weight")]:
        got = rows(df, kind, name)
        assert got.step.tolist() == [0, 1, 2, 3, 4]
        for step, values in zip(got.step, got["values"]):
            assert torch.equal(torch.tensor(values).view(128, 128), expected[kind][step]), (kind, step)


def test_copy_pool_reuses_a_block_only_when_nothing_can_read_it():
    from tracer._tensors import CopyPool

    pool = CopyPool(max_bytes=1 << 30)
    shape = (CopyPool.POOLED,)
    a = pool.empty(shape, torch.float32).fill_(1)
    b = pool.empty(shape, torch.float32).fill_(2)
    assert a.data_ptr() != b.data_ptr()  # a live copy is never handed out twice
    address = a.data_ptr()
    del a  # nothing refers to it any more: its block goes back
    c = pool.empty(shape, torch.float32)
    assert c.data_ptr() == address and torch.all(b == 2)
    small = pool.empty((4,), torch.float32)  # below POOLED: plain allocation
    assert small.shape == (4,)
    capped = CopyPool(max_bytes=0)
    d = capped.empty(shape, torch.float32)
    address = d.data_ptr()
    del d  # over the cap: freed, not kept
    assert capped._free_bytes == 0


def test_stats_of_large_tensors_match_torch(tmp_path):
    torch.manual_seed(0)
    model = nn.Identity()
    t = torch.randn(100, 50) * 3 + 1
    with tracer.trace(model, path=tmp_path / "t", max_values=10):
        model(t)
    row = tracer.load(tmp_path / "t").iloc[-1]
    assert row["values"] is None
    assert pytest.approx(t.mean().item(), rel=1e-5) == row["mean"]
    assert pytest.approx(t.std(correction=0).item(), rel=1e-5) == row["std"]
    assert (t.min().item(), t.max().item()) == (row["min"], row["max"])
    assert pytest.approx(t.norm().item(), rel=1e-5) == row["norm"]


def test_nonfinite_is_counted(tmp_path):
    model = nn.Identity()
    big = torch.ones(100)
    big[3], big[7] = float("nan"), float("inf")
    with tracer.trace(model, path=tmp_path / "t", max_values=10):
        model(big)
        model(torch.tensor([1.0, float("-inf")]))
    df = rows(tracer.load(tmp_path / "t"), "activation")
    assert [2, 1] == df.nonfinite.tolist()


def test_state_rows_hold_the_state_before_the_update(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt, steps=2)
    state = rows(tracer.load(run.path), "state", "weight")
    assert [1] == state.step.tolist()  # no state before the first update
    assert "momentum_buffer" == state.iloc[0]["part"]
    assert [-10.0, -20.0] == state.iloc[0]["values"].tolist()


def test_adam_state_and_hparams_per_step_follow_a_schedule(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(3):
            train_reference(model, x, y, loss_fn, opt)
            sched.step()
    df = tracer.load(run.path, kind=["grad", "state"], name="bias")
    import json

    lrs = [json.loads(h)["lr"] for h in df[df.kind == "grad"].hparams]
    assert [0.1, 0.05, 0.025] == lrs
    assert {"exp_avg", "exp_avg_sq", "step"} == set(df[df.kind == "state"].part)


def test_several_param_groups_and_optimizers(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    opt_a = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1}], lr=0.5)
    opt_b = torch.optim.Adam(model[1].parameters(), lr=0.01)
    with tracer.trace(model, [opt_a, opt_b], path=tmp_path / "t") as run:
        for _ in range(2):
            model(torch.ones(3, 2)).sum().backward()
            opt_b.step()
            opt_a.step()  # the first optimizer in the list advances the step
    df = tracer.load(run.path, kind="update")
    assert 2 == run.step
    assert {("0.weight", "SGD"), ("1.weight", "Adam")} <= set(zip(df.name, df.optimizer))
    assert [0, 0, 0, 0, 1, 1, 1, 1] == df.step.tolist()


def test_parameter_without_grad_gets_no_rows(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model(torch.ones(3, 2)).sum().backward()
        opt.step()
    df = tracer.load(run.path, kind=["grad", "param", "update"])
    assert "0.weight" not in set(df.name)
    assert {"0.bias", "1.weight", "1.bias"} == set(df.name)


# --------------------------------------------------------------------------- in-place after a module


def test_activation_grad_survives_inplace_relu_after_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(inplace=True), nn.Linear(4, 1))
    x = torch.randn(8, 3)
    with tracer.trace(model, path=tmp_path / "t") as run:
        model(x).pow(2).sum().backward()
    df = tracer.load(run.path, kind="activation_grad")
    # reference: the gradient w.r.t. BatchNorm's output, computed without tracing
    ref = copy.deepcopy(model)
    ref[2] = nn.ReLU()
    h = ref[1](ref[0](x))
    h.retain_grad()
    ref[3](ref[2](h)).pow(2).sum().backward()
    got = df[df.name == "1"].iloc[0]["values"]
    assert h.grad.flatten().tolist() == pytest.approx(got.tolist(), rel=1e-6)
    relu = df[df.name == "2"].iloc[0]["values"]
    assert relu.tolist() != got.tolist()  # ReLU's output gradient is not BatchNorm's


# --------------------------------------------------------------------------- never change training


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.drop(self.relu(self.bn(self.conv(x)))).flatten(1))


def _train(traced: bool, tmp_path, steps: int = 4):
    torch.manual_seed(1234)
    model = _Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = [(torch.randn(5, 3, 6, 6), torch.randint(0, 3, (5,))) for _ in range(steps)]

    def loop():
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    if traced:
        with tracer.trace(model, opt, path=tmp_path / "neutral", max_values=None):
            loop()
    else:
        loop()
    return model, opt, torch.get_rng_state()


def test_tracing_never_changes_training(tmp_path):
    plain, plain_opt, plain_rng = _train(False, tmp_path)
    traced, traced_opt, traced_rng = _train(True, tmp_path)
    assert torch.equal(plain_rng, traced_rng)
    for (name, a), (_, b) in zip(plain.state_dict().items(), traced.state_dict().items()):
        assert torch.equal(a, b), name
    for a, b in zip(plain.parameters(), traced.parameters()):
        assert torch.equal(a.grad, b.grad)
    for a, b in zip(plain_opt.state.values(), traced_opt.state.values()):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def _hook_counts(model, opt):
    counts = []
    for m in model.modules():
        counts.append(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks))
    counts.append(len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks))
    return counts


def test_every_hook_is_removed_on_exit(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    before = _hook_counts(model, opt)
    backward = torch.autograd.backward
    with tracer.trace(model, opt, path=tmp_path / "t"):
        assert torch.autograd.backward is not backward
        out = model(x)
        assert out._backward_hooks  # the activation-gradient hook
    assert before == _hook_counts(model, opt)
    assert torch.autograd.backward is backward
    assert not out._backward_hooks  # tensor hooks removed too


class _Interrupted(nn.Linear):
    def forward(self, x):
        torch.relu(x)
        raise KeyboardInterrupt  # not an Exception: torch runs no always-called hook for it


def test_capture_ops_leaves_no_mode_and_no_hook_even_when_forward_is_interrupted(tmp_path):
    from tracer import _dispatch

    model = nn.Sequential(nn.Linear(2, 2), _Interrupted(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_counts(model, opt)
    backward = torch.autograd.backward
    with pytest.raises(KeyboardInterrupt):
        with tracer.trace(model, opt, path=tmp_path / "t", capture_ops=True):
            model(torch.ones(1, 2))
    assert 0 == torch._C._len_torch_function_stack()  # the op-capturing mode is off the stack
    assert before == _hook_counts(model, opt)
    assert torch.autograd.backward is backward and [] == _dispatch._active
    ops = tracer.load(tmp_path / "t", kind="op")
    assert [("0", "linear.0"), ("1", "relu.0")] == list(zip(ops.name, ops.part))


def test_capture_ops_recovers_from_an_interrupted_forward_caught_in_the_block(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), _Interrupted(2, 2))
    x = torch.ones(1, 2)
    with tracer.trace(model, path=tmp_path / "t", capture_ops=True) as run:
        try:
            model(x)
        except KeyboardInterrupt:
            pass
        model[1].forward = torch.sigmoid  # the interruption is over
        model(x)  # the model's next forward: what the interrupted one left is dropped
        torch.tanh(x)  # outside any forward: no row
    ops = tracer.load(run.path, kind="op")
    assert [(0, "0", "linear.0"), (0, "1", "relu.0"), (1, "0", "linear.0"), (1, "1", "sigmoid.0")] == list(
        zip(ops.step, ops.name, ops.part)
    )  # (without an optimizer or a backward pass, each forward is a step)


def test_exception_propagates_unchanged_and_the_trace_stays_readable(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    before = _hook_counts(model, opt)
    error = KeyError("from the loop")
    with pytest.raises(KeyError) as info:
        with tracer.trace(model, opt, path=tmp_path / "t"):
            train_reference(model, x, y, loss_fn, opt)
            model(x)
            raise error
    assert info.value is error
    assert before == _hook_counts(model, opt)
    df = tracer.load(tmp_path / "t")
    assert [25.0] == rows(df, "loss").iloc[0]["values"].tolist()
    assert {0, 1} == set(df.step)


def test_nested_trace_of_one_model_is_refused(tmp_path):
    model, *_ = make_reference()
    with tracer.trace(model, path=tmp_path / "a"):
        with pytest.raises(RuntimeError, match="already being traced"):
            with tracer.trace(model, path=tmp_path / "b"):
                pass


def test_run_can_be_read_inside_the_block(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt)
        assert [25.0] == run.load(kind="loss").iloc[0]["values"].tolist()
        assert 1 == run.step
    assert 1 == run.step
    assert "finished" in repr(run)


def test_default_path_is_under_traces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt) as run:
        train_reference(model, x, y, loss_fn, opt)
    assert "traces" == run.path.parent.name
    assert run.path.name.startswith("Linear-")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"model": "not a model"}, TypeError, r"model must be a torch.nn.Module \(got str\)"),
        ({"optimizer": "sgd"}, TypeError, r"torch.optim.Optimizer.*\(got str\)"),
        ({"optimizer": [None]}, TypeError, r"got NoneType"),
        ({"capture": ["grad", "weights"]}, ValueError, r"unknown capture kind\(s\) \['weights'\]; valid kinds are \['input'"),
        ({"max_values": -1}, ValueError, r"max_values must be an int >= 0 or None \(got -1\)"),
        ({"every": 0}, ValueError, r"every must be an int >= 1 \(got 0\)"),
        ({"include": 3}, TypeError, r"include must be a glob pattern"),
        ({"overwrite": "yes"}, TypeError, r"overwrite must be True or False"),
        ({"path": 12}, TypeError, r"path must be a str or os.PathLike"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_at_the_call(tmp_path, kwargs, error, message):
    model, *_ = make_reference()
    args = {"model": model, "path": tmp_path / "t", **kwargs}
    with pytest.raises(error, match=message):
        tracer.trace(args.pop("model"), args.pop("optimizer", None), **args)
    assert not (tmp_path / "t").exists()  # nothing was created


def test_wrapped_models_use_the_inner_names(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    wrapped = nn.DataParallel(model)
    with tracer.trace(wrapped, opt, path=tmp_path / "t") as run:
        train_reference(wrapped, x, y, loss_fn, opt)
    assert {"weight", "bias"} == set(tracer.load(run.path, kind="grad").name)
