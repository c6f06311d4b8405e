"""tracer.integrations.lightning: a real Trainer.fit on CPU, traced by TraceCallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tracer

L = pytest.importorskip("lightning.pytorch")
from tracer.integrations.lightning import TraceCallback  # noqa: E402

pytestmark = [
    # a tiny CPU fit: Lightning's advice on worker processes does not apply
    pytest.mark.filterwarnings("ignore:The '(train|val)_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval"),
    # lightning 2.6 on torch 2.13, nothing to do with tracing
    pytest.mark.filterwarnings("ignore:`isinstance.treespec, LeafSpec.` is deprecated:FutureWarning"),
]

CLIP = 0.05  # small enough that every step is clipped


@pytest.fixture(autouse=True)
def every_hook_is_removed_after_the_trainer():
    yield
    from tracer import _dispatch

    assert [] == _dispatch._active  # no recorder left listening to backward()


class Regressor(L.LightningModule):
    """An MLP on synthetic data; SGD with momentum and a learning-rate schedule."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TwoOptimizers(L.LightningModule):
    """Manual optimization: an encoder stepped by Adam, a head stepped by SGD, every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.encoder = nn.Linear(4, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        encoder_opt, head_opt = self.optimizers()
        for opt in (head_opt, encoder_opt):
            opt.zero_grad()
            self.manual_backward(nn.functional.mse_loss(self(x), y))
            self.clip_gradients(opt, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")
            opt.step()

    def validation_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        # the first optimizer advances tracer's step: it is stepped last in training_step
        return [
            torch.optim.Adam(self.encoder.parameters(), lr=0.01),
            torch.optim.SGD(self.head.parameters(), lr=0.1),
        ]


def loaders(n_train: int = 24, batch_size: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train, 4, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(n_train, 1, generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    val = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(8)), batch_size=batch_size)
    return train, val


def fit(module_cls, tmp_path, callbacks=(), **trainer_options):
    L.seed_everything(0, verbose=False)
    module = module_cls()
    train, val = loaders()
    options = dict(
        max_steps=3,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    options.update(trainer_options)
    trainer = L.Trainer(**options)
    trainer.fit(module, train, val)
    return trainer, module


ACCUMULATE = dict(accumulate_grad_batches=2, gradient_clip_val=CLIP, limit_val_batches=2, val_check_interval=4)


def forward_only(df):
    """Rows recorded with autograd off: the validation batches'."""
    return df.grad_enabled.fillna(True).eq(False)


def train_rows(df, kind):
    return df[(df.kind == kind) & ~forward_only(df)]


def reference_grads(steps: int = 3, accumulate: int = 2):
    """The gradients SGD consumed, by hand: same init and batches, accumulated, then clipped."""
    L.seed_everything(0, verbose=False)
    module = Regressor()
    opt, sched = (lambda c: (c["optimizer"], c["lr_scheduler"]["scheduler"]))(module.configure_optimizers())
    batches = iter(loaders()[0])
    consumed = []
    for _ in range(steps):
        for _ in range(accumulate):
            x, y = next(batches)
            (module.training_step((x, y), 0) / accumulate).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
        consumed.append({n: p.grad.clone() for n, p in module.named_parameters()})
        opt.step()
        sched.step()
        opt.zero_grad()
    return consumed


def test_steps_follow_optimizer_steps_with_accumulation_and_clipping(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace", max_values=None)
    trainer, _ = fit(Regressor, tmp_path, [callback], **ACCUMULATE)
    df = tracer.load(callback.path)

    assert 3 == trainer.global_step == callback.run.step
    loss = df[df.kind == "loss"]
    assert [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)] == list(zip(loss.step, loss.call))
    act = train_rows(df, "activation")
    act = act[act.name == "net.2"]
    assert [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)] == list(zip(act.step, act.call))
    grads = df[df.kind == "grad"]
    assert [0, 1, 2] == sorted(set(grads.step))
    for step, expected in enumerate(reference_grads()):
        at = grads[grads.step == step].set_index("name")
        total = torch.linalg.vector_norm(torch.tensor([at.loc[n, "norm"] for n in expected]))
        assert total == pytest.approx(CLIP, rel=1e-4)  # clipped by the trainer before the step
        for name, grad in expected.items():
            torch.testing.assert_close(torch.tensor(at.loc[name, "values"]).view_as(grad).float(), grad)


def test_report_verifies_every_update(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace", max_values=None)
    fit(Regressor, tmp_path, [callback], **ACCUMULATE)
    table = tracer.report(callback.path).to_frame()
    assert 3 * 4 == len(table)  # 3 steps x 4 parameters
    assert [True] * len(table) == table["matches"].tolist()
    lrs = sorted({(s, h["lr"]) for s, h in zip(table.step, table.hparams)})
    assert [(0, 0.1), (1, 0.05), (2, 0.025)] == lrs  # the schedule, per step


def test_training_is_bit_identical_with_and_without_the_callback(tmp_path):
    plain_trainer, plain = fit(Regressor, tmp_path / "plain", **ACCUMULATE)
    plain_rng = torch.get_rng_state()
    callback = TraceCallback(path=tmp_path / "trace")
    traced_trainer, traced = fit(Regressor, tmp_path / "traced", [callback], **ACCUMULATE)
    assert torch.equal(plain_rng, torch.get_rng_state())
    assert_same_state(plain.state_dict(), traced.state_dict())
    assert_same_state(plain_trainer.optimizers[0].state_dict(), traced_trainer.optimizers[0].state_dict())
    assert 3 == callback.run.step


def assert_same_state(expected, actual, where=""):
    """Nested dicts/lists of tensors and numbers: equal to the bit."""
    if isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_same_state(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same_state(e, a, f"{where}/{i}")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), where
    else:
        assert expected == actual, where


def test_validation_is_recorded_forward_only_or_skipped(tmp_path):
    recorded = TraceCallback(path=tmp_path / "record", max_values=0)
    fit(Regressor, tmp_path / "a", [recorded], **ACCUMULATE)
    skipped = TraceCallback(path=tmp_path / "skip", max_values=0, validation="skip")
    fit(Regressor, tmp_path / "b", [skipped], **ACCUMULATE)

    rec = tracer.load(recorded.path)
    val = rec[forward_only(rec)]
    assert {"input", "activation"} == set(val.kind)
    # validation after the 4th batch (= after step 1): two batches, calls 0 and 1 at step 2
    out = val[(val.kind == "activation") & (val.name == "net.2")]
    assert [(2, 0), (2, 1)] == list(zip(out.step, out.call))
    # and the training batches of step 2 still count their calls from 0
    assert [0, 1] == train_rows(rec, "activation").query("step == 2 and name == 'net.2'").call.tolist()

    skp = tracer.load(skipped.path)
    assert not forward_only(skp).any()
    columns = ["step", "kind", "name", "call", "part", "norm"]
    train = rec[~forward_only(rec)]
    assert train[columns].reset_index(drop=True).equals(skp[columns].reset_index(drop=True))


def test_bad_options_are_refused_when_the_callback_is_made(tmp_path):
    with pytest.raises(ValueError, match="validation must be one of"):
        TraceCallback(path=tmp_path / "t", validation="sometimes")
    with pytest.raises(ValueError, match="unknown capture kind"):
        TraceCallback(path=tmp_path / "t", capture=["gradz"])
    with pytest.raises(TypeError):
        TraceCallback(path=tmp_path / "t", maxvalues=3)


def test_several_optimizers_in_manual_optimization(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace", max_values=None)
    trainer, _ = fit(TwoOptimizers, tmp_path, [callback], max_steps=6)
    assert 3 == callback.run.step
    assert 6 == trainer.global_step  # Lightning counts every optimizer's steps in manual optimization
    table = tracer.report(callback.path).to_frame()
    assert {("Adam", "encoder.weight"), ("Adam", "encoder.bias"), ("SGD", "head.weight"), ("SGD", "head.bias")} == set(
        zip(table.optimizer, table.name)
    )
    assert [0, 1, 2] == sorted(set(table.step))
    assert [True] * 12 == table["matches"].tolist()
    grads = tracer.load(callback.path, kind="grad")
    for _, at in grads.groupby(["step", "optimizer"]):
        assert torch.linalg.vector_norm(torch.tensor(at["norm"].tolist())) <= CLIP * (1 + 1e-5)


class Exploding(Regressor):
    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_an_exception_ends_the_trace_and_propagates(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace")
    with pytest.raises(RuntimeError, match="boom"):
        fit(Exploding, tmp_path, [callback])
    assert 2 == callback.run.step
    assert {0, 1} == set(tracer.load(callback.path, kind="update").step)
    module = callback.run._model
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    callback.close()  # idempotent


def test_the_example_runs(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    file = Path(__file__).resolve().parents[1] / "examples" / "lightning_mnist_like.py"
    spec = importlib.util.spec_from_file_location("lightning_mnist_like", file)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(tmp_path / "trace", epochs=1)
    table = report.to_frame()
    assert len(table) and [True] * len(table) == table["matches"].tolist()
    assert "updates follow Adam's rule" in capsys.readouterr().out


class KeptStep(torch.optim.SGD):
    """A subclass that keeps SGD's step."""


class OwnStep(torch.optim.SGD):
    """A step of its own: what it does with the closure is unknown to tracer."""

    def step(self, closure=None):
        return super().step(closure)


def regressor_with(optimizer_cls):
    class WithOptimizer(Regressor):
        def configure_optimizers(self):
            return optimizer_cls(self.parameters(), lr=0.1)

    return WithOptimizer


def test_a_subclass_that_keeps_the_torch_step_is_traced_exactly(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace", max_values=None)
    fit(regressor_with(KeptStep), tmp_path, [callback], **ACCUMULATE)
    table = tracer.report(callback.path).to_frame()
    assert [True] * 12 == table["matches"].tolist()


def test_an_optimizer_with_its_own_step_has_its_gradients_read_after_the_step(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace")
    fit(regressor_with(OwnStep), tmp_path, [callback])
    df = tracer.load(callback.path, kind=["grad", "update"])
    per_step = df.groupby("step").kind.apply(set)
    assert per_step.map(lambda kinds: kinds == {"grad", "update"}).all()


class Logging(Regressor):
    """Logs its training loss every batch, a count per batch and epoch, and its validation loss."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        self.log("seen", float(batch_idx), on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)
        self.log("val_loss", loss)
        return loss


LOGGING = dict(max_steps=8, limit_val_batches=2, val_check_interval=3)


def test_logged_metrics_are_metric_rows_each_once_at_its_step(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace", max_values=None)
    fit(Logging, tmp_path, [callback], **LOGGING)
    df = tracer.load(callback.path)
    metric = df[df.kind == "metric"]
    train_loss = metric[metric.name == "train_loss"]
    loss = df[df.kind == "loss"]
    assert list(range(8)) == train_loss.step.tolist() == loss.step.tolist()
    assert [v[0] for v in loss["values"]] == [v[0] for v in train_loss["values"]]  # the batch's own loss
    # 6 batches an epoch: batch_idx 0..5, then 0..1
    assert [0, 1, 2, 3, 4, 5, 0, 1] == [v[0] for v in metric[metric.name == "seen_step"]["values"]]
    # the epoch means when each epoch ends (the second one cut short by max_steps); the first
    # after the validation that followed its last batch, so in the step of that validation
    seen_epoch = metric[metric.name == "seen_epoch"]
    assert [(6, 2.5), (7, 0.5)] == [(s, v[0]) for s, v in zip(seen_epoch.step, seen_epoch["values"])]
    # validation after steps 2 and 5: once each, in the step its forward rows are in
    val_loss = metric[metric.name == "val_loss"]
    assert [3, 6] == val_loss.step.tolist()
    val_rows = df[(df.kind == "activation") & (df.name == "net.2") & forward_only(df)]
    assert [3, 3, 6, 6] == val_rows.step.tolist()
    assert {"train_loss", "seen_step", "seen_epoch", "val_loss"} == set(metric.name)


def test_validation_skip_still_records_the_validation_metrics(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace", validation="skip", max_values=0)
    fit(Logging, tmp_path, [callback], **LOGGING)
    metric = tracer.load(callback.path, kind="metric")
    assert [3, 6] == metric[metric.name == "val_loss"].step.tolist()
    assert 8 == (metric.name == "train_loss").sum()
