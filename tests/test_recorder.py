"""The recorder on its own: hook events in, `Row`s out, into an in-memory sink (no disk)."""

from __future__ import annotations

from pathlib import Path

import torch
from _reference import make_reference, train_reference

from tracer._batch import Batch
from tracer._hooks import Recorder
from tracer._schema import Row
from tracer._selection import module_infos, param_infos
from tracer._tensors import finish


class ListSink:
    """A `tracer._schema.Sink` that keeps the rows."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.directory = Path("<memory>")
        self.max_queue_bytes = 1 << 20
        self.error: BaseException | None = None

    def put(self, row: Row) -> None:
        self.rows.append(row)

    def put_batch(self, batch: Batch) -> None:
        self.rows.extend(batch.expand())


def _record(model, optimizers, steps, **options):
    sink = ListSink()
    everything = lambda name: True  # noqa: E731
    recorder = Recorder(
        sink,
        kinds=options.get(
            "kinds", frozenset({"input", "activation", "activation_grad", "loss", "grad", "param", "update", "state"})
        ),
        max_values=None,
        every=1,
        params=param_infos(model, optimizers, everything),
        modules=module_infos(model, everything),
        optimizers=list(optimizers),
    )
    recorder.install()
    try:
        steps()
    finally:
        recorder.finish()
        recorder.uninstall()
    return sink.rows, recorder


def test_the_reference_step_as_rows():
    model, x, y, loss_fn, opt = make_reference()
    rows, recorder = _record(model, [opt], lambda: train_reference(model, x, y, loss_fn, opt))
    assert 1 == recorder.step
    kinds = [r.kind for r in rows]
    assert ["input", "activation", "loss", "activation_grad"] == kinds[:4]
    by = {(r.kind, r.name): r for r in rows}
    _, grad = finish(by[("grad", "weight")].captured)
    assert [-10.0, -20.0] == grad.tolist()
    _, update = finish(by[("update", "bias")].captured)
    assert abs(update[0] - 0.1) < 1e-15
    assert all(isinstance(r, Row) and r.step == 0 for r in rows)
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)  # training order


def test_nothing_is_recorded_after_uninstall():
    model, x, y, loss_fn, opt = make_reference()
    rows, _ = _record(model, [opt], lambda: None)
    assert [] == rows
    train_reference(model, x, y, loss_fn, opt)  # no recorder listens any more
    assert torch.equal(model.weight, torch.tensor([[1.1, 1.2]], dtype=torch.float64))
