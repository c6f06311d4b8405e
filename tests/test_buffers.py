"""Registered buffers (BatchNorm's running statistics) as `buffer` rows, after each step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tracer


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)
        self.norm = nn.BatchNorm1d(4, momentum=None)  # a cumulative average: another update rule
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.head(self.norm(self.fc(h)))


BUFFERS = [f"{m}.{b}" for m in ("bn", "norm") for b in ("running_mean", "running_var", "num_batches_tracked")]


def train(path, steps=3, **options):
    """``steps`` SGD steps traced into ``path``; the model's buffers after each step."""
    torch.manual_seed(0)
    model = BNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    after = []
    with tracer.trace(model, opt, path=path, **options) as run:
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(5, 2, 4, 4)).pow(2).mean().backward()
            opt.step()
            after.append({n: b.clone() for n, b in model.named_buffers()})
    return run, after


def test_buffers_are_recorded_exactly_as_each_step_leaves_them(tmp_path):
    run, after = train(tmp_path / "t")
    df = tracer.load(run.path, kind="buffer")
    assert [n for _ in after for n in BUFFERS] == df.name.tolist()
    for step, expected in enumerate(after):
        at = df[df.step == step].set_index("name")
        for name, buffer in expected.items():
            row = at.loc[name]
            assert str(buffer.dtype).removeprefix("torch.") == row["dtype"]
            assert list(buffer.shape) == list(row["shape"])
            assert buffer.flatten().double().tolist() == row["values"].tolist(), (step, name)
    assert {"BatchNorm2d", "BatchNorm1d"} == set(df.module_type)
    tracked = df[df.name == "bn.num_batches_tracked"]
    assert [[1.0], [2.0], [3.0]] == [v.tolist() for v in tracked["values"]]
    assert {"int64"} == set(tracked.dtype)


def test_include_exclude_and_capture_select_buffers(tmp_path):
    run, _ = train(tmp_path / "a", steps=1, exclude="*.num_batches_tracked")
    assert ["bn.running_mean", "bn.running_var", "norm.running_mean", "norm.running_var"] == tracer.load(
        run.path, kind="buffer"
    ).name.tolist()
    run, _ = train(tmp_path / "b", steps=1, include=["bn.*"])
    assert BUFFERS[:3] == tracer.load(run.path, kind="buffer").name.tolist()
    run, _ = train(tmp_path / "c", steps=1, capture=["grad"])
    assert 0 == len(tracer.load(run.path, kind=["buffer", "grad"]).query("kind == 'buffer'"))


def test_every_applies_to_buffers(tmp_path):
    run, after = train(tmp_path / "t", steps=5, every=2)
    df = tracer.load(run.path, kind="buffer")
    assert [0, 2, 4] == sorted(set(df.step))
    at = df[(df.step == 4) & (df.name == "bn.running_var")].iloc[0]
    assert after[4]["bn.running_var"].double().tolist() == at["values"].tolist()


def test_a_loop_without_optimizer_records_its_last_step_at_the_block_end(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    after = []
    with tracer.trace(model, path=tmp_path / "t") as run:
        for _ in range(2):
            model(torch.randn(4, 2)).sum().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
            after.append(model[1].running_mean.clone())
    df = tracer.load(run.path, kind="buffer")
    means = df[df.name == "1.running_mean"]
    assert [0, 1] == means.step.tolist()
    assert [a.double().tolist() for a in after] == [v.tolist() for v in means["values"]]


def test_a_replaced_buffer_is_read_anew_and_a_none_buffer_has_no_rows(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False))
    model.register_buffer("scale", torch.tensor([1.0, 2.0]))
    model.register_buffer("nothing", None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        for step in range(2):
            opt.zero_grad()
            model(torch.ones(4, 2)).sum().backward()
            opt.step()
            model.scale = torch.tensor([10.0 * (step + 1)])  # a new tensor, another shape
    df = tracer.load(run.path, kind="buffer")
    assert ["scale", "scale"] == df.name.tolist()  # BatchNorm without running stats has None buffers
    assert [[1.0, 2.0], [10.0]] == [v.tolist() for v in df["values"]]  # as each step() left it


def test_a_large_buffer_keeps_its_statistics(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2000), nn.BatchNorm1d(2000))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t", max_values=1024) as run:
        opt.zero_grad()
        model(torch.randn(3, 2)).sum().backward()
        opt.step()
    row = tracer.load(run.path, kind="buffer", name="1.running_var").iloc[0]
    assert row["values"] is None
    assert float(model[1].running_var.double().mean()) == pytest.approx(row["mean"], rel=1e-6)
