"""run.log: user scalars as `metric` rows at the step they belong to; bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _reference import make_reference
from torch import nn

import tracer
from tracer import _metrics


def metrics(path):
    df = tracer.load(path, kind="metric")
    return [(int(s), n, int(c), float(v[0])) for s, n, c, v in zip(df.step, df.name, df.call, df["values"])]


def _step(model, x, y, loss_fn, opt):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss


def test_a_metric_logged_after_the_update_belongs_to_the_step_it_ended(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        run.log(lr=0.01)  # before anything ran: step 0
        for i in range(3):
            loss = _step(model, x, y, loss_fn, opt)
            run.log({"loss": loss.item()}, batch=i)
        assert 3 == run.step
    assert [(0, "lr", 0, 0.01)] + [
        (i, name, 0, value) for i, row in enumerate(tracer.load(run.path, kind="loss")["values"])
        for name, value in (("loss", row[0]), ("batch", float(i)))
    ] == metrics(run.path)  # fmt: skip


def test_a_metric_logged_inside_a_step_belongs_to_that_step_and_counts_calls(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        _step(model, x, y, loss_fn, opt)
        model(x)  # the next step's work has begun (an evaluation forward)
        run.log(acc=0.5)
        run.log(acc=0.75)
        _step(model, x, y, loss_fn, opt)
    assert [(1, "acc", 0, 0.5), (1, "acc", 1, 0.75)] == metrics(run.path)


def test_a_loop_without_optimizer_logs_into_the_open_step(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    with tracer.trace(model, path=tmp_path / "t") as run:
        for i in range(2):
            loss = loss_fn(model(x), y)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
            run.log(i=i)
    assert [(0, "i", 0, 0.0), (1, "i", 0, 1.0)] == metrics(run.path)
    assert {0, 1} == set(tracer.load(run.path, kind="update").step)


def test_values_are_float64_scalars_read_exactly(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    half = torch.tensor(0.1, dtype=torch.float32)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        run.log(f32=half, one=torch.tensor([3]), flag=True, np64=np.float64(2.5), np_int=np.int32(7), big=2**40)
    df = tracer.load(run.path, kind="metric").set_index("name")
    assert {"float64"} == set(df.dtype)
    assert all(list(shape) == [] for shape in df["shape"])
    values = {name: v.tolist() for name, v in df["values"].items()}
    expected = {"f32": [float(half)], "one": [3.0], "flag": [1.0], "np64": [2.5], "np_int": [7.0], "big": [2.0**40]}
    assert expected == values
    assert 0.1 != float(half)  # the float32 value, not the decimal it was written as


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((), {"name": "resnet"}, TypeError, "'name' is str"),
        ((), {"v": [1.0]}, TypeError, "'v' is list"),
        ((), {"v": None}, TypeError, "pass an int, a float or a one-element tensor"),
        ((), {"v": 1 + 2j}, TypeError, "'v' is complex"),
        ((), {"v": torch.ones(3)}, ValueError, r"'v' is a tensor of shape \[3\]"),
        ((), {"v": torch.tensor(1j)}, TypeError, "'v' is a complex tensor"),
        (({1: 0.5},), {}, TypeError, "metric names must be strings"),
        (({"": 0.5},), {}, ValueError, "must not be empty"),
        (([("a", 1.0)],), {}, TypeError, "takes a dict of name -> number"),
        (({"a": 1.0},), {"a": 2.0}, ValueError, "both in the dict and as keywords"),
        ((), {}, ValueError, "needs at least one metric"),
    ],
)
def test_bad_metrics_are_refused_with_what_is_accepted(tmp_path, args, kwargs, error, message):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        with pytest.raises(error, match=message):
            run.log(*args, **kwargs)
        run.log(ok=1.0)  # the block goes on
    assert [(0, "ok", 0, 1.0)] == metrics(run.path)


def test_log_outside_the_block_is_an_error(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    run = tracer.trace(model, opt, path=tmp_path / "t")
    with pytest.raises(RuntimeError, match=r"run.log\(\) works inside the `with tracer.trace"):
        run.log(a=1.0)
    with run:
        run.log(a=1.0)
    with pytest.raises(RuntimeError, match="works inside"):
        run.log(a=2.0)
    assert [(0, "a", 0, 1.0)] == metrics(run.path)


def test_pause_drops_metrics_and_every_does_not(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t", every=3) as run:
        for i in range(4):
            _step(model, x, y, loss_fn, opt)
            if i == 1:
                with run.paused():
                    run.log(i=i)
            else:
                run.log(i=i)
    assert [(0, "i", 0, 0.0), (2, "i", 0, 2.0), (3, "i", 0, 3.0)] == metrics(run.path)
    assert {0, 3} == set(tracer.load(run.path, kind="grad").step)  # every=3 thins the rest


def test_without_metric_in_capture_nothing_is_recorded_and_that_is_said_once(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t", capture=["grad"]) as run:
        with pytest.warns(RuntimeWarning, match="capture=\\['grad'\\] has no 'metric'"):
            run.log(a=1.0)
        run.log(a=2.0)  # said once: no second warning (warnings are errors here)
    assert [] == metrics(run.path)


def test_a_trace_that_could_not_start_ignores_log(tmp_path, monkeypatch):
    from tracer import _session

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_session, "write_json_atomic", full)
    model, x, y, loss_fn, opt = make_reference()
    with pytest.warns(RuntimeWarning, match="training goes on untraced"):
        with tracer.trace(model, opt, path=tmp_path / "t", on_error="warn") as run:
            run.log(a=1.0)  # neither raises nor records
    with pytest.raises(ValueError, match="needs at least one metric"):
        run.log()  # bad input is still said


class _Event:
    """A CUDA event stand-in: done when told, records whether someone waited for it."""

    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = True


def test_a_device_value_is_written_once_its_copy_is_done(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    late, never = _Event(), _Event()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        recorder = run._recorder
        for name, event in (("late", late), ("never", never)):
            host = torch.tensor([float(len(name))], dtype=torch.float64)
            recorder._pending_metrics.append(_metrics._Pending(0, name, 0, host, event))
        run.log(a=1.0)
        _step(model, x, y, loss_fn, opt)  # the step ends: nothing is done yet
        assert 2 == len(recorder._pending_metrics)
        late.done = True
        run.log(b=2.0)
        assert [never] == [p.event for p in recorder._pending_metrics]
    assert never.waited and not late.waited  # the block's end waits for what is left
    assert [(0, "a", 0, 1.0), (0, "b", 0, 2.0), (0, "late", 0, 4.0), (0, "never", 0, 5.0)] == sorted(metrics(run.path))


def test_metrics_never_lie_beyond_the_last_step(tmp_path):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(5):
            opt.zero_grad()
            loss = model(torch.ones(1, 2)).sum()
            loss.backward()
            opt.step()
            run.log(loss=loss.detach())
    assert [0, 1, 2, 3, 4] == [s for s, *_ in metrics(run.path)]
    assert 5 == run.step
