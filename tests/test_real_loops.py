"""Loops people really run: DDP, AMP, closures, checkpointing, compile, GANs, threads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn
from torch.utils.checkpoint import checkpoint

import tracer

ROOT = Path(__file__).resolve().parents[1]


def kinds_at(df, step):
    return set(df[df.step == step].kind)


@pytest.mark.slow
def test_ddp_two_ranks_with_no_sync_accumulation(tmp_path):
    path = tmp_path / "ddp"
    subprocess.run([sys.executable, str(ROOT / "examples" / "ddp.py"), str(path)], check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    ranks = sorted({p.name.split("-")[1] for p in path.glob("part-*.parquet")})
    assert ["00000", "00001"] == ranks  # every rank writes its own files
    df = tracer.load(path)
    assert {0, 1} == set(df["rank"])
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} == set(df[df.kind == "grad"].name)
    grads = df[df.kind == "grad"].set_index(["step", "name", "rank"])["values"]
    for (step, name, rank), values in grads.items():
        if rank == 1:  # the all-reduced gradient: equal on both ranks
            assert values.tolist() == grads[(step, name, 0)].tolist()
    inputs = df[(df.kind == "input") & (df.name == "") & (df.step == 0) & (df.call == 0)]
    assert inputs.iloc[0]["values"].tolist() != inputs.iloc[1]["values"].tolist()
    assert [0, 1] == sorted(set(df[(df.kind == "loss") & (df.step == 0)].call))  # 2 micro-batches
    report = tracer.report(path).to_frame()
    assert report.matches.map(lambda m: m is True).all()


def test_amp_gradscaler_unscaled_grads_and_skipped_step(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for step in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
                loss = loss_fn(model(x), y)
            if step == 1:
                loss = loss * float("inf")  # inf gradients: the scaler skips this step
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        assert 3 == run.step  # a skipped step is still a step of the loop
    df = tracer.load(run.path)
    grad0 = df[(df.kind == "grad") & (df.name == "weight") & (df.step == 0)].iloc[0]
    assert [-10.0, -20.0] == grad0["values"].tolist()  # unscaled: what the optimizer used
    assert "skipped" in kinds_at(df, 1) and "update" not in kinds_at(df, 1)
    skipped = df[df.kind == "skipped"].iloc[0]
    assert ("SGD", 1) == (skipped["name"], skipped["step"])
    assert "update" in kinds_at(df, 2)
    assert "GradScaler skipped SGD.step() at this step" in str(tracer.report(run))
    from tracer._summary import format_summary, summarize

    assert "skipped    steps 1: the GradScaler skipped" in format_summary(summarize(run.path))
    assert torch.amp.GradScaler._maybe_opt_step.__name__ == "_maybe_opt_step"
    assert not hasattr(torch.amp.GradScaler._maybe_opt_step, "__wrapped__")  # patch removed


def test_autocast_records_the_dtypes_that_really_flowed(tmp_path):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(3, 4))
        out.float().sum().backward()
        opt.step()
    df = tracer.load(run.path)
    assert "bfloat16" == df[df.kind == "activation"].iloc[0]["dtype"]
    assert {"float32"} == set(df[df.kind == "grad"].dtype)
    assert tracer.report(run).to_frame().matches.map(lambda m: m is True).all()


def test_lbfgs_closure_passes_get_their_own_call(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        opt.step(closure)
        opt.step(closure)
    df = tracer.load(run.path)
    calls = df[(df.kind == "loss") & (df.step == 0)].call.tolist()
    assert len(calls) > 1 and list(range(len(calls))) == calls
    assert {0, 1} == set(df[df.kind == "update"].step)
    frame = tracer.report(run).to_frame()
    assert frame.matches.map(lambda m: m is not False).all()  # never wrongly "differs"


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_recompute_is_not_recorded_twice(tmp_path, reentrant):
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(3, 4), nn.Tanh())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(checkpoint(self.inner, x, use_reentrant=reentrant))

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model(torch.randn(2, 3, requires_grad=True)).sum().backward()
        opt.step()
    df = tracer.load(run.path)
    acts = df[df.kind == "activation"]
    assert [0] == sorted(set(acts[acts.name == "inner.0"].call))
    assert 1 == len(acts[acts.name == "inner.0"])
    assert {"inner.0.weight", "head.weight"} <= set(df[df.kind == "update"].name)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo's own
def test_a_model_compiled_inside_the_block_is_traced_as_eager(tmp_path):
    def run(compiled: bool, path):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        x = torch.randn(2, 3)
        with tracer.trace(model, opt, path=path):
            target = torch.compile(model, backend="aot_eager") if compiled else model
            for _ in range(2):
                opt.zero_grad()
                target(x).sum().backward()
                opt.step()
        cols = ["step", "kind", "name", "call", "part"]
        return tracer.load(path).sort_values(cols).reset_index(drop=True)

    eager, compiled = run(False, tmp_path / "e"), run(True, tmp_path / "c")
    cols = ["step", "kind", "name", "call", "part"]
    assert eager[cols].equals(compiled[cols])
    for a, b in zip(eager["values"], compiled["values"]):
        assert np.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # dynamo's own
@pytest.mark.parametrize("how", ["torch.compile", "model.compile"])
def test_compiled_model_values_equal_eager(tmp_path, how):
    def run(compiled: bool, path):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        target = model
        if compiled and how == "torch.compile":
            target = torch.compile(model, backend="aot_eager")
        elif compiled:
            model.compile(backend="aot_eager")
        x = torch.randn(2, 3)
        with tracer.trace(target, opt, path=path):
            for _ in range(2):
                opt.zero_grad()
                target(x).sum().backward()
                opt.step()
        return tracer.load(path)

    eager, compiled = run(False, tmp_path / "e"), run(True, tmp_path / "c")
    assert eager[["step", "kind", "name", "call", "part"]].equals(compiled[["step", "kind", "name", "call", "part"]])
    for a, b in zip(eager["values"], compiled["values"]):
        assert a.tolist() == pytest.approx(b.tolist(), rel=1e-6)


def test_gan_two_optimizers_frozen_and_set_to_none(tmp_path):
    torch.manual_seed(0)
    gen, disc = nn.Linear(2, 3), nn.Linear(3, 1)
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
    with tracer.trace(model, [opt_g, opt_d], path=tmp_path / "t") as run:
        for _ in range(2):
            fake = model["gen"](torch.randn(4, 2))
            opt_d.zero_grad(set_to_none=True)
            model["disc"](fake.detach()).mean().backward()
            opt_d.step()
            opt_g.zero_grad(set_to_none=True)
            model["disc"](fake).mean().neg().backward()
            opt_g.step()  # the first optimizer: advances the step
    df = tracer.load(run.path)
    assert 2 == run.step
    upd = df[df.kind == "update"]
    assert {"disc.weight": "SGD", "gen.weight": "Adam"} == dict(
        upd[upd.name.isin(["disc.weight", "gen.weight"])][["name", "optimizer"]].drop_duplicates().values
    )
    assert [0, 0, 1, 1] == sorted(df[df.kind == "loss"].step.tolist())
    assert tracer.report(run).to_frame().matches.map(lambda m: m is True).all()


def test_outputs_dict_dataclass_none_and_no_grad_eval(tmp_path):
    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        extra: int = 3

    class Multi(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, kind):
            y = self.lin(x)
            return {"dict": {"y": y}, "dc": Out(y), "none": None}[kind]

    model = Multi()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model(torch.ones(1, 2), "dict")["y"].sum().backward()
        opt.step()
        model(torch.ones(1, 2), "dc").logits.sum().backward()
        opt.step()
        assert model(torch.ones(1, 2), "none") is None
        with torch.no_grad():
            model(torch.ones(1, 2), "dict")  # evaluation inside the block
    df = tracer.load(run.path)
    root = df[(df.kind == "activation") & (df.name == "") & (df.step < 2)]
    assert ["y", "logits"] == root.part.tolist()
    # the evaluation forward: recorded, marked, and numbered apart from training calls
    ev = df[(df.step == 2) & (df.kind == "activation") & df.grad_enabled.eq(False).fillna(False)]
    assert [0, 0] == ev.call.tolist() and ["", "y"] == ev.part.tolist()  # lin, then the root's dict
    assert df[(df.step == 0) & (df.kind == "activation")].grad_enabled.all()
    assert df[(df.step == 2)].query("kind == 'activation_grad'").empty  # no backward expected


def test_threads_tracing_two_models_never_mix(tmp_path):
    errors = []

    def train(i: int) -> None:
        try:
            model, x, y, loss_fn, opt = make_reference()
            with tracer.trace(model, opt, path=tmp_path / f"t{i}") as run:
                for _ in range(20):
                    train_reference(model, x * (i + 1), y, loss_fn, opt)
            assert 20 == run.step
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        df = tracer.load(tmp_path / f"t{i}")
        assert 20 == len(df[df.kind == "loss"])  # only this thread's losses
        x0 = df[(df.kind == "input") & (df.step == 0)].iloc[0]["values"].tolist()
        assert [1.0 * (i + 1), 2.0 * (i + 1)] == x0


def test_fsdp_is_refused_with_a_clear_message(tmp_path):
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FSDP1's deprecation notice
            model = FullyShardedDataParallel(nn.Linear(2, 2), device_id=torch.device("cpu"))
        with pytest.raises(NotImplementedError, match=r"FullyShardedDataParallel \(FSDP1\).*Shard with FSDP2 instead"):
            tracer.trace(model, path=tmp_path / "t")
    finally:
        dist.destroy_process_group()
    assert not (tmp_path / "t").exists()


def test_on_error_warn_stops_tracing_and_training_goes_on(tmp_path):
    model, x, y, loss_fn, opt = make_reference()
    path = tmp_path / "t"
    with pytest.warns(RuntimeWarning, match="stopped tracing"):
        with tracer.trace(model, opt, path=path, on_error="warn") as run:
            train_reference(model, x, y, loss_fn, opt)
            run.flush()
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
            train_reference(model, x, y, loss_fn, opt)
            run.flush()
            train_reference(model, x, y, loss_fn, opt, steps=2)
    assert 4 == run.step
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'warn'"):
        tracer.trace(model, opt, path=tmp_path / "u", on_error="ignore")


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam])
def test_step_with_closure_records_the_closures_gradients(tmp_path, cls):
    def run(traced: bool):
        model, x, y, loss_fn, _ = make_reference()
        opt = cls(model.parameters(), lr=0.01)
        losses = []

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # inside the closure
            return loss

        def loop():
            for _ in range(3):
                losses.append(opt.step(closure).item())

        if traced:
            with tracer.trace(model, opt, path=tmp_path / "t") as r:
                loop()
            return model, losses, r
        loop()
        return model, losses, None

    plain, plain_losses, _ = run(False)
    traced, traced_losses, r = run(True)
    assert plain_losses == traced_losses  # step() still returns the closure's loss
    assert torch.equal(plain.weight, traced.weight) and torch.equal(plain.bias, traced.bias)
    df = tracer.load(r.path)
    assert [0, 1, 2] == sorted(set(df[df.kind == "update"].step))
    grad0 = df[(df.kind == "grad") & (df.step == 0)]
    norm = sum(v @ v for v in grad0["values"]) ** 0.5
    assert pytest.approx(5.0) == norm  # the clipped gradient of this step's closure
    assert tracer.report(r).to_frame().matches.map(lambda m: m is True).all()


def test_subclass_step_calling_super_is_one_step(tmp_path):
    class ClampedSGD(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):
            loss = super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    p.clamp_(-1.05, 1.05)
            return loss

    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # torch wraps SGD.step for its hooks
    model, x, y, loss_fn, _ = make_reference()
    opt = ClampedSGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, opt, steps=2)
    assert 2 == run.step
    df = tracer.load(run.path, kind="update", name="weight")
    assert [0, 1] == df.step.tolist()  # one row per step, not two
    assert [0.05, 0.05] == pytest.approx(df.iloc[0]["values"].tolist())  # the clamp included
