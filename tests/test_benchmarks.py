"""The benchmark scripts run (smoke test): they measure, nothing here asserts a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args",
    [
        ("overhead.py", ["--quick", "--workloads", "W1"]),
        ("memory.py", ["--quick"]),
        ("load.py", ["--quick"]),
        ("long_run.py", ["--quick"]),
        ("ops.py", ["--quick", "--workloads", "W4"]),
        ("verify.py", ["--quick", "--workloads", "W1"]),
        ("stats_pass.py", ["--quick", "--no-compile"]),
    ],
)
def test_benchmark_script_runs_and_prints_its_table(script, args, tmp_path):
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--markdown", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr[-2000:]
    assert "|" in done.stdout and out.read_text().startswith("#")
