"""SIGTERM (SLURM, Kubernetes, torchrun) finalizes the trace the way Ctrl-C does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import tracer

_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    import torch
    from torch import nn
    import tracer

    path, mode = Path(sys.argv[1]), sys.argv[2]
    stop = []
    if mode == "chained":
        def mine(signum, frame):
            (path.parent / "handler-ran").write_text(str(tracer_run.step))
            sys.exit(3)
        signal.signal(signal.SIGTERM, mine)
    if mode == "graceful":  # the handler sets a flag; the loop finishes its work and ends
        def mine(signum, frame):
            stop.append(tracer_run.step)
        signal.signal(signal.SIGTERM, mine)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=path, flush_seconds=60) as tracer_run:
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        for step in range(100000):
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
            if step == 20:
                (path.parent / "ready").write_text("")
            if stop and step >= stop[0] + 30:
                break
            time.sleep(0.001)
    (path.parent / "done").write_text(str(tracer_run.step))
    """
)


def _run_until_ready(tmp_path, mode):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "t"), mode], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child never got going"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, child.err = child.communicate(timeout=60)
    return child


@pytest.mark.slow
def test_sigterm_writes_every_row_and_the_metadata_then_ends_the_process(tmp_path):
    child = _run_until_ready(tmp_path, "default")
    assert -signal.SIGTERM == child.returncode, child.err.decode()  # it ends as it would untraced
    meta = json.loads((tmp_path / "t" / "_tracer.json").read_text())
    assert meta["complete"] and meta["steps"] >= 21
    steps = tracer.load(tmp_path / "t", kind="update").step
    # flush_seconds=60: without the handler nothing would be on disk yet
    assert set(range(meta["steps"])) <= set(steps)


@pytest.mark.slow
def test_sigterm_reaches_the_handler_it_replaced(tmp_path):
    child = _run_until_ready(tmp_path, "chained")
    assert 3 == child.returncode, child.err.decode()
    assert int((tmp_path / "handler-ran").read_text()) >= 21
    assert json.loads((tmp_path / "t" / "_tracer.json").read_text())["complete"]


def test_the_handler_is_restored_when_the_block_ends(tmp_path):
    from _reference import make_reference, train_reference

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        model, x, y, loss_fn, opt = make_reference()
        with tracer.trace(model, opt, path=tmp_path / "t"):
            assert signal.getsignal(signal.SIGTERM) is not mine
            train_reference(model, x, y, loss_fn, opt)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_recording_goes_on_when_the_replaced_handler_returns(tmp_path):
    child = _run_until_ready(tmp_path, "graceful")
    assert 0 == child.returncode, child.err.decode()
    steps = int((tmp_path / "done").read_text())
    meta = json.loads((tmp_path / "t" / "_tracer.json").read_text())
    assert meta["complete"] and steps == meta["steps"]
    assert set(range(steps)) == set(tracer.load(tmp_path / "t", kind="update").step)  # none lost after it


def test_the_rows_of_the_step_in_progress_are_written_on_sigterm(tmp_path):
    # what the SIGTERM handler does, called in the middle of a step: the forward's rows,
    # staged until the step ends, are in a finished file at once
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tracer.trace(model, opt, path=tmp_path / "t", flush_seconds=60) as run:
        model(torch.ones(1, 2)).sum().backward()  # no optimizer.step(): the step is open
        run._finalize_on_signal()
        kinds = set(tracer.load(tmp_path / "t").kind)  # files only: no flush of the run here
        opt.step()
    assert {"input", "activation", "loss", "activation_grad"} <= kinds
