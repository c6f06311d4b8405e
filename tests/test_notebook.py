"""examples/walkthrough.ipynb runs top to bottom in a real Jupyter kernel and shows the report inline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "walkthrough.ipynb"

# jupyter_core (imported by nbclient) warns (DeprecationWarning) on import unless told to use
# the platform's standard directories, and warnings are errors in this test run
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

nbformat = pytest.importorskip("nbformat", reason="executing the notebook needs nbformat (the 'test' extra)")
nbclient = pytest.importorskip("nbclient", reason="executing the notebook needs nbclient (the 'test' extra)")
pytest.importorskip("ipykernel", reason="executing the notebook needs ipykernel (the 'test' extra)")


def outputs(cell, mime):
    return "".join(
        "".join(o.get("data", {}).get(mime, "")) for o in cell.get("outputs", []) if o.get("output_type") != "stream"
    )


def test_walkthrough_notebook_executes_and_shows_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiets the kernel's debugger on stderr
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert [] == errors
    assert (tmp_path / "traces" / "walkthrough" / "_tracer.json").is_file()  # it ran where we said

    new_params = outputs(code[1], "text/plain")
    assert "[[1.1, 1.2]]" in new_params and "[0.1]" in new_params  # the hand-computed step

    report = next(c for c in code if "tracer.report" in c.source)
    html = outputs(report, "text/html")
    assert html, "the report is not displayed as HTML"
    assert "θ ← θ − γ·g" in html  # SGD's rule
    assert "1 − 0.01 · (−20) = 1.2" in html  # the numbers substituted, by hand
    assert "2 match their rule" in html and "0 differ" in html

    findings = code[-1]
    assert "no findings" in outputs(findings, "text/html")


def test_notebook_is_stored_clean_of_errors():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
