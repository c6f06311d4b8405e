"""tracer.plots: inline SVG for every kind of trace, small for long traces, escaped, optional,
read once from a Trace; the report section made of ``_render`` blocks."""

from __future__ import annotations

import re
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
import torch
from _reference import make_reference, train_reference
from torch import nn

import tracer
from tracer import _plots
from tracer._plots import html_section, section
from tracer._render import Figure, Para, Section
from tracer.plots import (
    PlotsUnavailableError,
    activation_plot,
    grad_norm_plot,
    histogram_plot,
    loss_plot,
    plots_available,
    update_ratio_plot,
)

pytest.importorskip("matplotlib", reason="the plots need matplotlib (the 'plots' extra)")

PLOTS = (loss_plot, grad_norm_plot, update_ratio_plot, activation_plot)


def svg_root(svg):
    assert svg.startswith("<svg") and "<?xml" not in svg and "<!DOCTYPE" not in svg
    root = ET.fromstring(svg)  # well-formed XML: every label escaped
    assert root.tag.endswith("svg")
    return root


def texts(svg):
    """Every piece of text drawn (svg.fonttype 'none': text stays text)."""
    return " ".join("".join(el.itertext()) for el in svg_root(svg).iter() if el.tag.endswith("text"))


def mlp(layers=2, width=8, dtype=torch.float64):
    torch.manual_seed(0)
    mods = [nn.Linear(4, width), nn.ReLU()]
    for _ in range(layers - 2):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(width, 1)).to(dtype)


def train(path, model, optimizer=None, steps=6, **options):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = x[:, :1] - x[:, 1:2]
    with tracer.trace(model, optimizer, path=path, **options) as run:
        for _ in range(steps):
            if optimizer is not None:
                optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if optimizer is not None:
                optimizer.step()
    return run


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=root / "reference") as ref:
        train_reference(model, x, y, loss_fn, optimizer)
    out = {"reference": ref.path}
    model = mlp()
    out["full"] = train(root / "full", model, torch.optim.SGD(model.parameters(), lr=0.05)).path
    model = mlp()
    out["stats-only"] = train(root / "stats", model, torch.optim.Adam(model.parameters(), lr=0.01), max_values=0).path
    out["no-optimizer"] = train(root / "forward", mlp(), None).path
    model = mlp()
    out["loss-only"] = train(root / "loss", model, torch.optim.SGD(model.parameters(), lr=0.05), capture={"loss"}).path
    model = mlp(layers=10)
    out["deep"] = train(root / "deep", model, torch.optim.SGD(model.parameters(), lr=0.05)).path
    return out


@pytest.mark.parametrize("kind", ["reference", "full", "stats-only", "deep"])
def test_every_plot_for_traces_with_an_optimizer(traces, kind):
    for plot in PLOTS:
        svg = plot(traces[kind])
        assert svg is not None, plot.__name__
        svg_root(svg)
    assert "Loss per step" in texts(loss_plot(traces[kind]))


def test_plots_of_a_trace_without_optimizer_or_with_only_the_loss(traces):
    # without an optimizer the gradients and (nil) updates are still recorded
    assert loss_plot(traces["no-optimizer"]) and activation_plot(traces["no-optimizer"])
    assert grad_norm_plot(traces["no-optimizer"])
    assert update_ratio_plot(traces["no-optimizer"])
    assert loss_plot(traces["loss-only"])
    assert [None, None, None] == [p(traces["loss-only"]) for p in PLOTS[1:]]
    section = html_section(traces["loss-only"])
    assert "Not plotted (not in this trace): gradients, updates, activations." in section


def test_lines_for_few_layers_and_a_heatmap_for_many(traces):
    few = grad_norm_plot(traces["full"])
    assert "<image" not in few and {"0", "2", "4"} <= set(texts(few).split())  # a legend entry per layer
    many = grad_norm_plot(traces["deep"])
    assert "<image" in many and "data:image/png;base64," in many  # one raster image, inline
    labels = set(texts(many).split())
    assert {str(i) for i in range(0, 19, 2)} <= labels  # every layer named on the axis
    assert "<image" in activation_plot(traces["deep"])  # 21 modules


def test_inputs_path_run_and_dataframe_give_the_same_svg(traces, tmp_path):
    path = traces["full"]
    df = tracer.load(path)
    assert loss_plot(path) == loss_plot(str(path)) == loss_plot(df)
    assert grad_norm_plot(path) == grad_norm_plot(df)


def test_histogram_of_stored_values_and_refusal_without_them(traces):
    svg = histogram_plot(traces["full"], kind="grad", name="0.weight", step=5)
    assert "Histogram of grad '0.weight' (step 5, call 0): 32 values" in texts(svg)
    with pytest.raises(ValueError, match="were not stored .*max_values"):
        histogram_plot(traces["stats-only"], kind="grad", name="0.weight", step=5)
    with pytest.raises(ValueError, match="holds no grad 'nope'"):
        histogram_plot(traces["full"], kind="grad", name="nope", step=0)


def test_nonfinite_loss_is_marked(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(4, 4, dtype=torch.float64)
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        for step in range(4):
            optimizer.zero_grad()
            target = torch.full((4, 1), float("nan") if step == 2 else 0.0, dtype=torch.float64)
            nn.functional.mse_loss(model(x), target).backward()
            optimizer.step()
    assert "non-finite from step 2" in texts(loss_plot(run))


def test_html_section_is_self_contained_with_unique_ids(traces):
    fragment = html_section(traces["full"])
    assert fragment.startswith('<details class="section tracer-plots" open>') and fragment.endswith("</details>")
    assert "<style" not in fragment  # the page's one stylesheet styles it
    assert 5 == fragment.count('<figure class="tracer-plot"')  # loss, grads, updates, activations, histogram
    ids = re.findall(r'\bid="([^"]+)"', fragment)
    assert len(ids) == len(set(ids))  # several SVGs on one page do not clash
    refs = re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', fragment)
    assert {a or b for a, b in refs} <= set(ids)  # every reference points inside its page
    assert "http://www.w3.org" in fragment  # namespaces only: nothing is fetched
    assert not re.search(r'(?:src|href)="(?!data:|#)', fragment)


def test_section_is_blocks_of_the_report_document_model(traces):
    plots = section(traces["full"])
    assert isinstance(plots, Section) and "Plots" == plots.title and "tracer-plots" == plots.cls
    figures = [b for b in plots.blocks if isinstance(b, Figure)]
    assert ["loss", "grad-norm", "update-ratio", "activations", "histogram"] == [f.key for f in figures]
    assert "Histogram of grad '0.weight' at step 5" == figures[-1].caption  # the largest gradient, last step
    assert all(f.svg.startswith("<svg") for f in figures)
    assert "" == tracer._render.to_text([plots]).replace("Plots\n-----\n", "")  # pictures are HTML only


def test_a_trace_is_read_once_for_every_plot(traces, tmp_path):
    import shutil

    copy = shutil.copytree(traces["full"], tmp_path / "copy")
    trace = tracer.open(copy)
    first = [plot(trace) for plot in PLOTS]
    trace.updates()  # what the report's checks read: the page's default histogram comes from it
    shutil.rmtree(copy)  # from here on, any read of the trace would fail
    assert first == [plot(trace) for plot in PLOTS]
    assert 5 == html_section(trace).count("<figure")
    with pytest.raises(tracer.TraceFormatError):
        histogram_plot(trace, kind="grad", name="0.weight", step=5)  # one tensor's values: read on demand


def test_loss_per_step_sums_the_micro_batches_as_summary_does(tmp_path):
    from tracer._plot_data import loss_table
    from tracer._summary import summarize

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        for _ in range(3):
            optimizer.zero_grad()
            for half in (x[:4], x[4:]):  # gradient accumulation: each loss is 1/2 of the batch's
                (model(half).pow(2).mean() / 2).backward()
            optimizer.step()
    table = loss_table(tracer.open(run.path))
    assert ["loss"] == list(table.columns) and [0, 1, 2] == list(table.index)
    expected = {row["step"]: row["loss"] for row in summarize(run.path)["loss"]}
    assert expected == pytest.approx(dict(zip(table.index, table["loss"])))
    loss = tracer.load(run.path, kind="loss")
    assert float(loss[loss.step == 0]["mean"].sum()) == pytest.approx(float(table.loc[0, "loss"]))


def test_hostile_names_are_escaped_and_shown_verbatim(tmp_path):
    names = ("<b>bold</b>", "$x_1$", "_hidden")
    model = nn.Sequential()
    model.add_module(names[0], nn.Linear(4, 4))
    model.add_module(names[1], nn.ReLU())
    model.add_module(names[2], nn.Linear(4, 1))
    run = train(tmp_path / "t", model.double(), torch.optim.SGD(model.parameters(), lr=0.05))
    grads = grad_norm_plot(run)
    assert "<b>" not in grads and "&lt;b&gt;bold&lt;/b&gt;" in grads
    shown = texts(grads) + texts(activation_plot(run))
    for name in names:
        assert name in shown, name  # not eaten by mathtext ($) or hidden from the legend (_)
    assert "<b>bold" not in html_section(run)


def test_long_traces_stay_small_and_fast():
    # 1,000 steps of a 10-layer model, in the schema of tracer.load (statistics only)
    steps, layers = 1000, 10
    rng = np.random.default_rng(0)
    rows = []
    for step in range(steps):
        rows.append((step, "loss", "loss", "", 1, 2.0 * np.exp(-step / 300) + rng.random() * 0.1))
        for i in range(layers):
            rows.append((step, "activation", f"layers.{i}", "Linear", 4096, rng.normal()))
            for p, n in (("weight", 4096), ("bias", 64)):
                for kind, scale in (("grad", 1e-2), ("param", 1.0), ("update", 1e-3)):
                    rows.append((step, kind, f"layers.{i}.{p}", "Linear", n, scale * (1 + rng.random())))
    df = pd.DataFrame(rows, columns=["step", "kind", "name", "module_type", "numel", "norm"])
    df["mean"], df["std"], df["seq"], df["rank"], df["call"], df["part"] = (
        df["norm"],
        df["norm"] / 2,
        range(len(df)),
        0,
        0,
        "",
    )
    df["dtype"], df["nonfinite"] = "float32", 0
    start = time.perf_counter()
    sizes = {plot.__name__: len(plot(df).encode()) for plot in PLOTS}
    fragment = html_section(df)
    elapsed = time.perf_counter() - start
    assert all(size < 300_000 for size in sizes.values()), sizes
    assert len(fragment.encode()) < 1_000_000
    assert elapsed < 20, elapsed  # generous: 2 shared cores; about 2 s on a laptop


def test_without_matplotlib_plots_say_how_to_get_them(traces, monkeypatch):
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not plots_available()
    with pytest.raises(PlotsUnavailableError, match=r"pip install 'torch-tracer\[plots\]'") as info:
        loss_plot(traces["full"])
    assert isinstance(info.value, tracer.TracerError) and isinstance(info.value, ImportError)
    fragment = html_section(traces["full"])
    assert "pip install &#x27;torch-tracer[plots]&#x27;" in fragment and "<svg" not in fragment
    assert [Para("The plots need matplotlib: pip install 'torch-tracer[plots]'", tone="warn")] == list(
        section(traces["full"]).blocks
    )
    assert tracer.plots.INSTALL_HINT == _plots.INSTALL_HINT == "pip install 'torch-tracer[plots]'"


def test_logged_metrics_get_a_panel_each(traces):
    from test_summary import with_metrics

    frame = with_metrics(tracer.load(traces["full"]), {s: {"accuracy": 0.5 + s / 20, "lr": 0.05} for s in range(6)})
    svg = _plots.metric_plot(frame)
    shown = {el.text for el in svg_root(svg).iter() if el.tag.endswith("text")}
    assert {"accuracy", "lr"} <= shown
    assert 2 == svg.count("<polyline")  # one line per name, each in its own panel
    assert _plots.metric_plot(traces["full"]) is None
    keys = [b.key for b in section(frame).blocks if isinstance(b, Figure)]
    assert ["loss", "grad-norm", "update-ratio", "activations", "metrics", "histogram"] == keys


def test_a_one_step_trace_draws_no_lines_over_steps(tmp_path):
    run = train(tmp_path / "t", mlp(), None, steps=1)
    blocks = section(run).blocks
    assert [Para("One step traced (step 0): nothing to plot over steps; its numbers are below.")] == [
        b for b in blocks if isinstance(b, Para)
    ]
    assert [] == [b for b in blocks if isinstance(b, Figure) and b.key != "histogram"]


def test_step_ticks_are_whole_numbers(tmp_path):
    for steps in (2, 3, 7):
        svg = loss_plot(train(tmp_path / f"t{steps}", mlp(), None, steps=steps))
        ticks = [
            el.text for el in svg_root(svg).iter() if el.tag.endswith("text") and el.get("text-anchor") == "middle"
        ]
        numbers = [t for t in ticks if t and t[0].isdigit()]
        assert numbers and all(t.isdigit() for t in numbers), numbers  # 0, 1, 2: never 0.5
        assert {str(s) for s in range(steps)} >= set(numbers)


def test_plots_of_a_long_trace_are_fast(tmp_path):
    # the drawing alone (the statistics already read): milliseconds, not seconds
    steps = 10_000
    frame = pd.DataFrame({"step": np.repeat(np.arange(steps), 3), "kind": ["loss", "grad", "param"] * steps})
    frame["name"] = np.where(frame["kind"] == "loss", "loss", "fc.weight")
    frame["norm"] = frame["mean"] = np.linspace(1, 2, len(frame))
    frame["std"], frame["numel"], frame["nonfinite"], frame["rank"], frame["call"], frame["part"] = 0.0, 4, 0, 0, 0, ""
    frame["seq"], frame["dtype"], frame["module_type"] = np.arange(len(frame)), "float32", "Linear"
    trace = tracer.open(frame)
    loss_plot(trace), grad_norm_plot(trace)  # the series are computed here
    start = time.perf_counter()
    svg = loss_plot(trace) + grad_norm_plot(trace)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed  # about 20 ms on a laptop; matplotlib took about 0.8 s
    assert svg.count("<polyline") == 2 and len(svg) < 60_000  # binned to MAX_POINTS points each
