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
        ("small_tensors.py", ["--quick", "--bare-floor"]),
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


def test_small_tensors_floor_hooks_count_outputs_change_nothing_and_leave_no_trace(monkeypatch):
    """The floor of benchmarks/small_tensors.py installs tracer's hook set with empty bodies:
    one tensor hook per module output, the same training, and torch as it was afterwards."""
    import copy

    import torch
    from torch.nn.modules import module as nn_hooks
    from torch.optim import optimizer as optim_hooks

    monkeypatch.syspath_prepend(str(BENCH))
    import small_tensors

    torch.manual_seed(0)
    plain = small_tensors.workload(3)
    hooked = plain._replace(model=copy.deepcopy(plain.model))
    hooked = hooked._replace(optimizer=torch.optim.Adam(hooked.model.parameters()))
    x = torch.randn(8, 4, dtype=torch.float64)
    plain.model.double(), hooked.model.double()
    before = (
        dict(nn_hooks._global_forward_pre_hooks), dict(nn_hooks._global_forward_hooks),
        dict(optim_hooks._global_optimizer_pre_hooks), dict(optim_hooks._global_optimizer_post_hooks),
        torch.autograd.backward,
    )  # fmt: skip
    floor = small_tensors.NoopHooks(hooked.model, wrap=False)
    with floor:
        assert torch.autograd.backward is not before[4]
        assert 1 == len(nn_hooks._global_forward_pre_hooks) - len(before[0])
        out = hooked.model(x)
        assert 4 == len(floor.tensor_handles)  # 3 Linear outputs and the model's
        hooked.optimizer.zero_grad()
        out.square().sum().backward()
        hooked.optimizer.step()
        assert [] == floor.tensor_handles  # the step post-hook ran
    plain.optimizer.zero_grad()
    plain.model(x).square().sum().backward()
    plain.optimizer.step()
    for p, q in zip(plain.model.parameters(), hooked.model.parameters(), strict=True):
        assert torch.equal(p, q)
    after = (
        dict(nn_hooks._global_forward_pre_hooks), dict(nn_hooks._global_forward_hooks),
        dict(optim_hooks._global_optimizer_pre_hooks), dict(optim_hooks._global_optimizer_post_hooks),
        torch.autograd.backward,
    )  # fmt: skip
    assert before == after
    assert all(not m._forward_pre_hooks_with_kwargs for m in hooked.model.modules())


def test_small_tensors_rejects_a_model_without_blocks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import small_tensors

    with pytest.raises(ValueError, match="--blocks must be at least 1, got 0"):
        small_tensors.workload(0)
