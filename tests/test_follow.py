"""``export --follow``: a trace exported while a real training run writes it, each step once,
read back with TensorBoard's own event reader; the end of a complete trace; Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import tracer
from tracer import _follow, export

STEPS = 4

WRITER = textwrap.dedent(
    """
    import sys, time, json
    import torch
    from torch import nn
    import tracer

    path, steps, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with tracer.trace(model, opt, path=path) as run:
        for step in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            run.flush()          # a finished data file per step: what a long run's flushes do
            time.sleep(0.3)
        ended = time.time()
    with open(done, "w") as f:
        json.dump({"block_ended": ended}, f)
    """
)


def raw_events(logdir: Path) -> list:
    """Every scalar event of every event file, as written: duplicates would show."""
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    out = []
    for file in sorted(logdir.glob("events.out.tfevents.*")):
        for event in loader.EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars" or value.HasField("simple_value"):
                    number = value.simple_value if value.HasField("simple_value") else _tensor_float(value.tensor)
                    out.append((value.tag, event.step, number, event.wall_time))
    return out


def _tensor_float(tensor) -> float:
    from tensorboard.util import tensor_util

    return float(tensor_util.make_ndarray(tensor))


def test_following_a_real_training_run_exports_each_step_once_while_it_runs(tmp_path):
    pytest.importorskip("tensorboard")
    trace, done = tmp_path / "trace", tmp_path / "done.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(trace), str(STEPS), str(done)])
    try:
        started = time.time()
        out = export.to_tensorboard(trace, tmp_path / "tb", histograms=False, follow=True, poll=0.05)
        returned = time.time()
    finally:
        assert 0 == writer.wait(timeout=120)
    assert tmp_path / "tb" == out
    block_ended = json.loads(done.read_text())["block_ended"]
    assert returned >= block_ended  # it stopped when the trace was complete, not before

    events = raw_events(tmp_path / "tb")
    expected = export.series(trace, histograms=False).scalars  # the finished trace, exported at once
    written = {}
    for tag, step, value, _ in events:
        assert (tag, step) not in written, f"{tag} at step {step} exported twice"
        written[(tag, step)] = value
    wanted = {(tag, step): value for step, scalars in expected.items() for tag, value in scalars.items()}
    assert sorted(wanted) == sorted(written)
    for key, value in wanted.items():
        assert written[key] == pytest.approx(value, rel=1e-6), key
    assert list(range(STEPS)) == sorted(step for tag, step in written if tag == "loss")
    # live: the first steps reached TensorBoard while training was still running
    first = min(wall for tag, step, _, wall in events if tag == "loss" and step == 0)
    assert started <= first < block_ended - 0.3


@contextlib.contextmanager
def stepping_run(path: Path, steps: int):
    """A trace being written one step per look: ``sleep`` trains a step and flushes, and ends
    the ``tracer.trace`` block after ``steps`` (the trace is then complete)."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    stack = contextlib.ExitStack()
    run = stack.enter_context(tracer.trace(model, opt, path=path))
    done = {"steps": 0, "looks": 0}

    def sleep(seconds: float) -> None:
        done["looks"] += 1
        if done["steps"] < steps:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            run.flush()
            done["steps"] += 1
        if done["steps"] == steps:
            stack.close()

    with stack:
        yield sleep, done


def test_follow_yields_each_finished_step_once_in_order_and_ends_when_complete(tmp_path):
    with stepping_run(tmp_path / "t", steps=5) as (sleep, done):
        batches = list(_follow.follow(tmp_path / "t", histograms=["grad"], poll=0.01, sleep=sleep))
    steps = [record[0] for batch in batches for record in batch]
    assert [0, 1, 2, 3, 4] == steps  # each step once, in order
    assert len(batches) >= 4  # as they finished, not all at the end
    whole = export.series(tmp_path / "t", histograms=["grad"])
    for step, scalars, hists in (record for batch in batches for record in batch):
        assert whole.scalars[step] == scalars
        assert whole.histograms[step].keys() == hists.keys()


def test_follow_waits_for_the_directory_to_appear(tmp_path):
    path = tmp_path / "later"
    looks = []

    def sleep(seconds):
        looks.append(seconds)
        if len(looks) == 3:  # training starts after the export did
            model = nn.Linear(2, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            with tracer.trace(model, opt, path=path):
                model(torch.ones(1, 2)).sum().backward()
                opt.step()

    batches = list(_follow.follow(path, histograms=False, poll=0.25, sleep=sleep))
    assert [[0]] == [[r[0] for r in b] for b in batches]
    assert [0.25, 0.25, 0.25] == looks


def test_follow_with_wandb_logs_each_step_once(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from test_export import read_wandb_history

    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
                       "WANDB_DIR": str(tmp_path / "wd"), "WANDB_CACHE_DIR": str(tmp_path / "wc"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "wcfg"), "WANDB_DATA_DIR": str(tmp_path / "wdata")}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with stepping_run(tmp_path / "t", steps=3) as (sleep, _):
        monkeypatch.setattr(export, "follow_batches", functools.partial(_follow.follow, sleep=sleep))
        run_dir = export.to_wandb(tmp_path / "t", dir=tmp_path / "out", histograms=False, follow=True, poll=0.01)
    history = read_wandb_history(run_dir)
    assert [0, 1, 2] == [h["_step"] for h in history]
    expected = export.series(tmp_path / "t", histograms=False).scalars
    assert [expected[s]["loss"] for s in range(3)] == [h["loss"] for h in history]


def test_follow_refuses_a_dataframe_and_a_poll_that_is_not_positive(tmp_path):
    with stepping_run(tmp_path / "t", steps=1) as (sleep, _):
        sleep(0)
    frame = tracer.load(tmp_path / "t")
    with pytest.raises(ValueError, match="follow=True needs a trace directory .* got DataFrame, which does not grow"):
        export.to_tensorboard(frame, tmp_path / "tb", follow=True)
    assert not (tmp_path / "tb").exists()  # refused before anything was written
    for poll in (0, -1, float("nan"), True):
        with pytest.raises(ValueError, match="poll must be a positive number of seconds"):
            next(_follow.follow(tmp_path / "t", poll=poll))


def parse(argv):
    parser = argparse.ArgumentParser(prog="tracer")
    export.add_export_parser(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_cli_follow_options(tmp_path, capsys):
    args = parse(["export", "tensorboard", "t", "tb", "--follow", "--poll", "0.5"])
    assert (True, 0.5) == (args.follow, args.poll)
    assert (False, 1.0) == (lambda a: (a.follow, a.poll))(parse(["export", "wandb", "t"]))
    with pytest.raises(SystemExit) as exit_info:
        parse(["export", "tensorboard", "t", "tb", "--follow", "--poll", "0"])
    assert 2 == exit_info.value.code
    assert "--poll: must be a positive number of seconds (got '0')" in capsys.readouterr().err


CTRL_C = textwrap.dedent(
    """
    import argparse, sys
    from tracer.export import add_export_parser
    parser = argparse.ArgumentParser(prog="tracer")
    add_export_parser(parser.add_subparsers(required=True))
    args = parser.parse_args(sys.argv[1:])
    sys.exit(args.func(args))
    """
)


def test_ctrl_c_stops_following_cleanly(tmp_path):
    pytest.importorskip("tensorboard")
    argv = ["export", "tensorboard", str(tmp_path / "not-yet"), str(tmp_path / "tb"), "--follow", "--poll", "0.05"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert "following" in proc.stdout.readline()  # started: waiting for the trace to appear
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert 130 == proc.returncode, (out, err)
    assert "stopped following (Ctrl-C); the steps exported so far are kept" in out
    assert "Traceback" not in err
