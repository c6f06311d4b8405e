"""Complex tensors read back as complex: ``tracer.load``, ``tracer.testing`` and ``tracer.diff``.

A complex row stores its values as interleaved float64 parts ``[re0, im0, re1, im1, ...]``
(what raw Parquet readers see); ``tracer.load`` hands back ``numel`` complex128 numbers.
Until the capture side records complex tensors, the trace is written here, row by row in
the trace schema, from one real SGD step of a complex ``nn.Linear``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_cli import command_line, run_quietly, subcommands
from torch import nn

import tracer
import tracer.testing as tt
from tracer._schema import META_FILE, SCHEMA

LR = 0.5


def _step():
    """One SGD step of a complex Linear(2, 1) on x = [[1+1j, 2]], loss |y|²: every tensor, exactly.

    y = (1+2j)(1+1j) + (−1j)·2 + 0.5 = −0.5+1j, L = 1.25; torch's gradient of the real
    loss is 2y·conj(x): weight [[1+3j, −2+4j]], bias [−1+2j]; the update is −0.5·grad.
    """
    model = nn.Linear(2, 1, dtype=torch.complex128)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1 + 2j, 0 - 1j]], dtype=torch.complex128))
        model.bias.copy_(torch.tensor([0.5 + 0j]))
    x = torch.tensor([[1 + 1j, 2 + 0j]], dtype=torch.complex128)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    y = model(x)
    loss = (y.real**2 + y.imag**2).sum()  # |y|², exact
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    updates = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return x, y.detach(), loss.detach(), before, grads, updates


X, Y, LOSS, PARAMS, GRADS, UPDATES = _step()


def _row(seq, kind, name, tensor, *, module_type="Linear", grad_enabled=None, step=0, optimizer=None):
    """A trace row the way the capture side records a tensor (complex: interleaved, stats of |z|)."""
    flat = tensor.detach().reshape(-1)
    size = flat.abs().double()
    values = torch.view_as_real(flat).reshape(-1) if flat.is_complex() else flat.double()
    return {
        "step": step, "seq": seq, "kind": kind, "name": name, "call": 0, "part": "0" if kind == "input" else "",
        "module_type": module_type, "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
        "numel": flat.numel(), "mean": float(size.mean()), "std": float(size.std(unbiased=False)),
        "min": float(size.min()), "max": float(size.max()), "norm": float(size.norm()), "nonfinite": 0,
        "values": values.tolist(), "rank": 0, "grad_enabled": grad_enabled,
        "optimizer": optimizer, "param_group": 0 if optimizer else None,
        "hparams": json.dumps({"lr": LR, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False,
                               "maximize": False}) if optimizer else None,
    }  # fmt: skip


def _rows(shift=0.0):
    """Every row of the step; ``shift`` moves the imaginary part of the weight's update."""
    rows = [
        _row(0, "input", "", X, grad_enabled=True),
        _row(1, "activation", "", Y, grad_enabled=True),
        _row(2, "loss", "loss", LOSS, module_type="SumBackward0"),
    ]
    for name in ("weight", "bias"):
        rows.append(_row(len(rows), "grad", name, GRADS[name], optimizer="SGD"))
        rows.append(_row(len(rows), "param", name, PARAMS[name], optimizer="SGD"))
    for name in ("weight", "bias"):
        update = UPDATES[name] + (1j * shift if name == "weight" else 0)
        rows.append(_row(len(rows), "update", name, update, optimizer="SGD"))
    return rows


def write_trace(path, rows):
    path.mkdir(parents=True)
    meta = {"format": "tracer", "schema_version": 1, "complete": True, "model": "Linear",
            "optimizers": [{"class": "SGD", "qualname": "torch.optim.sgd.SGD", "bases": []}]}  # fmt: skip
    (path / META_FILE).write_text(json.dumps(meta))
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path / "part-00000-complex-000000.parquet")
    return path


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return write_trace(tmp_path_factory.mktemp("complex") / "t", _rows())


def test_load_gives_complex_values_and_parquet_the_interleaved_floats(trace):
    frame = tracer.load(trace).set_index(["kind", "name"])
    weight = frame.loc[("param", "weight"), "values"]
    assert np.complex128 == weight.dtype and (2,) == weight.shape
    np.testing.assert_array_equal(np.array([1 + 2j, -1j]), weight)
    assert [1, 2] == list(frame.loc[("param", "weight"), "shape"]) and 2 == frame.loc[("param", "weight"), "numel"]
    raw = pq.read_table(trace).to_pandas().set_index(["kind", "name"])
    assert [1.0, 2.0, 0.0, -1.0] == list(raw.loc[("param", "weight"), "values"])  # re0, im0, re1, im1
    assert np.float64 == frame.loc[("loss", "loss"), "values"].dtype  # a real row stays real


def test_the_step_is_the_one_worked_by_hand():
    assert [[-0.5 + 1j]] == Y.tolist() and 1.25 == float(LOSS)
    assert [[1 + 3j, -2 + 4j]] == GRADS["weight"].tolist() and [-1 + 2j] == GRADS["bias"].tolist()


def test_complex_assertions_pass_on_the_traced_values(trace):
    tt.assert_param(trace, "weight", [[1 + 2j, -1j]])
    tt.assert_grad(trace, "weight", [[1 + 3j, -2 + 4j]])
    tt.assert_update(trace, "weight", [[-0.5 - 1.5j, 1 - 2j]])
    tt.assert_update(trace, "bias", torch.tensor([0.5 - 1j], dtype=torch.complex64))  # any complex dtype
    tt.assert_activation(trace, "", [[-0.5 + 1j]])
    tt.assert_input(trace, "", [[1 + 1j, 2]])
    tt.assert_loss(trace, 1.25)


def test_a_complex_assertion_fails_on_the_imaginary_part(trace):
    with pytest.raises(AssertionError) as info:
        tt.assert_param(trace, "weight", [[1 + 2j, 0]])  # traced: -1j
    message = str(info.value)
    assert "param 'weight' at step 0, call 0 is not close to expected!" in message
    assert "First mismatch at index (0, 1): traced -1j, expected 0j" in message
    with pytest.raises(AssertionError, match=re.escape("traced -1j, expected (-1+0j)")):
        tt.assert_param(trace, "weight", [[1 + 2j, -1]])  # a real expected value is compared as complex


def test_diff_compares_complex_values(trace, tmp_path):
    assert tracer.diff(trace, write_trace(tmp_path / "same", _rows())) is None
    moved = write_trace(tmp_path / "moved", _rows(shift=1e-3))
    found = tracer.diff(trace, moved)
    assert ("update", "weight", "values", 0) == (found.kind, found.name, found.field, found.index)
    assert complex(UPDATES["weight"][0, 0]) == found.a and complex(UPDATES["weight"][0, 0]) + 1e-3j == found.b
    assert "|a - b| = 0.001," in str(found)
    assert tracer.diff(trace, moved, atol=1e-2) is None


def test_the_report_checks_a_complex_update_as_torch_steps_it(trace):
    frame = tracer.report(trace).to_frame().set_index("name")
    assert [True, True] == list(frame["matches"])
    # the new weight [[0.5+0.5j, 1−3j]] in its real view, as torch.optim steps a complex parameter
    assert [0.5, 0.5, 1.0, -3.0] == frame.loc["weight", "observed"]
    assert 0.0 == frame.loc["weight", "max_abs_error"]


def test_every_command_reads_a_complex_trace(trace, tmp_path):
    for words in subcommands():
        code, _, err = run_quietly(command_line(words, trace, trace, tmp_path))
        assert (0, "") == (code, err), (words, err)


def test_a_golden_trace_keeps_complex_values(trace, tmp_path):
    golden = tmp_path / "golden"
    tt.assert_matches_golden(trace, golden, update=True)
    raw = pq.read_table(golden).to_pandas().set_index(["kind", "name"])
    assert [1.0, 2.0, 0.0, -1.0] == list(raw.loc[("param", "weight"), "values"])  # stored interleaved
    tt.assert_matches_golden(trace, golden)
    with pytest.raises(AssertionError, match="update 'weight' call 0: values differ at index"):
        tt.assert_matches_golden(write_trace(tmp_path / "moved", _rows(shift=1e-3)), golden)
