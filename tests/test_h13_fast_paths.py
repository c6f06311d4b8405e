"""The bulk paths of a long trace's report give what the cell-by-cell paths give (issue 13's speed work).

Each test compares a bulk path with the plain per-item code it replaces, on inputs chosen to
hit its edge cases: −0, NaN and infinities formatted; HTML special characters, ✓/✗ and Cells
in a table; braces, newlines and notes in a text table; rows out of training order.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tracer
from tracer import _load, _render, _report_update
from tracer._escape import escape_text, html_plain_rows
from tracer._render import Cell, Table
from tracer._series import series
from tracer.rules._base import num

NUMBERS = [0.0, -0.0, 1.0, -1.5, 1e-12, -3.25e20, 123456789.0, math.nan, math.inf, -math.inf, 7, 2**60]


def train(path, steps=10, momentum=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    with tracer.trace(model, optimizer, path=path) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            model(torch.randn(5, 3, dtype=torch.float64)).pow(2).mean().backward()
            optimizer.step()
    return run


# --------------------------------------------------------------------------- numbers


def test_numbers_formatted_at_once_are_num_of_each():
    assert [num(v) for v in NUMBERS] == _report_update.nums(NUMBERS)
    assert [] == _report_update.nums([])


def test_a_step_table_says_what_each_update_is(tmp_path):
    checks = tracer.report(train(tmp_path / "t")).checks
    step0 = [c for c in checks if c.step == 0]
    step0[0].reason, step0[0].matches = "x" * 61, None
    step0[1].max_abs_error, step0[1].norms = None, {"grad": -0.0, "update": 2.0, "param": 0.0}
    tables = _report_update.step_tables({0: step0, 1: [c for c in checks if c.step == 1]})
    first, second = tables[0].rows[0], tables[0].rows[1]
    assert Cell("– rule", note="x" * 61) == first[1]
    assert (step0[1].name, "✓ rule", "–", "0", "2", "—") == second
    assert tables[1] == _report_update.step_table([c for c in checks if c.step == 1])
    c = [c for c in checks if c.step == 1][-1]
    expected = (c.name, "✓ rule", num(c.max_abs_error), num(c.norms["grad"]), num(c.norms["update"]))
    assert expected == tables[1].rows[-1][:5]


# --------------------------------------------------------------------------- HTML and text tables


def cell_by_cell(rows):
    return "".join("<tr>" + "".join(map(_render._html_cell, r)) + "</tr>" for r in rows)


@pytest.mark.parametrize(
    "rows",
    [
        (("fc.weight", "✓ rule", "1e−05"), ("fc.bias", "✗ replay", "0.5")),
        ((), ("a", "b")),
        (("a<b", "✓"),),
        (("x & y", "1"),),
        (('say "hi"', "it's"),),
        (("fc", Cell("✓ rule", note="a reason")),),
    ],
)
def test_html_rows_in_bulk_are_the_rows_cell_by_cell(rows):
    table = Table(("a", "b", "c"), rows)
    expected = (
        f"<table><thead><tr><th>a</th><th>b</th><th>c</th></tr></thead><tbody>{cell_by_cell(rows)}</tbody></table>"
    )
    assert expected == _render._html_table(table)


def test_only_plain_text_rows_take_the_bulk_path():
    assert html_plain_rows([("a", "b")]) == "<tr><td>a</td><td>b</td></tr>"
    assert html_plain_rows([("a", "<b>")]) is None
    assert html_plain_rows([("a", Cell("b"))]) is None
    assert html.escape("<b>") in _render._html_table(Table(("x", "y"), (("a", "<b>"),)))


def test_a_text_table_in_bulk_is_the_table_row_by_row():
    rows = (("{0}", "a\nb", Cell("x", note="why")), ("", "{:>9}", "✓ rule"), ("long name here", "1", "2"))
    table = Table(("name", "{}", "check"), rows)
    columns = [[escape_text(c if isinstance(c, str) else _render._cell_text(c)) for c in (h, *(r[i] for r in rows))]
               for i, h in enumerate(table.header)]  # fmt: skip
    widths = [max(map(len, c)) for c in columns]
    line = "  " + " | ".join(f"{{:<{w}}}" for w in widths)
    lines = [line.format(*r) for r in zip(*columns)]
    expected = [lines[0], "  " + "-+-".join("-" * w for w in widths), *lines[1:]]
    assert expected == _render._aligned(table)
    assert ["  ", "  ", "  "] == _render._aligned(Table((), ((), ())))[:1] + _render._aligned(Table((), ((), ())))[2:]
    assert 2 == len(_render._aligned(Table(("a",), ())))


# --------------------------------------------------------------------------- reading


def test_rows_put_in_training_order_in_arrow_are_those_pandas_orders(tmp_path):
    path = train(tmp_path / "t", steps=3).path
    table = tracer._reader.read_trace(path).table
    order = np.random.default_rng(0).permutation(table.num_rows)  # as files grouped by kind and name need
    expected = _load.to_frame(table).take(order).reset_index(drop=True)
    got = _load.to_frame(table, order)
    assert list(expected.columns) == list(got.columns)
    for column in expected.columns:
        if column == "values":
            for a, b in zip(expected[column], got[column]):
                assert (a is None and b is None) or np.array_equal(a, b)
        else:
            pd.testing.assert_series_equal(expected[column], got[column])


def test_each_check_holds_its_own_state_and_the_traced_values(tmp_path):
    run = train(tmp_path / "t", steps=12)
    checks = tracer.report(run).checks
    assert len({id(c.state) for c in checks}) == len(checks)
    assert all(c.state == {} for c in checks)
    updates = tracer.open(run.path).rows(kind="update", name="0.weight")
    first = next(c for c in checks if c.name == "0.weight" and c.step == 0)
    assert (4, 3) == first.update.shape and np.array_equal(updates["values"][0].reshape(4, 3), first.update)
    momentum = tracer.report(train(tmp_path / "m", steps=12, momentum=0.9)).checks
    later = [c for c in momentum if c.step > 0]
    assert all(set(c.state) == {"momentum_buffer"} for c in later)
    assert len({id(c.state) for c in later}) == len(later)


def test_the_lead_rank_of_a_one_rank_trace_is_all_its_rows(tmp_path):
    run = train(tmp_path / "t", steps=2)
    s = series(tracer.open(run.path))
    assert s.lead is s.stats
    frame = tracer.load(run.path)
    two = pd.concat([frame.assign(rank=1), frame]).reset_index(drop=True)
    s2 = series(tracer.open(two))
    assert {0} == set(s2.lead["rank"])
    assert len(frame) == len(s2.lead)
    assert s2.stats["step"].is_monotonic_increasing  # a DataFrame is sorted
