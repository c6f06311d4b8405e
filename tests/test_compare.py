"""``tracer compare`` / ``tracer.compare``: runs side by side, their hyper-parameters, overlaid plots."""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

import tracer
from tracer._compare import compare
from tracer._compare_cli import add_compare_parser
from tracer._plot_draw import COLORS
from tracer._render import Figure, Section, Table

STEPS = 5


def train(path, lr, *, momentum=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with tracer.trace(model, opt, path=path) as run:
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), x[:, :1]).backward()
            opt.step()
    return run.path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return [train(root / "slow", 0.01), train(root / "fast", 0.1), train(root / "momentum", 0.01, momentum=0.9)]


def figures(page):
    return {b.key: b for s in page.blocks if isinstance(s, Section) for b in s.blocks if isinstance(b, Figure)}


def polylines_by_colour(svg):
    root = ET.fromstring(svg)
    out: dict[str, int] = {}
    for el in root.iter():
        if el.tag.endswith("polyline"):
            out[el.get("stroke")] = out.get(el.get("stroke"), 0) + 1
    return out


def test_every_run_is_overlaid_in_each_plot(runs):
    page = compare(*runs)
    assert ("slow", "fast", "momentum") == page.labels  # each directory's name
    shown = figures(page)
    assert ["loss", "grad-norm", "update-ratio"] == list(shown)  # no metrics logged: no metrics plot
    assert {COLORS[0]: 1, COLORS[1]: 1, COLORS[2]: 1} == polylines_by_colour(shown["loss"].svg)
    for key in ("grad-norm", "update-ratio"):  # a panel per layer (0 and 2), each run's line in each
        assert {COLORS[0]: 2, COLORS[1]: 2, COLORS[2]: 2} == polylines_by_colour(shown[key].svg), key
        texts = {el.text for el in ET.fromstring(shown[key].svg).iter() if el.tag.endswith("text")}
        assert {"0", "2", "slow", "fast", "momentum"} <= texts  # panel titles (layers) and the legend


def test_the_loss_plotted_is_the_loss_of_each_run(runs):
    page = compare(runs[0], runs[1], labels=["a", "b"])
    svg = figures(page)["loss"].svg
    losses = [tracer.load(p, kind="loss")["mean"].to_numpy() for p in runs[:2]]
    assert losses[0][0] == losses[1][0] and losses[0][-1] > losses[1][-1]  # same start, the faster one lower
    ys = {}
    for el in ET.fromstring(svg).iter():
        if el.tag.endswith("polyline"):
            points = [tuple(map(float, p.split(","))) for p in el.get("points").split()]
            ys[el.get("stroke")] = [y for _, y in points]
    assert STEPS == len(ys[COLORS[0]]) == len(ys[COLORS[1]])
    assert ys[COLORS[0]][0] == ys[COLORS[1]][0]  # same pixel at step 0
    assert ys[COLORS[0]][-1] < ys[COLORS[1]][-1]  # higher loss is higher on the page (smaller y)


def test_hyper_parameters_of_each_run_with_the_differences_marked(runs):
    page = compare(*runs, labels=["slow", "fast", "momentum"])
    [section] = [b for b in page.blocks if isinstance(b, Section) and b.title == "Hyper-parameters"]
    table = next(b for b in section.blocks if isinstance(b, Table))
    assert ("hyper-parameter", "slow", "fast", "momentum") == table.header
    rows = {r[0].text: r[1:] for r in table.rows}
    assert "SGD group 0: lr" == table.rows[0][0].text  # the learning rate first
    assert ["0.01", "0.1", "0.01"] == [c.text for c in rows["SGD group 0: lr"]]
    assert ["0", "0", "0.9"] == [c.text for c in rows["SGD group 0: momentum"]]
    assert {"warn"} == {c.tone for c in rows["SGD group 0: lr"] + rows["SGD group 0: momentum"]}
    assert {""} == {c.tone for c in rows["SGD group 0: weight_decay"]}
    assert "SGD group 0: foreach" not in rows  # implementation flags are not hyper-parameters
    html = page.to_html()
    assert "2 hyper-parameter(s) differ between the runs (marked)." in html
    assert '<td class="warn">0.1</td>' in html


def test_a_schedule_is_shown_as_it_went(tmp_path, runs):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with tracer.trace(model, opt, path=tmp_path / "scheduled") as run:
        for _ in range(5):  # lr 0.1, 0.1, 0.05, 0.05, 0.025
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
            schedule.step()
    table = next(b for b in compare(runs[0], run.path).blocks[2].blocks if isinstance(b, Table))
    lr = next(r for r in table.rows if r[0].text == "SGD group 0: lr")
    assert ["0.01", "0.1 → 0.025 (changes 2 times)"] == [c.text for c in lr[1:]]


def test_logged_metrics_are_overlaid(runs):
    from test_summary import with_metrics

    a = with_metrics(tracer.load(runs[0]), {0: {"accuracy": 0.5}, 4: {"accuracy": 0.75}})
    b = with_metrics(tracer.load(runs[1]), {0: {"accuracy": 0.5}, 4: {"accuracy": 0.875}})
    shown = figures(compare(a, b))
    assert "metrics" in shown
    assert {COLORS[0]: 1, COLORS[1]: 1} == polylines_by_colour(shown["metrics"].svg)
    assert "accuracy" in "".join(ET.fromstring(shown["metrics"].svg).itertext())


def test_the_page_is_self_contained_and_saved(runs, tmp_path):
    page = compare(*runs)
    out = page.save(tmp_path / "page.html")
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and 1 == html.count("<style")
    assert "<script" not in html and not re.search(r'(?:src|href)="(?!data:|#)', html)
    assert "3 runs compared" in html
    assert page._repr_html_().startswith('<div class="tracer">')


def test_bad_input(runs, tmp_path):
    with pytest.raises(ValueError, match=r"compare needs two traces or more \(got 1\)"):
        compare(runs[0])
    with pytest.raises(ValueError, match="labels must name each trace once: 2 traces, 1 labels"):
        compare(*runs[:2], labels=["only one"])
    with pytest.raises(tracer.TraceFormatError):
        compare(runs[0], tmp_path / "missing")


def test_same_directory_names_are_told_apart(tmp_path):
    a, b = train(tmp_path / "x" / "run", 0.01), train(tmp_path / "y" / "run", 0.1)
    assert ("run (1)", "run (2)") == compare(a, b).labels


def parse(argv):
    parser = argparse.ArgumentParser(prog="tracer")
    add_compare_parser(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_cli_compare_writes_the_page(runs, tmp_path, capsys):
    out = tmp_path / "ab.html"
    args = parse(["compare", str(runs[0]), str(runs[1]), "-o", str(out), "--label", "A", "--label", "B"])
    assert 0 == args.func(args)
    assert f"wrote the comparison of 2 runs to {out}" in capsys.readouterr().out
    assert "<th>A</th><th>B</th>" in out.read_text(encoding="utf-8")
    assert "compare.html" == parse(["compare", "a", "b"]).output


def test_tracer_command_line_has_compare_when_wired(runs, tmp_path):
    from tracer import _cli

    commands = next(a for a in _cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "compare" not in commands.choices:
        pytest.skip("tracer._cli does not call tracer._compare_cli.add_compare_parser yet")
    assert 0 == _cli.main(["compare", str(runs[0]), str(runs[1]), "-o", str(tmp_path / "p.html")])
    assert 2 == _cli.main(["compare", str(runs[0]), "-o", str(tmp_path / "q.html")])
    assert 2 == _cli.main(["compare", str(runs[0]), str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")])
