"""capture_ops=True: the tensor operations inside each module's forward as `op` rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import tracer

_stack_len = torch._C._len_torch_function_stack


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return torch.relu(self.fc(x)) + x  # relu.0, add.0 (fc's own linear is fc's)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = self.drop(self.block(x)).flatten(1)
        h = h * 2
        return self.head(h).max(dim=1)  # a tuple: values and indices


def ops(path):
    df = tracer.load(path, kind="op")
    return [(int(s), n, int(c), p) for s, n, c, p in zip(df.step, df.name, df.call, df.part)]


def test_each_op_is_named_by_its_innermost_module_and_counted(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    model.double()
    with tracer.trace(model, path=tmp_path / "t", capture_ops=True) as run:
        values, indices = model(x)
    assert [
        (0, "block.fc", 0, "linear.0"), (0, "block", 0, "relu.0"), (0, "block", 0, "add.0"),
        (0, "drop", 0, "dropout.0"), (0, "", 0, "flatten.0"), (0, "", 0, "mul.0"),
        (0, "head", 0, "linear.0"), (0, "", 0, "max.0.0"), (0, "", 0, "max.0.1"),
    ] == ops(run.path)  # fmt: skip
    df = tracer.load(run.path, kind="op").set_index(["name", "part"])
    with torch.no_grad():
        fc = model.block.fc(x)
        expected = {
            ("block.fc", "linear.0"): fc,
            ("block", "relu.0"): torch.relu(fc),
            ("block", "add.0"): torch.relu(fc) + x,
            ("", "max.0.0"): values,
            ("", "max.0.1"): indices,
        }
    for key, tensor in expected.items():
        row = df.loc[key]
        assert tensor.flatten().double().tolist() == row["values"].tolist(), key
        assert list(tensor.shape) == list(row["shape"]), key
    assert "int64" == df.loc[("", "max.0.1"), "dtype"]
    assert {"Linear", "Block", "Dropout", "Net"} == set(df.module_type)


def test_calls_and_steps_number_ops_like_activations(tmp_path):
    block = Block()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    with tracer.trace(block, opt, path=tmp_path / "t", capture_ops=True, every=2) as run:
        for _ in range(3):
            opt.zero_grad()
            (block(torch.ones(1, 3)).sum() + block(torch.ones(1, 3)).sum()).backward()  # two calls
            opt.step()
    got = [(s, n, c, p) for s, n, c, p in ops(run.path) if n == ""]
    assert [(s, "", c, p) for s in (0, 2) for c in (0, 1) for p in ("relu.0", "add.0")] == got


def _train(tmp_path, capture_ops):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=tmp_path / f"t{capture_ops}", capture_ops=capture_ops):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 3))[0].pow(2).mean().backward()
            opt.step()
    return model, torch.get_rng_state()


def test_capturing_ops_never_changes_training(tmp_path):
    plain, plain_rng = _train(tmp_path, False)
    traced, traced_rng = _train(tmp_path, True)
    assert torch.equal(plain_rng, traced_rng)  # dropout drew the same numbers
    for (name, a), (_, b) in zip(plain.state_dict().items(), traced.state_dict().items()):
        assert torch.equal(a, b), name
    assert [] == ops(tmp_path / "tFalse")
    assert len(ops(tmp_path / "tTrue")) == 3 * 9


def test_without_op_in_capture_the_mode_is_never_pushed(tmp_path):
    model = Block()
    with tracer.trace(model, path=tmp_path / "t", capture_ops=True, capture=["activation"]) as run:
        assert model.forward is not None
        seen = []
        model.register_forward_pre_hook(lambda m, a: seen.append(_stack_len()))
        model(torch.ones(1, 3))
    assert [0] == seen
    assert 0 == len(tracer.load(run.path, kind=["activation", "op"]).query("kind == 'op'"))


class Recording(TorchFunctionMode):
    """A user's own mode: the names of the functions it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


class WithInnerMode(Block):
    def forward(self, x):
        with self.mode:  # a mode the forward enters and leaves itself
            y = torch.relu(self.fc(x))
        return y.sigmoid()


@pytest.mark.parametrize("capture_ops", [False, True])
def test_users_modes_see_the_models_operations_and_nothing_of_tracer(tmp_path, capture_ops):
    model = WithInnerMode()
    x = torch.ones(2, 3)
    model.mode = Recording()
    with Recording() as outer:
        model(x)
    expected_outer, expected_inner = outer.seen, model.mode.seen
    model.mode = Recording()
    with tracer.trace(model, path=tmp_path / "t", capture_ops=capture_ops) as run:
        with Recording() as outer:
            model(x)
        assert 0 == _stack_len()
    assert expected_outer == outer.seen and expected_inner == model.mode.seen
    assert (["fc", "", ""] if capture_ops else []) == [n for _, n, _, _ in ops(run.path)]


class Boom(Block):
    def forward(self, x):
        torch.relu(x)
        raise KeyError("from forward")


def test_an_exception_in_forward_leaves_the_mode_and_propagates_unchanged(tmp_path):
    outer = nn.Sequential(nn.Linear(3, 3), Boom())
    with tracer.trace(outer, path=tmp_path / "t", capture_ops=True) as run:
        with pytest.raises(KeyError, match="from forward"):
            outer(torch.ones(1, 3))
        assert 0 == _stack_len()
        outer[0](torch.ones(1, 3))  # tracing goes on
    assert 0 == _stack_len()
    assert [(0, "0", 0, "linear.0"), (0, "1", 0, "relu.0"), (0, "0", 1, "linear.0")] == ops(run.path)


def test_a_block_ending_inside_a_forward_takes_the_mode_off_the_stack(tmp_path):
    model = Block()
    stop = model.register_forward_pre_hook(lambda m, a: run.__exit__(None, None, None))
    with tracer.trace(model, path=tmp_path / "t", capture_ops=True) as run:
        model(torch.ones(1, 3))
        assert 0 == _stack_len()
    stop.remove()
    model(torch.ones(1, 3))  # untraced now, and nothing left behind


def test_ops_of_an_excluded_module_are_not_taken_for_its_parents(tmp_path):
    model = Net().eval()
    with tracer.trace(model, path=tmp_path / "t", capture_ops=True, exclude="block*") as run:
        model(torch.ones(2, 3))
    assert ["drop", "", "", "head", "", ""] == [n for _, n, _, _ in ops(run.path)]


def _compiled(how):
    block = Block()
    if how == "model.compile":
        block.compile(backend="eager")
        return block
    return torch.compile(block, backend="eager")


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo's own
@pytest.mark.parametrize("how", ["torch.compile", "model.compile"])
def test_a_compiled_model_trains_and_says_capture_ops_is_off(tmp_path, how):
    torch.manual_seed(0)
    model = _compiled(how)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="capture_ops=True records nothing for a torch.compile'd model"):
        run = tracer.trace(model, opt, path=tmp_path / "t", capture_ops=True)
    with run:
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
    assert [] == ops(run.path)
    assert 1 == run.step
    assert not tracer.load(run.path, kind="activation").empty  # the rest is traced as without capture_ops


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo's own
def test_a_compiled_function_calling_the_model_is_traced_with_its_ops(tmp_path):
    model = Block()
    step = torch.compile(lambda x: model(x).sum(), backend="eager")
    expected = model(torch.ones(2, 3)).sum()
    with tracer.trace(model, path=tmp_path / "t", capture_ops=True) as run:
        got = [step(torch.ones(2, 3)) for _ in range(2)]
        assert 0 == _stack_len()
    assert [expected, expected] == got
    assert [(s, n, 0, p) for s in (0, 1) for n, p in (("fc", "linear.0"), ("", "relu.0"), ("", "add.0"))] == ops(
        run.path
    )
