"""The README's Quick start and recipes run as written, twice, and the recipes return rows."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str, contains: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL):
        if contains in block:
            return block
    raise AssertionError(f"no python block containing {contains!r} after {heading!r}")


def test_the_quick_start_runs_twice_and_the_recipes_return_rows(tmp_path):
    quick_start = _block_after("## Quick start", "tracer.trace(")
    for _ in range(2):  # the second run replaces what the first wrote
        done = subprocess.run(
            [sys.executable, "-c", quick_start], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    recipes = "\n".join(_block_after("## Recipes", contains) for contains in ('kind="grad", columns=', "step_100 = "))
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recipe that matched nothing would warn
        import os

        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            exec(compile("import tracer\n" + recipes, "README recipes", "exec"), scope)
        finally:
            os.chdir(cwd)
    assert scope["table"].shape == (200, 4)  # four parameters, 200 steps
    assert set(scope["step_100"]["step"]) == {100}
    assert set(scope["updates"]["name"]) == {"fc1.weight", "fc2.weight"}
    assert sorted(set(scope["updates"]["step"])) == list(range(50))


def test_the_duckdb_recipe_reads_the_trace(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    quick_start = _block_after("## Quick start", "tracer.trace(")
    subprocess.run([sys.executable, "-c", quick_start], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    query = re.search(r'duckdb\.sql\("""(.*?)"""\)', README.read_text(encoding="utf-8"), flags=re.DOTALL).group(1)
    frame = duckdb.sql(query.replace("traces/run1", str(tmp_path / "traces" / "run1"))).df()
    assert len(frame) == 200 * 4
