"""The examples run, and say what they promise."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, capsys) -> str:
    argv = sys.argv
    sys.argv = [script, *args]
    try:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    finally:
        sys.argv = argv
    return capsys.readouterr().out


def test_walkthrough_prints_the_tutorial_numbers(tmp_path, capsys):
    out = _run("walkthrough.py", str(tmp_path / "w"), capsys=capsys)
    for expected in ["ŷ = 1·1 + 1·2 + 0 = 3 ✓", "L = (ŷ − y)² = (3 − 8)² = 25 ✓", "∂L/∂w₂ = 2ex₂ = 2·(−5)·2 = −20 ✓",
                     "w₂ (weight[0,1]): 1 − 0.01 · (−20) = 1.2", "b (bias[0]): 0 − 0.01 · (−10) = 0.1",
                     "✓ 2 match their rule"]:  # fmt: skip
        assert expected in out
    order = [out.index(s) for s in ("1. Forward pass", "2. Loss", "3. Gradients", "4. Update")]
    assert sorted(order) == order


def test_walkthrough_writes_its_html_page_next_to_the_trace(tmp_path, capsys):
    out = _run("walkthrough.py", str(tmp_path / "w"), capsys=capsys)
    page = tmp_path / "w.html"
    assert f"The same report as an HTML page: {page}" in out
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "1 − 0.01 · (−20) = 1.2" in html
    assert "4. Update: optimizer.step()" in html
    assert not (tmp_path / "w" / "w.html").exists()  # not inside the trace, which overwrite=True replaces


def test_optimizers_example_checks_every_update(tmp_path, capsys):
    out = _run("optimizers.py", str(tmp_path / "o"), capsys=capsys)
    assert 3 == out.count("every update checked: True")
    assert "β₁ = 0.9, β₂ = 0.999 (betas)" in out


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("test_")))
def test_every_example_is_documented(script):
    text = (EXAMPLES / script).read_text()
    assert text.startswith('"""') and "Run:" in text, f"{script} needs a docstring saying how to run it"


@pytest.mark.slow
def test_fsdp_example_records_shards_and_checks_every_update(tmp_path):
    import subprocess

    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("needs torch.distributed with the gloo backend")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "fsdp.py"), str(tmp_path / "f")], capture_output=True, text=True, timeout=300
    )
    assert 0 == done.returncode, done.stderr[-3000:]
    assert "Shard(dim=0)" in done.stdout and "[8, 4]" in done.stdout
    assert "✓ 12 match their rule, ✗ 0 differ, – 0 could not be checked" in done.stdout
