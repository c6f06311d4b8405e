"""The reference example, traced: every kind of row holds the walkthrough's numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

import tracer


def _values(df: pd.DataFrame, kind: str, name: str) -> list[float]:
    rows = df[(df.kind == kind) & (df.name == name)]
    assert 1 == len(rows), rows
    return rows.iloc[0]["values"].tolist()


def test_reference_example_every_kind(reference_trace):
    df = tracer.load(reference_trace)
    assert [1.0, 2.0] == _values(df, "input", "")
    assert [3.0] == _values(df, "activation", "")  # prediction 1·1 + 1·2 + 0
    assert [25.0] == _values(df, "loss", "loss")  # (3 − 8)²
    assert [-10.0] == _values(df, "activation_grad", "")  # 2·(3 − 8)
    assert [-10.0, -20.0] == _values(df, "grad", "weight")
    assert [-10.0] == _values(df, "grad", "bias")
    assert [1.0, 1.0] == _values(df, "param", "weight")
    assert [0.0] == _values(df, "param", "bias")
    new_w = np.add(_values(df, "param", "weight"), _values(df, "update", "weight"))
    new_b = np.add(_values(df, "param", "bias"), _values(df, "update", "bias"))
    assert [1.1, 1.2] == new_w.tolist()
    assert [0.1] == new_b.tolist()
    assert [] == df[df.kind == "state"].name.tolist()  # plain SGD has no state


def test_reference_example_columns_and_types(reference_trace):
    df = tracer.load(reference_trace)
    expected = [
        "step", "seq", "kind", "name", "call", "part", "module_type", "shape", "dtype", "numel",
        "mean", "std", "min", "max", "norm", "nonfinite", "values", "rank", "grad_enabled",
        "optimizer", "param_group", "hparams", "rule_error", "rule_matches", "global_shape",
        "shard_offset", "placements",
    ]  # fmt: skip
    assert expected == list(df.columns)
    for column in ("rule_error", "rule_matches", "global_shape", "shard_offset", "placements"):
        assert df[column].isna().all(), column  # no verify, no sharding
    for column in ("step", "seq", "call", "numel", "rank"):
        assert "int64" == str(df[column].dtype), column
    assert {0} == set(df.step)
    grad_w = df[(df.kind == "grad") & (df.name == "weight")].iloc[0]
    assert [1, 2] == grad_w["shape"].tolist()
    assert "float64" == grad_w["dtype"]
    assert "Linear" == grad_w["module_type"]
    assert "SGD" == grad_w["optimizer"]
    assert 0 == grad_w["param_group"]
    assert 0.01 == json.loads(grad_w["hparams"])["lr"]
    assert (-15.0, 5.0, -20.0, -10.0) == (grad_w["mean"], grad_w["std"], grad_w["min"], grad_w["max"])
    assert pytest.approx(500**0.5, rel=1e-15) == grad_w["norm"]
    assert 0 == grad_w["nonfinite"]


def test_rows_are_in_training_order(reference_trace):
    df = tracer.load(reference_trace)
    assert list(range(len(df))) == df.seq.tolist()
    order = df.drop_duplicates("kind").kind.tolist()
    assert ["input", "activation", "loss", "activation_grad", "grad", "param", "update"] == order


def test_pandas_pyarrow_duckdb_read_the_same_rows(reference_trace):
    duckdb = pytest.importorskip("duckdb")
    ours = tracer.load(reference_trace).sort_values("seq").reset_index(drop=True)
    by_pandas = pd.read_parquet(reference_trace).sort_values("seq").reset_index(drop=True)
    by_arrow = pads.dataset(reference_trace, format="parquet").to_table().to_pandas()
    by_duck = duckdb.sql(f"SELECT * FROM read_parquet('{reference_trace}/**/*.parquet') ORDER BY seq").df()
    for other in (by_pandas, by_arrow.sort_values("seq").reset_index(drop=True), by_duck):
        assert ours.kind.tolist() == other.kind.tolist()
        assert ours.name.tolist() == other.name.tolist()
        assert [list(v) for v in ours["values"]] == [list(v) for v in other["values"]]


def test_duckdb_recipe_gradient_norm_per_layer(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    from _reference import make_reference, train_reference

    model, x, y, loss_fn, optimizer = make_reference()
    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_reference(model, x, y, loss_fn, optimizer, steps=3)
    rows = duckdb.sql(
        f"SELECT step, name, norm FROM read_parquet('{run.path}/**/*.parquet') WHERE kind = 'grad' ORDER BY step, name"
    ).fetchall()
    assert [0, 0, 1, 1, 2, 2] == [r[0] for r in rows]
    assert pytest.approx(10.0) == rows[0][2]  # bias at step 0
