"""The table of diagnostics: every code documented, raised by a real model, silent on a clean run.

In the style of ``tests/rules/test_rules_table.py``: adding a diagnostic is one function and
one line of ``tracer._diagnose._table.DIAGNOSTICS``, and these tests then ask for its
documentation and for a tiny model that shows it (one entry in ``TRIGGERS``).
"""

from __future__ import annotations

import inspect
import pathlib

import pytest
import torch
from test_diagnose import _amp_run, _dead_model, fit, mlp, regression_data
from torch import nn

import tracer
import tracer._diagnose as package
from tracer._diagnose import CODES, DIAGNOSTICS, SEVERITIES, Diagnostic, Thresholds, diagnose


def _nan_in_the_data(path):
    model = mlp()
    x, y = regression_data()
    x[20] = float("nan")
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=0.05), 6, x=x, y=y, batch=64)


def _lr_too_high(path):
    model = mlp()
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=2.0), 14)


def _lr_too_small(path):
    model = mlp()
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=1e-7), 8)


def _deep_sigmoid(path):
    torch.manual_seed(0)
    layers = [m for _ in range(8) for m in (nn.Linear(8, 8), nn.Sigmoid())]
    model = nn.Sequential(*layers, nn.Linear(8, 1)).double()
    x, y = regression_data(32)
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=0.01), 6, x=x.repeat(1, 2), y=y)


def _dead_units(path):
    model = _dead_model([-50.0] * 6 + [0.5] * 2)
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=0.01), 8)


def _frozen(path):
    model = mlp()
    model[2].requires_grad_(False)
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=0.05), 6)


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.main, self.aux = nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, x):
        return self.main(x) + 0.0 * self.aux(x)  # aux is switched off, but still decayed


def _decayed_without_grad(path):
    torch.manual_seed(0)
    model = _Gated().double()
    return fit(path, model, torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.1), 6)


class _ClampedSGD(torch.optim.SGD):
    """SGD that also clamps the weights: not what SGD's rule says."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"]).clamp_(-0.2, 0.2)


def _clamped(path):
    model = mlp()
    return fit(path, model, _ClampedSGD(model.parameters(), lr=0.05), 6)


TRIGGERS = {
    "first-nonfinite": _nan_in_the_data,
    "loss-diverging": _lr_too_high,
    "loss-flat": _lr_too_small,
    "exploding-grad": _lr_too_high,
    "vanishing-grad": _deep_sigmoid,
    "update-ratio": _lr_too_small,
    "dead-relu": _dead_units,
    "amp-skipped": lambda path: _amp_run(path, init_scale=2.0**127),
    "never-changes": _frozen,
    "changes-without-grad": _decayed_without_grad,
    "rule-mismatch": _clamped,
}
"""A tiny real model per code that shows it."""


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Each trigger's trace, made once (several codes share one)."""
    made: dict = {}
    root = tmp_path_factory.mktemp("triggers")
    for code, make in TRIGGERS.items():
        if make not in made:
            made[make] = make(root / code).path
    return {code: made[make] for code, make in TRIGGERS.items()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A healthy run: an MLP that converges under Adam."""
    model = mlp()
    return tracer.open(
        fit(tmp_path_factory.mktemp("clean") / "t", model, torch.optim.Adam(model.parameters(), lr=0.01), 40).path
    )


def test_every_code_has_a_trigger():
    assert list(CODES) == list(TRIGGERS)


def test_codes_are_unique_and_in_table_order():
    assert len(set(CODES)) == len(CODES)
    assert tuple(d.code for d in DIAGNOSTICS) == CODES


@pytest.mark.parametrize("diagnostic", DIAGNOSTICS, ids=CODES)
def test_each_row_is_complete(diagnostic: Diagnostic):
    assert diagnostic.severities and set(diagnostic.severities) <= set(SEVERITIES)
    assert diagnostic.doc.strip() and "\n" not in diagnostic.doc
    assert inspect.getdoc(diagnostic.check), f"{diagnostic.check.__name__} has no docstring"
    assert "Example" in inspect.getdoc(diagnostic.check)
    params = list(inspect.signature(diagnostic.check).parameters.values())
    assert ["trace", "t"] == [p.name for p in params[:2]]
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params[2:])
    assert diagnostic.takes_optimizers == ("optimizers" in {p.name for p in params})


@pytest.mark.parametrize("code", CODES)
def test_each_code_is_documented(code):
    assert f"\n{code} " in package.__doc__  # a row of the table in the package docstring


@pytest.mark.parametrize("code", CODES)
def test_each_code_is_raised_by_a_real_model(traces, code):
    findings = [f for f in diagnose(traces[code]) if f.code == code]
    assert findings, f"the trigger of {code} raised no {code}"
    severities = next(d.severities for d in DIAGNOSTICS if d.code == code)
    assert {f.severity for f in findings} <= set(severities)


@pytest.mark.parametrize("diagnostic", DIAGNOSTICS, ids=CODES)
def test_each_check_finds_only_its_own_code(traces, diagnostic):
    found = diagnostic.check(tracer.open(traces[diagnostic.code]), Thresholds())
    assert found and {diagnostic.code} == {f.code for f in found}


@pytest.mark.parametrize("diagnostic", DIAGNOSTICS, ids=CODES)
def test_each_check_is_silent_on_a_clean_run(clean, diagnostic):
    assert [] == diagnostic.check(clean, Thresholds())


def test_every_module_of_the_package_is_short():
    root = pathlib.Path(package.__file__).parent
    long = {p.name: n for p in root.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert {} == long
