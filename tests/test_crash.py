"""SIGKILL at random times loses no row older than ``flush_seconds`` (plus 0.2 s).

A fork server (one Python process that imports torch and tracer once) forks a child per
run. The child traces a small real model with ``flush_seconds=1`` at 50 steps a second
and, after each ``optimizer.step()``, appends ``<step> <time.monotonic()>`` to a side log
with one unbuffered ``os.write``. The test SIGKILLs it at a random time (seeded), reads
the trace with ``tracer.load`` (finished files only) and checks that every step that
ended more than ``flush_seconds + 0.2`` s before the kill has all its rows (both times
from ``time.monotonic()``, one clock for every process on Linux and macOS).

20 kills, each 1.6-2.8 s after a run's first step: about 2,000 steps in all (20 runs of
~100). Forking saves the seconds a fresh interpreter takes to import torch and build its
first optimizer: the file takes ~50 s. A writer that counts its deadline from its previous
file instead of from the oldest waiting row loses steps up to 2.3 s old here.

Margin: the writer aims to rename a file 0.1 s before its oldest row is
``flush_seconds`` old (two of its polls), with a pessimistic estimate of the write time;
the 0.2 s allowed here on top covers a busy machine scheduling the writer late.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import tracer

FLUSH_SECONDS = 1.0
MARGIN_SECONDS = 0.2
STEP_SECONDS = 0.02
KILLS = 20

_SERVER = """
import json, os, sys, traceback, warnings
sys.path.insert(0, sys.argv[1])
# its only other threads are OpenBLAS's and jemalloc's, which both prepare for fork
warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
import torch
from test_crash import _model, train_until_killed  # torch and tracer, imported once

torch.set_num_threads(1)  # no intra-op thread pool to fork
_model()  # the first optimizer imports torch's compiler stack (seconds): here, not per child

for line in sys.stdin:
    path, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            train_until_killed(path, log)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def _model() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    # 14 modules, 14 parameters: ~70 rows a step, 3,500 a second, to keep the writers busy
    model = nn.Sequential(nn.Linear(8, 16), *[m for _ in range(5) for m in (nn.Tanh(), nn.Linear(16, 16))],
                          nn.Tanh(), nn.Linear(16, 1))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, opt, torch.randn(32, 8), torch.randn(32, 1)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def train_until_killed(path: str, log: str) -> None:
    """The child: trace ``_step`` every STEP_SECONDS, logging each step's end, until killed."""
    model, opt, x, y = _model()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = time.monotonic()
    with tracer.trace(model, opt, path=path, flush_seconds=FLUSH_SECONDS):
        for step in range(100_000):
            _step(model, opt, x, y)
            os.write(fd, f"{step} {time.monotonic()!r}\n".encode())
            time.sleep(max(0.0, start + (step + 1) * STEP_SECONDS - time.monotonic()))


def _rows_of_a_step(tmp_path: Path) -> collections.Counter:
    """What one step writes: (kind, name, call, part) of each row, from a trace made here."""
    model, opt, x, y = _model()
    with tracer.trace(model, opt, path=tmp_path / "reference") as run:
        _step(model, opt, x, y)
        _step(model, opt, x, y)
    rows = tracer.load(run, step=1)
    assert {"input", "activation", "loss", "grad", "param", "update"} <= set(rows.kind)
    return collections.Counter(zip(rows.kind, rows.name, rows.call, rows.part))


def _logged_steps(log: Path) -> list[tuple[int, float]]:
    """(step, end time) of each step in the side log; a line cut by the kill is left out."""
    steps = []
    for line in log.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            step, ended = line.split()
            steps.append((int(step), float(ended)))
    return steps


def _first_step_time(log: Path, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and _logged_steps(log):
            return _logged_steps(log)[0][1]
        time.sleep(0.01)
    pytest.fail(f"the traced child logged no step within {timeout:.0f} s")


def _lines(stream) -> queue.Queue:
    """The lines of ``stream``, read on a thread: a dead server fails a get(timeout), never hangs."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _incomplete_steps(trace: Path, steps: list[int], expected: collections.Counter) -> list[int]:
    """The ``steps`` that do not have every row of ``expected`` in the trace."""
    df = tracer.load(trace, step=steps)
    found: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for step, *key in zip(df.step, df.kind, df.name, df["call"], df.part):
        found[step][tuple(key)] += 1
    return [s for s in steps if found[s] != expected]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server needs os.fork (POSIX)")
def test_sigkill_at_random_times_loses_no_row_older_than_flush_seconds(tmp_path):
    expected = _rows_of_a_step(tmp_path)
    rng = random.Random(20240611)
    tests_dir = str(Path(__file__).resolve().parent)
    python_path = [str(Path(tests_dir).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}  # this checkout's tracer
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, tests_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    lines = _lines(server.stdout)
    began, total_steps, checked, oldest_lost = time.monotonic(), 0, 0, 0.0
    try:
        for kill in range(KILLS):
            path, log = tmp_path / f"run{kill:02d}", tmp_path / f"run{kill:02d}.log"
            server.stdin.write(json.dumps([str(path), str(log)]) + "\n")
            server.stdin.flush()
            pid = int(lines.get(timeout=60))
            delay = rng.uniform(1.6, 2.8)
            time.sleep(max(0.0, _first_step_time(log) + delay - time.monotonic()))
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            assert -signal.SIGKILL == int(lines.get(timeout=60)), f"run {kill}: the child ended before the kill"

            logged = _logged_steps(log)  # step 0 among them, ended >= 1.6 s before the kill
            ended = dict(logged)
            total_steps += len(logged)
            checked += sum(t < killed_at - FLUSH_SECONDS - MARGIN_SECONDS for t in ended.values())
            incomplete = _incomplete_steps(path, list(ended), expected)
            if incomplete:
                age = killed_at - ended[incomplete[0]]
                oldest_lost = max(oldest_lost, age)
                assert age <= FLUSH_SECONDS + MARGIN_SECONDS, (
                    f"run {kill}: step {incomplete[0]} lost rows though it ended {age:.2f} s before "
                    f"the SIGKILL (flush_seconds={FLUSH_SECONDS}); incomplete steps: {incomplete[:8]}"
                )
    finally:
        server.kill()
        server.wait()
        server.stdin.close()
        server.stdout.close()
    print(
        f"{KILLS} kills, {total_steps} steps ({checked} checked) in {time.monotonic() - began:.1f} s; "
        f"the oldest step lost had ended {oldest_lost:.2f} s before its kill"
    )
