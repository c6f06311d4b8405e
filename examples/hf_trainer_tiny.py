"""Trace a Hugging Face ``Trainer.train`` with one callback: a tiny GPT-2, built from a config.

A 2-layer GPT-2 with random weights (nothing is downloaded) learns synthetic token
sequences that repeat a short pattern. The Trainer's own AdamW, linear schedule with
warm-up, gradient accumulation (2 micro-batches) and ``max_grad_norm`` clipping all run
as usual; the callback traces them.

The trace's ``step`` is ``trainer.state.global_step``; the micro-batches of a step are
``call`` 0 and 1; the ``grad`` rows are the clipped gradients AdamW consumed. The report
checks every update; the trace then goes to TensorBoard when it is installed.

Run:  pip install 'torch-tracer[transformers]'      (and [tensorboard] for the export)
      python examples/hf_trainer_tiny.py [TRACE_DIR]   (default: traces/hf_trainer_tiny)
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
import transformers

import tracer
from tracer.integrations.transformers import TraceCallback


class Patterns(torch.utils.data.Dataset):
    """Sequences of 16 tokens that repeat a random 4-token pattern (vocabulary of 64)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, 4), generator=g).repeat(1, 4)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(path: Path, steps: int = 12) -> tracer.Report:
    transformers.set_seed(0)
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    output_dir = tempfile.TemporaryDirectory(prefix="hf_trainer_tiny-")  # nothing is saved there
    args = transformers.TrainingArguments(
        output_dir=output_dir.name,
        max_steps=steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=3e-3,
        warmup_steps=2,
        max_grad_norm=1.0,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    # every value of every 3rd step (a tiny model: ~30k numbers a step), so the report can check them
    trace = TraceCallback(path=path, overwrite=True, max_values=None, every=3)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Patterns(256), callbacks=[trace])
    with trace, output_dir:  # `with trace`: the trace is closed even if train() raises
        trainer.train()

    df = tracer.load(trace.path, columns=["step", "kind", "name", "call", "mean", "norm"])
    loss = df[df.kind == "loss"].groupby("step")["mean"].sum()  # the 2 micro-batch halves
    print(f"Trace written to {trace.path}: {len(df)} rows, {trainer.state.global_step} optimizer steps")
    print(f"\nTraced steps: {list(loss.index)}")
    print("Loss per traced step:", " ".join(f"{v:.3f}" for v in loss))
    grads = df[df.kind == "grad"].groupby("step")["norm"].apply(lambda n: float((n**2).sum() ** 0.5))
    print("Total gradient norm per traced step (clipped to 1.0):", " ".join(f"{v:.3f}" for v in grads))

    report = tracer.report(trace.path)
    table = report.to_frame()
    optimizers = "/".join(sorted(set(table.optimizer)))
    print(f"\nReport: {report.counts['matched']} of {len(table)} {optimizers} updates follow the rule")
    if importlib.util.find_spec("tensorboard") is not None:
        from tracer.export import to_tensorboard

        logdir = to_tensorboard(trace.path, path.parent / "tensorboard" / path.name)
        print(f"TensorBoard: tensorboard --logdir {logdir}")
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("traces") / "hf_trainer_tiny")
