"""tracer.integrations.transformers: a real Trainer.train of a tiny random GPT-2 on CPU."""

from __future__ import annotations

import pytest
import torch

import tracer

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from tracer.integrations.transformers import TraceCallback  # noqa: E402

CLIP = 0.05  # max_grad_norm small enough that every step is clipped
N_PARAMS = 2 + 2 * 12 + 2  # wte, wpe; 12 per block; ln_f (lm_head is tied to wte)


@pytest.fixture(autouse=True)
def every_hook_is_removed_after_the_trainer():
    yield
    from tracer import _dispatch

    assert [] == _dispatch._active  # no recorder left listening to backward()


class Tokens(torch.utils.data.Dataset):
    """Synthetic token sequences (no download): the model learns to copy a shifted pattern."""

    def __init__(self, n: int, seq: int = 8, vocab: int = 32) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2():
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=8, n_layer=2, n_head=2, n_inner=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


class GradsAtStep(transformers.TrainerCallback):
    """The gradients in `on_pre_optimizer_step`: after clipping, what `optimizer.step()` consumes."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


def train(tmp_path, callbacks=(), **overrides):
    transformers.set_seed(0)
    model = tiny_gpt2()
    options = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
        max_grad_norm=CLIP,
        learning_rate=1e-2,
        warmup_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    options.update(overrides)
    args = transformers.TrainingArguments(**options)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(32),
        eval_dataset=Tokens(8) if options.get("eval_strategy", "no") != "no" else None,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer, model


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """One traced run, shared: (trainer, model, callback, the gradients seen before each step)."""
    tmp_path = tmp_path_factory.mktemp("hf")
    callback = TraceCallback(path=tmp_path / "trace", max_values=None)
    seen = GradsAtStep()
    trainer, model = train(tmp_path, [callback, seen])
    return trainer, model, callback, seen


def test_steps_follow_optimizer_steps_and_grads_are_the_clipped_ones(traced):
    trainer, _, callback, seen = traced
    df = tracer.load(callback.path)

    assert 3 == trainer.state.global_step == callback.run.step
    loss = df[df.kind == "loss"]
    assert [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)] == list(zip(loss.step, loss.call))
    head = df[(df.kind == "activation") & (df.name == "lm_head")]
    assert [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)] == list(zip(head.step, head.call))
    grads = df[df.kind == "grad"]
    assert 3 == len(seen.grads)
    for step, expected in enumerate(seen.grads):
        at = grads[grads.step == step].set_index("name")
        assert set(expected) == set(at.index)
        total = torch.linalg.vector_norm(torch.tensor(at["norm"].tolist()))
        assert total == pytest.approx(CLIP, rel=1e-4)
        for name, grad in expected.items():
            assert torch.equal(torch.tensor(at.loc[name, "values"], dtype=grad.dtype).view_as(grad), grad), name


def test_report_verifies_every_update(traced):
    callback = traced[2]
    table = tracer.report(callback.path).to_frame()
    assert 3 * N_PARAMS == len(table)
    assert {"AdamW"} == set(table.optimizer)
    bad = table[table["matches"] != True]  # noqa: E712 - None (unchecked) fails too
    assert bad.empty, bad[["step", "name", "matches", "max_abs_error", "reason"]].to_string()
    assert [0.0, 0.01, 0.005] == [h["lr"] for h in table.drop_duplicates("step").hparams]  # warmup, then decay


def test_training_is_bit_identical_with_and_without_the_callback(tmp_path, traced):
    plain_trainer, plain = train(tmp_path)
    traced_trainer, traced_model = traced[0], traced[1]
    expected, actual = plain.state_dict(), traced_model.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    expected, actual = plain_trainer.optimizer.state_dict(), traced_trainer.optimizer.state_dict()
    assert expected["state"].keys() == actual["state"].keys()
    for i, state in expected["state"].items():
        for key, value in state.items():
            assert torch.equal(value, actual["state"][i][key]), (i, key)


def test_evaluation_is_recorded_forward_only_or_skipped(tmp_path):
    evaluation = dict(eval_strategy="steps", eval_steps=2)
    recorded = TraceCallback(path=tmp_path / "record", max_values=0)
    train(tmp_path / "a", [recorded], **evaluation)
    skipped = TraceCallback(path=tmp_path / "skip", max_values=0, validation="skip")
    train(tmp_path / "b", [skipped], **evaluation)

    def forward_only(df):
        return df.grad_enabled.fillna(True).eq(False)

    rec = tracer.load(recorded.path)
    head = rec[(rec.kind == "activation") & (rec.name == "lm_head")]
    # evaluation after global_step 2 and at the end: two batches each, at steps 2 and 3, calls from 0
    assert [(2, 0), (2, 1), (3, 0), (3, 1)] == list(zip(head[forward_only(head)].step, head[forward_only(head)].call))
    assert [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)] == list(
        zip(head[~forward_only(head)].step, head[~forward_only(head)].call)
    )
    skp = tracer.load(skipped.path)
    assert not forward_only(skp).any()
    columns = ["step", "kind", "name", "call", "part", "norm"]
    train_rows = rec[~forward_only(rec) & (rec.kind != "metric")]
    assert train_rows[columns].reset_index(drop=True).equals(skp[skp.kind != "metric"][columns].reset_index(drop=True))
    # the evaluation's metrics are recorded either way (timings differ: compare names and steps)
    logged = [df[df.kind == "metric"][["step", "name", "call"]].reset_index(drop=True) for df in (rec, skp)]
    assert logged[0].equals(logged[1])
    assert [2, 3] == rec[rec.name == "eval_loss"].step.tolist()


def test_the_trainers_logs_are_metric_rows_at_the_step_they_follow(tmp_path):
    callback = TraceCallback(path=tmp_path / "trace", max_values=0, capture=["loss", "metric"])
    trainer, _ = train(tmp_path, [callback], logging_strategy="steps", logging_steps=1)
    df = tracer.load(callback.path, kind="metric")
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert [1, 2, 3] == [h["step"] for h in history]  # the Trainer counts completed steps from 1
    for name in ("loss", "learning_rate", "grad_norm"):
        rows = df[df.name == name]
        assert [0, 1, 2] == rows.step.tolist(), name  # the step each log follows
        assert [h[name] for h in history] == [v[0] for v in rows["values"]], name
    assert {"train_runtime", "train_loss", "epoch"} <= set(df.name)
    assert 2 == df[df.name == "train_loss"].step.item()  # the summary at the end: the last step


def test_a_failed_train_is_closed_by_the_context_manager(tmp_path):
    class Boom(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("boom")

    callback = TraceCallback(path=tmp_path / "trace")
    with pytest.raises(RuntimeError, match="boom"), callback:
        train(tmp_path, [callback, Boom()])
    assert 2 == callback.run.step
    assert {0, 1} == set(tracer.load(callback.path, kind="update").step)
    model = callback.run._model
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    callback.close()  # idempotent


def test_the_example_runs(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    file = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer_tiny.py"
    spec = importlib.util.spec_from_file_location("hf_trainer_tiny", file)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(tmp_path / "trace", steps=4)
    table = report.to_frame()
    assert len(table) and [True] * len(table) == table["matches"].tolist()
    assert "AdamW updates follow the rule" in capsys.readouterr().out
