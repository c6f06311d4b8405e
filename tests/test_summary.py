"""``tracer summary``: steps far apart, names that need escaping, complex values."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _reference import make_reference, train_reference
from test_cli import run_quietly

import tracer
from tracer._summary import format_summary, summarize


@pytest.fixture
def far_apart(tmp_path):
    """Two steps of the reference example, the second one renumbered to step 2**50."""
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=2)
    file = next(run.path.glob("*.parquet"))
    table = pq.read_table(file)
    table = table.set_column(0, "step", pc.if_else(pc.equal(table["step"], 1), 2**50, table["step"]))
    pq.write_table(table, file)
    return run.path


def test_steps_far_apart_are_summarised_without_listing_the_gap(far_apart):
    summary = summarize(far_apart)
    assert [0, 2**50] == summary["steps"]
    assert "steps      2 (0 to 1125899906842624, with gaps)" in format_summary(summary)


def test_diff_says_which_steps_a_trace_has_without_listing_the_gap(far_apart, tmp_path):
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "two") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=2)
    code, out, _ = run_quietly(["diff", str(far_apart), str(run.path)])
    assert 1 == code
    assert "is in b but not in a (a has no step 1; its steps are 0, 1125899906842624)" in out


def test_a_name_with_a_newline_stays_on_its_line(tmp_path):
    import torch
    from torch import nn

    name = "enc\nout"
    model = nn.ModuleDict({name: nn.Linear(2, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, opt, path=tmp_path / "t") as run:
        model[name](torch.ones(1, 2)).sum().backward()
        opt.step()
    text = format_summary(summarize(run.path))
    assert "enc\nout" not in text
    assert "  grad             enc\\nout.weight, enc\\nout.bias" in text
    assert 2 == sum(line.startswith("  enc\\nout.") for line in text.splitlines())  # the norms table
