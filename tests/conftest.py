"""Shared fixtures."""

from __future__ import annotations

import pytest
from _reference import make_reference, train_reference


@pytest.fixture
def reference_trace(tmp_path):
    """Path of a trace of the reference example's single step."""
    import tracer

    model, x, y, loss_fn, optimizer = make_reference()
    path = tmp_path / "ref"
    with tracer.trace(model, optimizer, path=path):
        train_reference(model, x, y, loss_fn, optimizer)
    return path
