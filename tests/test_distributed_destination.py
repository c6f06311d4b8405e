"""Every rank of a distributed run traces into one directory: rank 0 alone prepares it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tracer

HERE = Path(__file__).parent


@pytest.mark.slow
def test_two_ranks_trace_into_fresh_directories_without_overwrite_again_and_again(tmp_path):
    rounds = 4
    done = subprocess.run(
        [sys.executable, str(HERE / "_ddp_destination.py"), str(tmp_path), str(rounds)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [p.read_text() for p in tmp_path.glob("error-*.txt")]
    assert not errors, errors[0]
    assert 0 == done.returncode, done.stderr[-2000:]
    for i in range(rounds):
        df = tracer.load(tmp_path / f"round{i}", kind="grad")
        assert {0, 1} == set(df["rank"]) and {0, 1} == set(df.step)
    # path=None: both ranks wrote into the one directory rank 0 named
    chosen = {p.read_text() for p in tmp_path.glob("path-*.txt")}
    default = [c for c in chosen if "/traces/" in c]
    assert 1 == len(default), chosen
    assert {0, 1} == set(tracer.load(default[0], kind="grad")["rank"])
    for rank in (0, 1):  # a directory per rank
        assert {rank} == set(tracer.load(tmp_path / f"own{rank}", kind="grad")["rank"])
        assert (tmp_path / f"own{rank}" / "_tracer.json").is_file()
    refused = sorted(p.name for p in tmp_path.glob("refused-*.txt"))
    assert ["refused-0.txt", "refused-1.txt"] == refused
    assert "already holds a trace" in (tmp_path / "refused-1.txt").read_text()
