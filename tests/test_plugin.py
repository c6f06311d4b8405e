"""The pytest plugin, run through pytest itself (pytester): fixture, golden option, failure report."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_training_step.py"

# The reference example (kept inline: pytester files run outside this test directory).
REFERENCE = """
from pathlib import Path

import torch
from torch import nn

import tracer
import tracer.testing as tt

GOLDEN = Path(__file__).parent / "golden" / "reference"
LR = {lr}


def train(traced, steps=2):
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[8.0]], dtype=torch.float64)
    with traced(model, optimizer) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.MSELoss()(model(x), y).backward()
            optimizer.step()
    return run
"""


# inline runs: no cache files, and no hypothesis plugin (it re-imports hypothesis each run)
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def reference(lr: float = 0.01) -> str:
    return REFERENCE.format(lr=lr)


@pytest.fixture(scope="module", autouse=True)
def _imports_done_before_pytester(tmp_path_factory):
    """Run tracer once here, so that modules it imports lazily are loaded before pytester runs.

    pytester unloads the modules an inline run imported; torch modules that register
    operator libraries (torch.distributed.*) fail when imported a second time.
    """
    import torch

    import tracer

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with tracer.trace(model, optimizer, path=tmp_path_factory.mktemp("warm") / "t") as run:
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    tracer.report(run).to_markdown()
    tracer.diff(run, run)


def test_traced_fixture_traces_into_tmp_path(pytester):
    pytester.makepyfile(
        reference()
        + """
def test_fixture(traced, tmp_path):
    run = train(traced)
    assert run.path.parent == tmp_path
    assert 2 == run.step
    tt.assert_grad(run, "weight", [[-10.0, -20.0]])
    other = train(traced, steps=1)
    assert other.path != run.path and other.path.parent == tmp_path


def test_fixture_takes_trace_options(traced, tmp_path):
    model = nn.Linear(2, 1)
    with traced(model, capture=["activation"], path=tmp_path / "here") as run:
        model(torch.ones(1, 2))
    assert run.path == tmp_path / "here"
    assert {"activation"} == set(tracer.load(run)["kind"])
"""
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=2)


def test_fixture_verifies_every_update_unless_told_not_to(pytester):
    pytester.makepyfile(
        reference()
        + """
def test_on_by_default(traced):
    run = train(traced)
    updates = tracer.load(run, kind="update")
    assert [True] * 4 == updates["rule_matches"].tolist()
    assert (updates["rule_error"] <= 1e-16).all()
    assert True is tracer._trace.Trace.open(run.path).meta.options.verify


def test_verify_false_is_kept(traced):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with traced(model, optimizer, verify=False) as run:
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    assert tracer.load(run, kind="update")["rule_matches"].isna().all()
"""
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=2)


def test_golden_update_then_compare_cycle(pytester):
    test_file = """
def test_golden(traced):
    run = train(traced)
    tt.assert_matches_golden(run, GOLDEN, kinds=["loss", "grad", "update"])
"""
    pytester.makepyfile(test_golden=reference() + test_file)
    golden = pytester.path / "golden" / "reference"

    first = pytester.runpytest(*QUIET)
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*no golden trace at*--tracer-update-golden*"])
    assert not golden.exists()

    created = pytester.runpytest(*QUIET, "--tracer-update-golden")
    created.assert_outcomes(passed=1)
    created.stdout.fnmatch_lines(["*tracer golden traces*", f"created {golden}", "*review and commit*"])
    assert (golden / "_tracer.json").is_file()
    assert 1 == len(list(golden.glob("*.parquet")))

    pytester.runpytest(*QUIET).assert_outcomes(passed=1)

    pytester.makepyfile(test_golden=reference(lr=0.02) + test_file)  # training changed
    changed = pytester.runpytest(*QUIET)
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines(
        [
            "*trace does not match the golden trace*",
            "*traces diverge at step 0: update 'weight' call 0: values differ at index (0, 0)*golden = 0.1*trace = 0.19*",
            "*--tracer-update-golden*",
        ]
    )

    updated = pytester.runpytest(*QUIET, "--tracer-update-golden")
    updated.assert_outcomes(passed=1)
    updated.stdout.fnmatch_lines([f"updated {golden}"])
    pytester.runpytest(*QUIET).assert_outcomes(passed=1)


def test_failure_report_is_short_and_ours(pytester):
    pytester.makepyfile(
        reference()
        + """
def test_grad(traced):
    run = train(traced)
    tt.assert_grad(run, "weight", [[-10.0, -21.0]])


def test_diff(traced):
    a = train(traced)
    b = train(traced, steps=3)
    assert tracer.diff(a, b) is None
"""
    )
    result = pytester.runpytest(*QUIET, "--showlocals")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: grad 'weight' at step 0, call 0 is not close to expected!",
            "*First mismatch at index (0, 1): traced -20.0, expected -21.0",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*assert <Divergence at step 2: input ''> is None",
            "*traces diverge at step 2: input '' call 0 part '0' is in b but not in a*",
        ]
    )
    text = result.stdout.str()
    assert "_assert_tensor" not in text  # tracer's own frames are hidden
    assert "DataFrame" not in text and "rows = " not in text  # no frame dumps, even with -l


def test_update_option_is_in_pytest_help(pytester):
    result = pytester.runpytest(*QUIET, "--help")
    result.stdout.fnmatch_lines(["*--tracer-update-golden*"])


def test_example_file_passes(pytester):
    result = pytester.runpytest(str(EXAMPLE), *QUIET, "-q")
    result.assert_outcomes(passed=3)
