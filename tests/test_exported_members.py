"""tracer's public surface is exactly what is documented (httpx's test_exported_members)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tracer

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")

DOCUMENTED = {
    "ALL", "DEFAULT_MAX_VALUES", "Divergence", "Finding", "Findings", "KINDS", "Report", "Run",
    "SCHEMA_VERSION", "Thresholds", "Trace", "TraceFormatError", "TraceWriteError", "TracerError",
    "__version__", "compare", "diagnose", "diff", "load", "open", "report", "trace",
}  # fmt: skip


def test_all_is_exactly_the_documented_surface():
    assert DOCUMENTED == set(tracer.__all__)
    for name in tracer.__all__:
        assert getattr(tracer, name) is not None
        assert name in dir(tracer)


def test_every_public_name_is_in_the_readme():
    missing = [n for n in tracer.__all__ if n != "__version__" and not re.search(rf"`tracer\.{n}\b", README)]
    assert not missing, f"not documented in README.md: {missing}"


def test_exported_objects_say_they_are_tracers():
    for name in tracer.__all__:
        value = getattr(tracer, name)
        if callable(value) and hasattr(value, "__module__"):
            assert value.__module__.startswith("tracer"), (name, value.__module__)


def test_public_modules_are_attributes_after_import_tracer():
    code = (
        "import tracer; tracer.testing.assert_grad; tracer.export.to_tensorboard; "
        "tracer.plots.loss_plot; tracer.rules; tracer.integrations.MissingExtraError"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_tracer_imports_neither_torch_nor_pandas():
    code = "import sys, tracer; print(sorted(m for m in ('torch', 'pandas', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert "[]" == out.stdout.strip()


def test_no_module_is_shadowed_by_a_function_of_the_same_name():
    import importlib.util

    for name in tracer.__all__:
        assert importlib.util.find_spec(f"tracer.{name}") is None or not callable(getattr(tracer, name)), name


def test_an_unknown_name_is_an_attribute_error():
    try:
        tracer.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("tracer.no_such_thing did not raise")
