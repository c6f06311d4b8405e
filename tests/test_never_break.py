"""Tracer never breaks training and never goes silent: the edges real loops reach.

Each test here failed before the change that made it pass (issue "Never break training").
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer
from tracer._reader import read_meta


def rows(df, kind, name=None):
    out = df[df.kind == kind]
    return out if name is None else out[out.name == name]


def _training(df):
    return df[df.grad_enabled.fillna(True).astype(bool)]


# --------------------------------------------------------------------------- A. never break


class PromptTuning(nn.Module):
    """A forward that returns one of its own parameters (a learned prompt) as it is."""

    def __init__(self):
        super().__init__()
        self.prompt = nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x):
        return self.prompt


def test_a_module_returning_its_own_parameter_gets_one_hook_and_rows_per_step(tmp_path):
    model = nn.Sequential(PromptTuning())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prompt = model[0].prompt
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(50):
            opt.zero_grad()
            model(torch.zeros(1)).sum().backward()
            opt.step()
            assert len(prompt._backward_hooks or {}) <= 1  # not one more at every call
    assert not prompt._backward_hooks  # removed on exit
    agrad = rows(tracer.load(run.path), "activation_grad", "0")
    assert list(range(50)) == agrad.step.tolist()  # every row carries its own step
    assert [[1.0, 1.0]] * 50 == [list(v) for v in agrad["values"]]


def test_a_capture_that_fails_skips_the_row_with_one_warning(tmp_path, monkeypatch):
    from tracer import _hooks
    from tracer._staging import Staging

    real = _hooks.capture

    def flaky(tensor, *args, **kwargs):
        if tensor.shape == (1, 1):
            raise RuntimeError("this tensor cannot be read")
        return real(tensor, *args, **kwargs)

    real_copy = Staging._copy

    def flaky_copy(self, tensor):  # the staged path of small tensors fails the same way
        if tensor.shape == (1, 1):
            raise RuntimeError("this tensor cannot be read")
        return real_copy(self, tensor)

    monkeypatch.setattr(_hooks, "capture", flaky)
    monkeypatch.setattr(Staging, "_copy", flaky_copy)
    model, x, y, loss_fn, opt = make_reference()
    ref_model, *_, ref_opt = make_reference()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with tracer.trace(model, opt, path=tmp_path / "t") as run:
            train_reference(model, x, y, loss_fn, opt, steps=3)
    train_reference(ref_model, x, y, loss_fn, ref_opt, steps=3)
    assert torch.equal(model.weight, ref_model.weight)  # training went on, unchanged
    messages = sorted(str(w.message) for w in seen)
    assert [  # once per (kind, name), not per step, each saying why
        "tracer skipped activation rows of '': this tensor cannot be read; training goes on",
        "tracer skipped activation_grad rows of '': this tensor cannot be read; training goes on",
    ] == messages
    df = tracer.load(run.path)
    assert rows(df, "activation", "").empty and 3 == len(rows(df, "grad", "weight"))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_transformer_taking_the_nested_tensor_fast_path_trains_on(tmp_path):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    model.eval()
    with torch.no_grad():
        expected = model(x, src_key_padding_mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer may warn that it skipped a nested tensor
        with tracer.trace(model, path=tmp_path / "t") as run, torch.no_grad():
            out = model(x, src_key_padding_mask=mask)
    assert torch.equal(expected, out)
    assert not rows(tracer.load(run.path), "input", "").empty


def test_deepcopy_inside_the_block_records_nothing_and_costs_nothing(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt)
        ema = copy.deepcopy(model)  # an EMA / best-model snapshot
        for _ in range(5):
            ema(x)
        pickle.dumps(model)  # saving and pickling work inside the block
        torch.save(model, io.BytesIO())
        assert not ema._forward_hooks and not ema._forward_pre_hooks
        count = len(run.load())
    assert count == len(tracer.load(run.path))  # the copy's forwards added no row
    assert not ema._forward_hooks and not ema._forward_pre_hooks
    ema(x)  # after the block: nothing queued anywhere
    assert not model._forward_pre_hooks_with_kwargs


def test_inference_mode_inside_the_block_is_recorded_like_no_grad(tmp_path):
    model, x, y, loss_fn, opt = make_reference()

    @torch.inference_mode()
    def evaluate():
        return model(x)

    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(2):
            train_reference(model, x, y, loss_fn, opt)
            evaluate()
            evaluate()  # the same tensors again: the capture cache must not read _version
    df = tracer.load(run.path)
    ev = df[(df.kind == "activation") & df.grad_enabled.eq(False).fillna(False)]
    assert [(1, 0), (1, 1), (2, 0), (2, 1)] == list(zip(ev.step, ev.call))


def test_a_step_that_raises_is_marked_and_tracing_goes_on(tmp_path):
    model, x, y, loss_fn, opt = make_reference()

    def closure_for(i):
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            if i == 2:
                raise FloatingPointError("loss is not finite")
            return loss

        return closure

    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for i in range(5):
            try:
                opt.step(closure_for(i))
            except FloatingPointError:
                pass
        assert 5 == run.step
    df = tracer.load(run.path)
    # the closure raised before step() changed anything: step 2 has its forward, loss and
    # backward rows, a `skipped` row, and no update
    assert [0, 1, 3, 4] == rows(df, "update", "weight").step.tolist()
    assert [0, 1, 3, 4] == rows(df, "grad", "weight").step.tolist()
    assert [0, 1, 2, 3, 4] == rows(df, "loss").step.tolist()  # the closure ran once per step
    skipped = rows(df, "skipped")
    assert [(2, "exception")] == list(zip(skipped.step, skipped.part))


def test_a_step_that_raises_after_updating_records_what_it_changed(tmp_path):
    class Fragile(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            raise RuntimeError("lost the connection to the parameter server")

    model, x, y, loss_fn, _ = make_reference()
    opt = Fragile(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="parameter server"):
                train_reference(model, x, y, loss_fn, opt)
        assert 2 == run.step
    df = tracer.load(run.path)
    assert pytest.approx([0.1, 0.2]) == list(rows(df, "update", "weight")["values"].iloc[0])
    assert [0, 1] == rows(df, "skipped").step.tolist()


def test_a_subclass_step_calling_super_is_still_one_step(tmp_path):
    class MySGD(torch.optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    model, x, y, loss_fn, _ = make_reference()
    opt = MySGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt, steps=3)
        assert 3 == run.step
    assert [0, 1, 2] == rows(tracer.load(run.path), "update", "weight").step.tolist()


def test_failed_enter_leaks_no_writer_thread(tmp_path, monkeypatch):
    from tracer import _hooks

    def broken(self):
        raise RuntimeError("cannot install")

    monkeypatch.setattr(_hooks.Recorder, "install", broken)
    model, *_ = make_reference()
    with pytest.raises(RuntimeError, match="cannot install"):
        with tracer.trace(model, path=tmp_path / "t"):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith("tracer-writer")]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_scripted_submodule_is_traced_around(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), torch.jit.script(nn.Linear(2, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    df = tracer.load(run.path)
    assert {"0.weight", "0.bias", "1.weight", "1.bias"} == set(rows(df, "grad").name)


def test_a_full_disk_at_enter_is_a_trace_write_error_or_a_warning(tmp_path, monkeypatch):
    from tracer import _session

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_session, "write_json_atomic", full)
    model, x, y, loss_fn, opt = make_reference()
    with pytest.raises(tracer.TraceWriteError, match="No space left"):
        with tracer.trace(model, opt, path=tmp_path / "a"):
            pass
    with pytest.warns(RuntimeWarning, match="training goes on untraced"):
        with tracer.trace(model, opt, path=tmp_path / "b", on_error="warn") as run:
            train_reference(model, x, y, loss_fn, opt)
    assert 0 == run.step and not _session._dispatch._active


def test_a_failed_final_flush_is_said(tmp_path, monkeypatch):
    model, x, y, loss_fn, opt = make_reference()
    with pytest.warns(RuntimeWarning, match="could not finish the trace"):
        with tracer.trace(model, opt, path=tmp_path / "t", on_error="warn", flush_seconds=60):
            train_reference(model, x, y, loss_fn, opt)
            (tmp_path / "t" / "_tracer.json").unlink()
            (tmp_path / "t").rmdir()  # the rows still in memory have nowhere to go
    with pytest.raises(tracer.TraceWriteError):
        with tracer.trace(model, opt, path=tmp_path / "u", flush_seconds=60):
            train_reference(model, x, y, loss_fn, opt)
            (tmp_path / "u" / "_tracer.json").unlink()
            (tmp_path / "u").rmdir()


# --------------------------------------------------------------------------- B. never silent


def test_a_trace_that_was_never_entered_says_so(tmp_path):
    model, *_ = make_reference()
    with pytest.warns(RuntimeWarning, match="never entered"):
        run = tracer.trace(model, path=tmp_path / "t")
        del run
        import gc

        gc.collect()


def test_an_optimizer_holding_none_of_the_models_parameters_is_said(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    other = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="no gradient rows.*holds none of the model's parameters"):
        with tracer.trace(model, other, path=tmp_path / "t"):
            loss_fn(model(x), y).backward()
            other.step()


def test_a_plain_loop_without_optimizer_gets_grad_param_and_update_rows(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    with tracer.trace(model, path=tmp_path / "t") as run:
        for _ in range(2):  # the tutorial's own update, by hand
            loss = loss_fn(model(x), y)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
            with torch.no_grad():
                model(x)  # an evaluation between steps does not start a step
    df = tracer.load(run.path)
    step0 = df[df.step == 0].set_index(["kind", "name"])["values"]
    assert [-10.0, -20.0] == step0[("grad", "weight")].tolist()
    assert [1.0, 1.0] == step0[("param", "weight")].tolist()
    assert pytest.approx([0.1, 0.2]) == step0[("update", "weight")].tolist()
    assert pytest.approx([0.1]) == step0[("update", "bias")].tolist()
    assert [0, 1] == rows(df, "update", "weight").step.tolist()
    assert [0, 1] == sorted(set(rows(df, "loss").step))


def test_long_evaluation_with_gradients_on_keeps_memory_bounded(tmp_path):
    from tracer import _hooks

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t", capture=["activation_grad"]) as run:
        recorder = run._recorder
        for _ in range(3000):  # an evaluation loop that forgot no_grad: no step for a long time
            model(torch.ones(2, 4))
            assert len(recorder.tensor_handles) <= 2 * _hooks._PRUNE_HANDLES
            assert len(recorder._captured) <= 8


# --------------------------------------------------------------------------- C. steps


def test_an_optimizer_made_inside_the_block_is_adopted(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    with tracer.trace(model, path=tmp_path / "t") as run:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)  # minGPT's Trainer.run() does this
        for _ in range(4):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                for _ in range(3):
                    model(x)  # generate(): evaluation forwards are not steps
        assert 4 == run.step
    df = tracer.load(run.path)
    assert [0, 1, 2, 3] == rows(df, "update", "weight").step.tolist()
    assert {"AdamW"} == set(rows(df, "state").optimizer)
    meta = read_meta(run.path)
    assert [True] == [o["adopted"] for o in meta["optimizers"]]
    assert [0] == [p["optimizer"] for p in meta["parameters"]][:1]


def test_run_watch_adds_an_optimizer_of_other_tensors(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    scale = torch.ones(1, dtype=torch.float64, requires_grad=True)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        extra = torch.optim.SGD([scale], lr=0.1)
        run.watch(extra)
        with pytest.raises(TypeError, match="torch.optim.Optimizer"):
            run.watch("sgd")
        for _ in range(2):
            opt.zero_grad()
            extra.zero_grad()
            loss_fn(model(x) * scale, y).backward()
            opt.step()
            extra.step()
        assert 2 == run.step
    grads = rows(tracer.load(run.path), "grad", "optimizer1.group0.param0")
    assert [0, 1] == grads.step.tolist()


def test_evaluation_between_steps_keeps_the_training_numbering(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for _ in range(3):
            with torch.no_grad():
                model(x)  # validation first (Lightning's sanity check, nanoGPT's eval)
            train_reference(model, x, y, loss_fn, opt)
    df = tracer.load(run.path)
    train = rows(_training(df), "activation", "")
    assert [(0, 0), (1, 0), (2, 0)] == list(zip(train.step, train.call))
    loss = rows(df, "loss")
    assert [(0, 0), (1, 0), (2, 0)] == list(zip(loss.step, loss.call))
    assert 3 == run.step


def _assert_each_step_holds_one_batch(df, before):
    """Step k's `param` rows of both networks are their values before their k-th update."""
    for net in ("gen", "disc"):
        params = rows(df, "param", f"{net}.weight")
        assert [0, 1, 2] == params.step.tolist()
        for step, value in zip(params.step, params["values"]):
            assert before[net][step].reshape(-1).tolist() == list(value)


@pytest.mark.parametrize("generator_first", [False, True])
def test_gan_steps_hold_both_networks_updates_of_one_batch(tmp_path, generator_first):
    torch.manual_seed(0)
    gen, disc = nn.Linear(2, 2).double(), nn.Linear(2, 1).double()
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
    before = {"gen": [], "disc": []}

    def train_d():
        opt_d.zero_grad()
        disc(gen(torch.randn(3, 2, dtype=torch.float64)).detach()).mean().backward()
        before["disc"].append(disc.weight.detach().clone())
        opt_d.step()

    def train_g():
        opt_g.zero_grad()
        (-disc(gen(torch.randn(3, 2, dtype=torch.float64))).mean()).backward()
        before["gen"].append(gen.weight.detach().clone())
        opt_g.step()

    with tracer.trace(model, [opt_d, opt_g], path=tmp_path / "t") as run:
        for _ in range(3):
            for train in (train_g, train_d) if generator_first else (train_d, train_g):
                train()
        assert 3 == run.step
    _assert_each_step_holds_one_batch(tracer.load(run.path), before)


# --------------------------------------------------------------------------- D19. hook order


@pytest.mark.parametrize("registered", ["before", "inside"])
def test_user_hooks_that_change_outputs_are_seen_the_same_whenever_registered(tmp_path, registered):
    model = nn.Sequential(nn.Linear(2, 2).double(), nn.Identity())

    def double_it(module, args, output):
        return output * 2

    handle = model[0].register_forward_hook(double_it) if registered == "before" else None
    x = torch.ones(1, 2, dtype=torch.float64)
    with tracer.trace(model, path=tmp_path / "t") as run:
        if handle is None:
            handle = model[0].register_forward_hook(double_it)
        out = model(x)
    handle.remove()
    df = tracer.load(run.path)
    own = rows(df, "activation", "0")["values"].iloc[0]
    seen_next = rows(df, "input", "1")["values"].iloc[0]
    # tracer's hooks run before the module's own: `activation` is what forward returned,
    # and the next module's `input` is what the user's hook made of it
    raw = model[0](x).detach()  # the user's hook is gone: forward's own output
    assert raw.reshape(-1).tolist() == pytest.approx(list(own))
    assert list(seen_next) == pytest.approx([2 * v for v in own])
    assert out.reshape(-1).tolist() == pytest.approx(list(seen_next))


# --------------------------------------------------------------------------- complex and odd tensors

_COMPLEX_OPTIMIZERS = [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (torch.optim.Adam, dict(lr=0.01)),
    (torch.optim.AdamW, dict(lr=0.01)),
    (torch.optim.RMSprop, dict(lr=0.01)),
    (torch.optim.Adagrad, dict(lr=0.1)),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls, kwargs", _COMPLEX_OPTIMIZERS, ids=[c.__name__ for c, _ in _COMPLEX_OPTIMIZERS])
def test_complex_parameters_train_unchanged_and_are_recorded_losslessly(tmp_path, cls, kwargs, foreach):
    def make():
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(3, dtype=torch.complex128))
        module = nn.Module()
        module.w = w
        return module, cls([w], foreach=foreach, **kwargs)

    def train(module, opt, befores):
        for i in range(3):
            opt.zero_grad()
            x = torch.tensor([1 + 2j, 3 - 1j, -2j], dtype=torch.complex128) * (i + 1)
            (module.w * x).abs().square().sum().backward()
            befores.append(module.w.detach().clone())
            opt.step()

    plain, plain_opt = make()
    train(plain, plain_opt, [])
    module, opt = make()
    befores: list = []
    with tracer.trace(module, opt, path=tmp_path / "t") as run:
        train(module, opt, befores)
    assert torch.equal(plain.w, module.w)  # training unchanged
    df = tracer.load(run.path)
    updates = rows(df, "update", "w")
    assert ["complex128"] * 3 == updates.dtype.tolist() and [[3]] * 3 == [list(s) for s in updates["shape"]]
    afters = befores[1:] + [module.w.detach()]
    for (_, row), before, after in zip(updates.iterrows(), befores, afters):
        assert torch.equal(torch.from_numpy(np.array(row["values"])), after - before)  # exact, complex
    params = rows(df, "param", "w")
    for (_, row), before in zip(params.iterrows(), befores):
        assert torch.equal(torch.from_numpy(np.array(row["values"])), before)


@pytest.mark.filterwarnings("ignore:.*quantiz")  # torch's own deprecation notes
def test_a_module_returning_a_quantized_tensor_is_recorded_dequantized(tmp_path):
    class Quantize(nn.Module):
        def forward(self, x):
            return torch.quantize_per_tensor(x, scale=0.5, zero_point=0, dtype=torch.qint8)

    model = nn.Sequential(nn.Identity(), Quantize())
    with tracer.trace(model, path=tmp_path / "t") as run:
        out = model(torch.tensor([1.0, 2.2]))
    assert torch.equal(out.dequantize(), torch.tensor([1.0, 2.0]))
    act = rows(tracer.load(run.path), "activation", "1").iloc[0]
    assert "qint8" == act["dtype"] and [1.0, 2.0] == list(act["values"])


def test_a_tied_parameter_is_listed_with_its_aliases_and_found_by_either_name(tmp_path):
    class Tiny(nn.Module):  # nanoGPT's weight tying: lm_head.weight = wte.weight
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(5, 3)
            self.lm_head = nn.Linear(3, 5, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx):
            return self.lm_head(self.wte(idx))

    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model(torch.tensor([1, 2])).sum().backward()
        opt.step()
    params = read_meta(run.path)["parameters"]
    assert [("wte.weight", ["lm_head.weight"])] == [(p["name"], p.get("aliases")) for p in params]
    assert tracer.open(run.path).meta.aliases == {"lm_head.weight": "wte.weight"}
    by_alias = tracer.load(run.path, kind="grad", name="lm_head.weight")
    assert ["wte.weight"] == by_alias.name.tolist()


# --------------------------------------------------------------------------- found in review


def test_step_closure_runs_after_the_optimizers_own_pre_hooks(tmp_path):
    def run(traced):
        torch.manual_seed(0)
        m = nn.Linear(3, 1).double()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)

        def project(optimizer, args, kwargs):  # keep the weights in a ball (SAM-like hooks too)
            with torch.no_grad():
                for p in m.parameters():
                    p.clamp_(-0.2, 0.2)

        opt.register_step_pre_hook(project)
        x = torch.randn(8, 3, dtype=torch.float64)

        def closure():
            opt.zero_grad()
            loss = m(x).pow(2).mean()
            loss.backward()
            return loss

        with tracer.trace(m, opt, path=tmp_path / "t") if traced else contextlib.nullcontext():
            for _ in range(3):
                opt.step(closure)
        return [p.detach().clone() for p in m.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))
    grads = rows(tracer.load(tmp_path / "t"), "grad", "weight")
    assert [0, 1, 2] == grads.step.tolist()


def test_reading_run_step_from_another_thread_marks_nothing(tmp_path):
    class SlowSGD(torch.optim.SGD):
        def step(self, closure=None):
            time.sleep(0.02)
            return super().step(closure)

    model, x, y, loss_fn, _ = make_reference()
    opt = SlowSGD(model.parameters(), lr=0.01)
    done = threading.Event()
    with tracer.trace(model, opt, path=tmp_path / "t") as run:

        def monitor():  # a progress bar reading run.step
            while not done.is_set():
                _ = run.step
                time.sleep(0.002)

        thread = threading.Thread(target=monitor)
        thread.start()
        train_reference(model, x, y, loss_fn, opt, steps=4)
        done.set()
        thread.join()
    df = tracer.load(run.path)
    assert rows(df, "skipped").empty
    assert (rows(df, "update")["norm"] > 0).all() and 4 == run.step


def test_checkpointing_without_an_optimizer_keeps_its_step(tmp_path):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with tracer.trace(model, path=tmp_path / "t") as run:
        for _ in range(3):
            x = torch.randn(2, 3, dtype=torch.float64)
            checkpoint(model, x, use_reentrant=False).sum().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
        assert 2 == run.step  # the recomputed forward in backward started no step
    df = tracer.load(run.path)
    assert [0, 1, 2] == sorted(set(rows(df, "grad").step))
    assert (rows(df, "update")["norm"] > 0).all()


def test_evaluation_before_training_with_a_late_optimizer_starts_no_step(tmp_path):
    model, x, y, loss_fn, _ = make_reference()
    with tracer.trace(model, path=tmp_path / "t") as run:
        with torch.no_grad():
            for _ in range(5):  # a sanity-check validation pass
                model(x)
        assert 0 == run.step
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        train_reference(model, x, y, loss_fn, opt, steps=3)
        assert 3 == run.step
    df = tracer.load(run.path)
    assert [0, 1, 2] == rows(df, "update", "weight").step.tolist()
    assert [0, 1, 2] == rows(df, "loss").step.tolist()


def test_two_traces_in_one_thread_each_see_their_own_backward(tmp_path):
    student, x, y, loss_fn, opt = make_reference()
    teacher, *_ = make_reference()
    with tracer.trace(student, opt, path=tmp_path / "s") as s, tracer.trace(teacher, path=tmp_path / "t") as t:
        for _ in range(3):
            with torch.no_grad():
                target = teacher(x)  # a frozen teacher, distillation
            opt.zero_grad()
            loss_fn(student(x), target + y).backward()
            opt.step()
    assert 3 == s.step
    teacher_rows = tracer.load(t.path)
    assert {"input", "activation"} == set(teacher_rows.kind)  # no loss, grad or update of the student's
    assert 3 == len(rows(tracer.load(s.path), "loss"))


def test_a_gradient_penalty_adds_no_activation_grad_rows(tmp_path):
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    opt = torch.optim.SGD(critic.parameters(), lr=0.1)
    with tracer.trace(critic, opt, path=tmp_path / "t") as run:
        for _ in range(2):  # WGAN-GP: torch.autograd.grad before loss.backward()
            real, fake = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
            opt.zero_grad()
            mixed = (0.5 * real + 0.5 * fake).requires_grad_(True)
            (g,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
            loss = critic(fake).mean() - critic(real).mean() + 10 * ((g.norm(dim=1) - 1) ** 2).mean()
            loss.backward()
            opt.step()
    agrad = rows(tracer.load(run.path), "activation_grad")
    assert 1 == agrad.groupby(["step", "name", "call", "part"]).size().max()


def test_gan_optimizers_made_inside_the_block_pair_their_updates_per_batch(tmp_path):
    torch.manual_seed(0)
    gen, disc = nn.Linear(2, 2).double(), nn.Linear(2, 1).double()
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    before = {"gen": [], "disc": []}
    with tracer.trace(model, path=tmp_path / "t") as run:
        opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)  # both adopted at their first step()
        opt_g = torch.optim.SGD(gen.parameters(), lr=0.1)
        for _ in range(3):
            opt_d.zero_grad()
            disc(gen(torch.randn(3, 2, dtype=torch.float64)).detach()).mean().backward()
            before["disc"].append(disc.weight.detach().clone())
            opt_d.step()
            opt_g.zero_grad()
            (-disc(gen(torch.randn(3, 2, dtype=torch.float64))).mean()).backward()
            before["gen"].append(gen.weight.detach().clone())
            opt_g.step()
        assert 3 == run.step
    _assert_each_step_holds_one_batch(tracer.load(run.path), before)
