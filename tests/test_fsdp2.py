"""FSDP2 (``fully_shard``) and tensor-parallel DTensors on two gloo ranks: the local shards that
tracer._sharded reads, placed at their offsets, are the full tensors, and tracer._assemble
rebuilds them and their statistics from the shard rows (the ranks run tests/_fsdp2_worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    done = subprocess.run(
        [sys.executable, str(HERE / "_fsdp2_worker.py"), str(out)], capture_output=True, text=True, timeout=300
    )
    errors = sorted(out.glob("error-*.txt"))
    assert not errors, errors[0].read_text()
    assert 0 == done.returncode, done.stderr[-3000:]
    return [json.loads((out / f"checked-{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_fsdp2_sequential_shards_are_uneven_with_empty_and_padded_ones_and_assemble(checked):
    rank0, rank1 = (c["fsdp2 Sequential AdamW"] for c in checked)
    assert 16 == rank0["tensors"] == rank1["tensors"]  # 4 parameters: param, grad, exp_avg, exp_avg_sq
    assert ["Shard(dim=0)"] == rank0["placements"]
    # Linear(5, 1): rank 1 holds nothing of its weight, bias and their grad and state
    assert (0, 8) == (rank0["empty_shards"], rank1["empty_shards"])
    assert rank1["padded"] > 0  # FSDP2's padded storage behind the shard: never recorded


@pytest.mark.slow
def test_fsdp2_transformer_block_shards_assemble(checked):
    for c in checked:
        block = c["fsdp2 TransformerEncoderLayer SGD momentum"]
        assert 36 == block["tensors"] and ["Shard(dim=0)"] == block["placements"]  # 12 parameters


@pytest.mark.slow
def test_tensor_parallel_colwise_then_rowwise_shards_and_replicas_assemble(checked):
    for c in checked:
        mlp = c["tensor parallel MLP Adam"]
        assert ["Replicate()", "Shard(dim=0)", "Shard(dim=1)"] == mlp["placements"]
        assert 16 == mlp["tensors"]


@pytest.mark.slow
def test_mixed_precision_hooks_see_bf16_and_the_optimizer_fp32_shards(checked):
    for c in checked:
        expected = {"input": "torch.bfloat16", "output": "torch.bfloat16", "param": "torch.float32"}
        assert dict(expected, grad="torch.float32") == c["mixed precision bf16"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "parallel, optimizer, placements, parameters, atol",
    [
        ("fsdp", "sgd", {"Shard(dim=0)"}, 4, 1e-15),
        ("fsdp", "adamw", {"Shard(dim=0)"}, 4, 1e-15),
        # a Transformer block: attention and LayerNorm reduce in another order over two half
        # batches, and Adam's 1/√v magnifies it (~1e-11 of parameters of ~1)
        ("block", "adamw", {"Shard(dim=0)"}, 12, 1e-10),
        ("block", "sgd", {"Shard(dim=0)"}, 12, 1e-12),
        ("tp", "adamw", {"Shard(dim=0)", "Shard(dim=1)", "Replicate()"}, 4, 1e-15),  # Colwise then Rowwise
    ],
)
def test_a_traced_sharded_run_assembles_to_the_single_process_run_and_every_update_matches(
    tmp_path, parallel, optimizer, placements, parameters, atol
):
    """2 ranks train ``fully_shard`` layers with gradient accumulation, or a tensor-parallel
    MLP, under ``tracer.trace`` (tests/_fsdp2_traced.py); rank 0 also trains the same model
    on one process on the same global batch."""
    import numpy as np

    import tracer

    done = subprocess.run(
        [sys.executable, str(HERE / "_fsdp2_traced.py"), str(tmp_path), optimizer, parallel], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    errors = sorted(tmp_path.glob("error-*.txt"))
    assert not errors, errors[0].read_text()
    assert 0 == done.returncode, done.stderr[-3000:]
    for rank in (0, 1):  # training is bit-identical with and without tracing, on every rank
        traced, plain = (torch.load(tmp_path / f"params-{rank}-{k}.pt") for k in ("traced", "plain"))
        assert all(torch.equal(traced[k], plain[k]) for k in plain)
    raw = tracer.load(tmp_path / "traced", kind=["grad", "param", "update", "state"])
    sharded = raw[raw["kind"] != "state"]
    assert set(sharded["placements"]) == placements and set(raw["rank"]) == {0, 1}
    assert "tracer skipped" not in done.stderr  # every tensor was readable (a pending collective's too)
    activations = tracer.load(tmp_path / "traced", kind="activation", step=0)
    assert "" in set(activations["name"])  # the root's output too (under TP a pending collective's)
    assert len(set(sharded["name"])) == parameters and not any("fsdp" in n for n in sharded["name"])
    whole = tracer.load(tmp_path / "traced", kind=["grad", "param", "update"], assemble=True)
    single = tracer.load(tmp_path / "single", kind=["grad", "param", "update"])
    key = ["step", "kind", "name", "call"]
    assert len(whole) == len(single) == 3 * 3 * parameters  # one row per tensor: the shards combined
    merged = whole.merge(single, on=key, suffixes=("", "_single"))
    assert len(merged) == len(single)
    for row in merged.itertuples():  # the same global batch: equal to float64 rounding
        np.testing.assert_allclose(row.values, row.values_single, rtol=1e-13, atol=atol)
        assert list(row.shape) == list(row.shape_single)
    updates = raw[raw["kind"] == "update"]
    assert updates["rule_matches"].eq(True).all()  # verify=True, shard by shard
    report = tracer.report(tmp_path / "traced")
    assert {"matched": 3 * parameters, "differ": 0, "unchecked": 0} == report.counts, report.summary()


@pytest.mark.slow
def test_a_traced_fsdp2_run_under_a_bf16_policy_says_what_really_flowed(tmp_path):
    """``MixedPrecisionPolicy(param_dtype=torch.bfloat16)``: the forward computes in bf16, the
    optimizer keeps float32 shards (tests/_fsdp2_traced.py ... mixed)."""
    import tracer

    done = subprocess.run(
        [sys.executable, str(HERE / "_fsdp2_traced.py"), str(tmp_path), "adamw", "mixed"], capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    errors = sorted(tmp_path.glob("error-*.txt"))
    assert not errors, errors[0].read_text()
    assert 0 == done.returncode, done.stderr[-3000:]
    for rank in (0, 1):
        traced, plain = (torch.load(tmp_path / f"params-{rank}-{k}.pt") for k in ("traced", "plain"))
        assert all(torch.equal(traced[k], plain[k]) for k in plain)
    raw = tracer.load(tmp_path / "traced")
    dtypes = {kind: set(rows["dtype"]) for kind, rows in raw.groupby("kind")}
    assert dtypes["activation"] == dtypes["activation_grad"] == {"bfloat16"}  # what the forward computed in
    assert dtypes["grad"] == dtypes["param"] == dtypes["state"] == {"float32"}  # the sharded, reduced ones
    assert dtypes["update"] == {"float64"}  # after − before, exactly
    assert raw.loc[raw["kind"] == "update", "rule_matches"].eq(True).all()
    assert {"matched": 12, "differ": 0, "unchecked": 0} == tracer.report(tmp_path / "traced").counts
