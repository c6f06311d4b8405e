"""tracer.export: TensorBoard and W&B round trips, read back with the dashboards' own readers."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import tracer
from tracer._summary import summarize
from tracer.integrations import MissingExtraError

STEPS = 4


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    """4 steps of 2 accumulated micro-batches; SGD with momentum and a schedule.

    ``max_values=16``: ``1.weight`` (20 elements) keeps statistics only.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    path = tmp_path_factory.mktemp("export") / "trace"
    with tracer.trace(model, opt, path=path, max_values=16):
        for _ in range(STEPS):
            opt.zero_grad()
            for _ in range(2):
                (model(torch.randn(2, 3)).pow(2).mean() / 2).backward()
            opt.step()
            sched.step()
    return path


def expected_scalars(path):
    """What the export must write, computed from the trace's own rows."""
    df = tracer.load(path)
    out: dict[str, dict[int, float]] = {}
    for (kind, name, step), norm in (
        df[df.kind.isin(["grad", "update", "param"])].set_index(["kind", "name", "step"])["norm"].items()
    ):
        out.setdefault(f"{kind}_norm/{name}", {})[step] = float(norm)
    for name in set(df[df.kind == "update"].name):
        out[f"update_ratio/{name}"] = {
            s: out[f"update_norm/{name}"][s] / out[f"param_norm/{name}"][s] for s in out[f"update_norm/{name}"]
        }
    for kind in ("grad", "update", "param"):
        rows = df[df.kind == kind]
        out[f"total/{kind}_norm"] = {int(s): math.sqrt(float((g["norm"] ** 2).sum())) for s, g in rows.groupby("step")}
    # the loss of a step is the sum of its micro-batch losses, as tracer summary prints it
    # (before issue 13 the export wrote their mean: half the loss the script logs, here)
    out["loss"] = {row["step"]: row["loss"] for row in summarize(path)["loss"]}
    loss = df[df.kind == "loss"]
    assert out["loss"] == {int(s): float(g["mean"].sum()) for s, g in loss.groupby("step")}
    updates = df[df.kind == "update"].drop_duplicates("step")
    out["lr/SGD/group0"] = {int(s): json.loads(h)["lr"] for s, h in zip(updates.step, updates.hparams)}
    return out


def expected_histograms(path):
    df = tracer.load(path, kind=["param", "grad", "update"])
    df = df[df["values"].notna()]
    return {(f"hist/{k}/{n}", int(s)): np.asarray(v) for k, n, s, v in zip(df.kind, df.name, df.step, df["values"])}


def test_the_expected_tags_cover_each_parameter(trace_path):
    scalars = expected_scalars(trace_path)
    names = {tag.split("/", 1)[1] for tag in scalars if tag.startswith("grad_norm/")}
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} == names
    assert [0.1, 0.05, 0.025, 0.0125] == [scalars["lr/SGD/group0"][s] for s in range(STEPS)]
    hists = {tag for tag, _ in expected_histograms(trace_path)}
    assert "hist/param/2.weight" not in hists  # 20 elements > max_values: no values, no histogram
    assert "hist/param/0.weight" in hists


def test_histograms_read_a_few_steps_at_a_time_are_the_same(trace_path, monkeypatch):
    from tracer import _export_series, export

    whole = export.series(trace_path, histograms=["param", "activation"])
    monkeypatch.setattr(_export_series, "CHUNK_STEPS", 1)
    one_by_one = export.series(trace_path, histograms=["param", "activation"])
    assert whole.scalars == one_by_one.scalars
    assert whole.histograms.keys() == one_by_one.histograms.keys()
    for step, hists in whole.histograms.items():
        assert hists.keys() == one_by_one.histograms[step].keys()
        for tag, values in hists.items():
            assert np.array_equal(values, one_by_one.histograms[step][tag]), (step, tag)
    assert list(range(STEPS)) == whole.steps


# --------------------------------------------------------------------------- TensorBoard


def read_tensorboard(logdir):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_tensorboard_round_trip(trace_path, tmp_path):
    pytest.importorskip("tensorboard")
    from tracer.export import to_tensorboard

    assert tmp_path / "tb" == to_tensorboard(trace_path, tmp_path / "tb")
    events = read_tensorboard(tmp_path / "tb")

    expected = expected_scalars(trace_path)
    assert sorted(expected) == sorted(events.Tags()["scalars"])
    for tag, per_step in expected.items():
        written = {e.step: e.value for e in events.Scalars(tag)}
        assert sorted(per_step) == sorted(written), tag
        for step, value in per_step.items():
            assert written[step] == pytest.approx(value, rel=1e-6), (tag, step)

    hists = expected_histograms(trace_path)
    assert sorted({tag for tag, _ in hists}) == sorted(events.Tags()["histograms"])
    for (tag, step), values in hists.items():
        [h] = [e.histogram_value for e in events.Histograms(tag) if e.step == step]
        assert (values.size, values.min(), values.max()) == (h.num, pytest.approx(h.min), pytest.approx(h.max))
        assert h.sum == pytest.approx(values.sum(), rel=1e-6, abs=1e-12)
        assert sum(h.bucket) == values.size


def test_tensorboard_histograms_can_be_chosen_or_left_out(trace_path, tmp_path):
    pytest.importorskip("tensorboard")
    from tracer.export import to_tensorboard

    to_tensorboard(trace_path, tmp_path / "none", histograms=False)
    assert [] == read_tensorboard(tmp_path / "none").Tags()["histograms"]
    to_tensorboard(trace_path, tmp_path / "act", histograms=["activation"])
    tags = read_tensorboard(tmp_path / "act").Tags()["histograms"]
    # each module's output (the root module is "(root)"), not the inputs
    assert {"hist/activation/(root)", "hist/activation/0", "hist/activation/1", "hist/activation/2"} == set(tags)
    with pytest.raises(ValueError, match="unknown histogram kind"):
        to_tensorboard(trace_path, tmp_path / "bad", histograms=["gradz"])


def test_export_refuses_what_is_not_a_trace(tmp_path):
    from tracer.export import to_tensorboard

    (tmp_path / "empty").mkdir()
    with pytest.raises(tracer.TraceFormatError):
        to_tensorboard(tmp_path / "empty", tmp_path / "tb")
    with pytest.raises(tracer.TraceFormatError):
        to_tensorboard(tmp_path / "missing", tmp_path / "tb")


# --------------------------------------------------------------------------- W&B


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """wandb with no network, no account and every file under tmp_path."""
    pytest.importorskip("wandb")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_ERROR_REPORTING": "false",  # no telemetry upload (wandb's OpenTelemetry/Sentry)
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def read_wandb_history(run_dir):
    """The run's history records, read by wandb's own reader of its offline log (wandb-core)."""
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 and "No such command" in done.stderr + done.stdout:
        pytest.skip("this wandb has no `wandb leet inspect` to read an offline run back")
    assert 0 == done.returncode, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_wandb_offline_round_trip(trace_path, wandb_offline):
    from tracer.export import to_wandb

    run_dir = to_wandb(trace_path, project="tracer-test", dir=wandb_offline / "out")
    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("*.wandb"))
    history = read_wandb_history(run_dir)

    assert list(range(STEPS)) == [h["_step"] for h in history]
    for tag, per_step in expected_scalars(trace_path).items():
        for step, value in per_step.items():
            assert value == history[step][tag], (tag, step)  # JSON keeps float64 exactly
    hists = expected_histograms(trace_path)
    logged = {k.rsplit(".", 1)[0] for h in history for k in h if k.startswith("hist/")}
    assert {tag for tag, _ in hists} == logged
    for (tag, step), values in hists.items():
        item = history[step]
        assert "histogram" == item[f"{tag}._type"]
        assert values.size == sum(item[f"{tag}.values"])
        bins = item[f"{tag}.bins"]
        assert (values.min(), values.max()) == (pytest.approx(bins[0]), pytest.approx(bins[-1]))


# --------------------------------------------------------------------------- command line


def parse(argv):
    from tracer.export import add_export_parser

    parser = argparse.ArgumentParser(prog="tracer")
    add_export_parser(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_cli_export_tensorboard(trace_path, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    args = parse(["export", "tensorboard", str(trace_path), str(tmp_path / "tb"), "--no-histograms"])
    assert 0 == args.func(args)
    assert "tensorboard --logdir" in capsys.readouterr().out
    assert [] == read_tensorboard(tmp_path / "tb").Tags()["histograms"]
    assert "loss" in read_tensorboard(tmp_path / "tb").Tags()["scalars"]


def test_cli_export_wandb(trace_path, wandb_offline, capsys):
    args = parse(["export", "wandb", str(trace_path), "--dir", str(wandb_offline / "cli"), "--histograms", "grad"])
    assert 0 == args.func(args)
    out = capsys.readouterr().out
    assert "wandb sync" in out
    [run_dir] = (wandb_offline / "cli" / "wandb").glob("offline-run-*")
    history = read_wandb_history(run_dir)
    assert {"hist/grad/0.weight", "hist/grad/0.bias", "hist/grad/2.bias"} <= {
        k.rsplit(".", 1)[0] for k in history[0] if k.startswith("hist/")
    }
    assert not any(k.startswith("hist/param/") for k in history[0])


def test_tracer_command_line_has_export_when_wired(trace_path, tmp_path):
    from tracer import _cli

    if "export" not in _cli._parser().format_help():
        pytest.skip("tracer._cli does not call tracer.export.add_export_parser yet")
    pytest.importorskip("tensorboard")
    assert 0 == _cli.main(["export", "tensorboard", str(trace_path), str(tmp_path / "tb")])
    assert 2 == _cli.main(["export", "tensorboard", str(tmp_path / "missing"), str(tmp_path / "tb2")])


# --------------------------------------------------------------------------- optional extras


MISSING = {
    "tracer.integrations.lightning": (["lightning", "lightning.pytorch", "pytorch_lightning"], "lightning"),
    "tracer.integrations.transformers": (["transformers"], "transformers"),
}


@pytest.mark.parametrize("module", sorted(MISSING))
def test_a_missing_framework_names_the_pip_install(module, monkeypatch):
    packages, extra = MISSING[module]
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError, match=rf"pip install 'torch-tracer\[{extra}\]'") as caught:
        importlib.import_module(module)
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, tracer.TracerError)


@pytest.mark.parametrize(("extra", "call"), [("tensorboard", "tb"), ("wandb", "wandb")])
def test_a_missing_dashboard_names_the_pip_install(extra, call, trace_path, tmp_path, monkeypatch):
    from tracer import export

    monkeypatch.setitem(sys.modules, extra, None)
    with pytest.raises(MissingExtraError, match=rf"pip install 'torch-tracer\[{extra}\]'"):
        if call == "tb":
            export.to_tensorboard(trace_path, tmp_path / "tb")
        else:
            export.to_wandb(trace_path, dir=tmp_path)


def test_importing_tracer_imports_no_framework_or_dashboard():
    code = (
        "import sys, tracer, tracer.integrations, tracer.export\n"
        "heavy = {'lightning', 'pytorch_lightning', 'transformers', 'accelerate', 'tensorboard', 'wandb'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert 0 == done.returncode, done.stderr
    assert "[]" == done.stdout.strip()


# --------------------------------------------------------------------------- one read, shared series


def test_a_trace_dataframe_and_path_export_the_same_and_a_trace_is_read_once(trace_path, tmp_path):
    import shutil

    from tracer import export

    from_path = export.series(trace_path, histograms=False)
    from_frame = export.series(tracer.load(trace_path), histograms=False)
    assert from_path.scalars == from_frame.scalars
    copy = shutil.copytree(trace_path, tmp_path / "copy")
    trace = tracer.open(copy)
    trace.stats  # noqa: B018 - read here, once
    shutil.rmtree(copy)  # any further read would fail
    assert from_path.scalars == export.series(trace, histograms=False).scalars
    assert "Sequential" == export.series(trace, histograms=False).meta.model


def test_each_network_of_a_gan_has_its_own_loss(tmp_path):
    from tracer import export

    torch.manual_seed(0)
    model = nn.ModuleDict({"G": nn.Linear(2, 2), "D": nn.Linear(2, 1)})
    opt_d = torch.optim.SGD(model["D"].parameters(), lr=0.1)
    opt_g = torch.optim.SGD(model["G"].parameters(), lr=0.1)
    with tracer.trace(model, [opt_d, opt_g], path=tmp_path / "gan"):
        for _ in range(3):
            opt_d.zero_grad()
            model["D"](model["G"](torch.randn(4, 2)).detach()).mean().backward()
            opt_d.step()
            opt_g.zero_grad()
            (-model["D"](model["G"](torch.randn(4, 2))).mean()).backward()
            opt_g.step()
    scalars = export.series(tmp_path / "gan", histograms=False).scalars
    assert {"loss/D", "loss/G"} <= set(scalars[0]) and "loss" not in scalars[0]
    loss = tracer.load(tmp_path / "gan", kind="loss")
    for step in range(3):  # the discriminator's loss is backpropagated first (call 0), the generator's next
        rows = loss[loss.step == step].set_index("call")["mean"]
        assert (float(rows[0]), float(rows[1])) == (scalars[step]["loss/D"], scalars[step]["loss/G"])


# --------------------------------------------------------------------------- logged metrics


def test_logged_metrics_are_exported_as_scalars(trace_path, tmp_path):
    from test_summary import with_metrics

    from tracer import export

    frame = with_metrics(tracer.load(trace_path), {0: {"accuracy": 0.5}, 2: {"accuracy": 0.75, "val/loss": 1.25}})
    scalars = export.series(frame, histograms=False).scalars
    assert (0.5, 0.75, 1.25) == (
        scalars[0]["metric/accuracy"],
        scalars[2]["metric/accuracy"],
        scalars[2]["metric/val/loss"],
    )
    assert not any(tag.startswith("metric/") for tag in scalars[1])
    assert not any(
        tag.startswith("metric/") for s in export.series(trace_path, histograms=False).scalars.values() for tag in s
    )
    pytest.importorskip("tensorboard")
    export.to_tensorboard(frame, tmp_path / "tb", histograms=False)
    events = read_tensorboard(tmp_path / "tb")
    assert [(0, 0.5), (2, 0.75)] == [(e.step, e.value) for e in events.Scalars("metric/accuracy")]
    assert [(2, 1.25)] == [(e.step, e.value) for e in events.Scalars("metric/val/loss")]
