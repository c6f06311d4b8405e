"""tracer.load's filters: an unknown kind is an error, a name or step that matches nothing warns."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tracer


@pytest.fixture(scope="module")
def mlp_trace(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(3, 4))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path_factory.mktemp("filters") / "run"
    with tracer.trace(model, opt, path=path):
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
    return path


def test_an_unknown_kind_is_the_same_error_as_in_capture(mlp_trace):
    with pytest.raises(ValueError, match=r"unknown kind\(s\) \['grads'\] \(did you mean 'grad'\?\)") as load_error:
        tracer.load(mlp_trace, kind="grads")
    with pytest.raises(ValueError) as capture_error:
        tracer.trace(nn.Linear(1, 1), capture=["grads"], path=mlp_trace.parent / "unused")
    assert "'grads'" in str(capture_error.value) and "'grad'" in str(load_error.value)


def test_a_name_that_matches_nothing_warns_with_the_closest_name(mlp_trace):
    with pytest.warns(UserWarning, match=r"no rows match name='fc3\*' among the grad rows; names there: 'fc1.bias'"):
        assert tracer.load(mlp_trace, kind="grad", name="fc3*").empty
    with pytest.warns(UserWarning, match=r"\(closest: 'fc1.weight'\)"):
        tracer.load(mlp_trace, name="fc1.wieght")


def test_a_step_that_matches_nothing_warns_with_the_range_of_steps(mlp_trace):
    with pytest.warns(UserWarning, match=r"no rows at step=500; the trace has steps 0–4"):
        assert tracer.load(mlp_trace, step=500).empty
    with pytest.warns(
        UserWarning,
        match=r"step=slice\(7, 9, None\) among the grad rows for name='fc1.weight'; the trace has steps 0–4",
    ):
        tracer.load(mlp_trace, kind="grad", name="fc1.weight", step=slice(7, 9))


def test_matching_rows_and_absent_kinds_do_not_warn(mlp_trace):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(tracer.load(mlp_trace, kind="grad", name="fc*.weight", step=3)) == 2
        assert tracer.load(mlp_trace, kind="skipped", step=3).empty  # no skipped step: a fact, not a mistake
        assert tracer.load(mlp_trace, kind="skipped").empty
