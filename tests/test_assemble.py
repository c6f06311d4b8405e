"""Shard rows assembled into whole tensors: values placed, replicas deduplicated, statistics
combined exactly from the shards' statistics (tracer._assemble)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tracer._assemble import assemble, combine_stats
from tracer._stats import _numpy_stats

COLUMNS = (
    "step", "seq", "kind", "name", "call", "part", "shape", "dtype", "numel", "mean", "std", "min", "max",
    "norm", "nonfinite", "values", "rank", "global_shape", "shard_offset", "placements", "rule_error", "rule_matches",
)  # fmt: skip


def shard_row(full, offset, shape, rank, *, keep=True, name="w", kind="grad", placements="Shard(dim=0)", step=0):
    """The row a rank writes for the block of ``full`` at ``offset`` of ``shape``."""
    block = full[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
    flat = np.ascontiguousarray(block).reshape(-1)
    mean, std, lo, hi, norm, nonfinite = _numpy_stats(np.abs(flat) if np.iscomplexobj(flat) else flat)
    return dict(
        step=step, seq=rank * 100, kind=kind, name=name, call=0, part="", shape=list(shape),
        dtype="complex128" if np.iscomplexobj(full) else "float64", numel=flat.size, mean=mean, std=std,
        min=lo, max=hi, norm=norm, nonfinite=nonfinite, values=flat if keep else None, rank=rank,
        global_shape=list(full.shape), shard_offset=list(offset), placements=placements,
        rule_error=None, rule_matches=None,
    )  # fmt: skip


def frame(rows):
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["nonfinite"] = df["nonfinite"].astype("Int64")
    return df


def whole_stats(full):
    flat = full.reshape(-1)
    return _numpy_stats(np.abs(flat) if np.iscomplexobj(flat) else flat)


def test_uneven_dim0_shards_give_the_full_values_and_exact_statistics():
    full = np.arange(15, dtype=np.float64).reshape(5, 3) - 4.0  # integers: every statistic is exact
    df = frame([shard_row(full, (3, 0), (2, 3), 1), shard_row(full, (0, 0), (3, 3), 0)])
    out = assemble(df)
    assert 1 == len(out)
    row = out.iloc[0]
    assert full.reshape(-1).tolist() == row["values"].tolist()
    assert [5, 3] == list(row["shape"]) and 15 == row["numel"] and [0, 0] == row["shard_offset"]
    assert pd.isna(row["rank"]) and 0 == row["seq"]  # two ranks combined; other columns from rank 0
    assert "Shard(dim=0)" == row["placements"] and [5, 3] == list(row["global_shape"])
    mean, std, lo, hi, norm, nonfinite = whole_stats(full)
    assert (mean, lo, hi, nonfinite) == (row["mean"], row["min"], row["max"], row["nonfinite"])
    assert std == pytest.approx(row["std"], rel=1e-15) and norm == pytest.approx(row["norm"], rel=1e-15)
    assert "Int64" == str(out["rank"].dtype)


def test_random_statistics_combine_to_numpy_on_the_concatenation_in_float64():
    rng = np.random.default_rng(0)
    full = rng.normal(3.0, 1e-3, size=(7, 4, 2))  # a mean that dominates: the naive formula loses digits
    boxes = [((0, 0, 0), (4, 2, 2)), ((0, 2, 0), (4, 2, 2)), ((4, 0, 0), (3, 2, 2)), ((4, 2, 0), (3, 2, 2))]
    rows = [
        shard_row(full, o, s, r, keep=False, placements="Shard(dim=0), Shard(dim=1)") for r, (o, s) in enumerate(boxes)
    ]
    row = assemble(frame(rows)).iloc[0]
    assert row["values"] is None  # statistics only
    flat = full.reshape(-1)
    assert flat.mean() == pytest.approx(row["mean"], rel=1e-15, abs=0)
    assert flat.std() == pytest.approx(row["std"], rel=1e-9)  # std of the shards: float64 rounding of ~1e-3
    assert (flat.min(), flat.max()) == (row["min"], row["max"])
    assert math.sqrt(np.dot(flat, flat)) == pytest.approx(row["norm"], rel=1e-15)


def test_combine_stats_matches_the_definition_with_nan_inf_and_empty_parts():
    parts = [np.array([1.0, np.inf]), np.array([], dtype=np.float64), np.array([2.0, -1.0])]
    given = [(p.size, *_numpy_stats(p)) for p in parts if p.size] + [(0, None, None, None, None, 0.0, 0)]
    mean, std, lo, hi, norm, nonfinite = combine_stats(given)
    assert (math.inf, -1.0, math.inf, math.inf, 1) == (mean, lo, hi, norm, nonfinite)
    assert math.isnan(std)
    assert (None, None, None, None, 0.0, 0) == combine_stats([(0, None, None, None, None, 0.0, 0)])


def test_replicated_copies_are_kept_once_and_rank_stays_when_one_rank_wrote_all():
    full = np.array([[1.0, 2.0], [3.0, 4.0]])
    rows = [shard_row(full, (0, 0), (2, 2), r, placements="Replicate()") for r in (1, 0)]
    row = assemble(frame(rows)).iloc[0]
    assert [1.0, 2.0, 3.0, 4.0] == row["values"].tolist() and 2.5 == row["mean"]
    assert pd.isna(row["rank"])
    alone = assemble(frame([shard_row(full, (0, 0), (2, 2), 1, placements="Replicate()")])).iloc[0]
    assert 1 == alone["rank"] and [1.0, 2.0, 3.0, 4.0] == alone["values"].tolist()


def test_a_two_dimensional_mesh_with_a_replicated_dimension_is_deduplicated():
    full = np.arange(8, dtype=np.float64).reshape(4, 2)
    rows = [
        shard_row(full, (0, 0), (2, 2), 0, placements="Shard(dim=0), Replicate()"),
        shard_row(full, (0, 0), (2, 2), 1, placements="Shard(dim=0), Replicate()"),
        shard_row(full, (2, 0), (2, 2), 2, placements="Shard(dim=0), Replicate()"),
        shard_row(full, (2, 0), (2, 2), 3, placements="Shard(dim=0), Replicate()"),
    ]
    row = assemble(frame(rows)).iloc[0]
    assert list(range(8)) == row["values"].tolist() and 3.5 == row["mean"] and 8 == row["numel"]


def test_replicas_that_disagree_warn_and_leave_no_values_or_statistics():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 2.5])
    rows = [
        shard_row(a, (0,), (2,), 0, placements="Replicate()"),
        shard_row(b, (0,), (2,), 1, placements="Replicate()"),
    ]
    with pytest.warns(UserWarning, match=r"differ between ranks 0 and 1 \(largest difference 0.5\)"):
        row = assemble(frame(rows)).iloc[0]
    assert row["values"] is None and pd.isna(row["mean"]) and pd.isna(row["norm"])
    rows = [dict(r, values=None) for r in rows]  # statistics only: compared by their statistics
    with pytest.warns(UserWarning, match="differ between ranks 0 and 1 \\(statistics"):
        assert pd.isna(assemble(frame(rows)).iloc[0]["mean"])


def test_missing_or_overlapping_shards_give_no_values_or_statistics():
    full = np.arange(6, dtype=np.float64)
    only_rank0 = assemble(frame([shard_row(full, (0,), (3,), 0)])).iloc[0]
    assert only_rank0["values"] is None and pd.isna(only_rank0["mean"]) and 6 == only_rank0["numel"]
    overlap = [shard_row(full, (0,), (4,), 0), shard_row(full, (2,), (2,), 1)]  # 6 elements, 2 of them twice
    assert pd.isna(assemble(frame(overlap)).iloc[0]["mean"])


def test_an_empty_shard_contributes_nothing():
    full = np.array([[5.0, -1.0]])
    rows = [shard_row(full, (0, 0), (1, 2), 0), shard_row(full, (1, 0), (0, 2), 1)]  # torch: offset = dim size
    row = assemble(frame(rows)).iloc[0]
    assert [5.0, -1.0] == row["values"].tolist() and (2.0, 3.0) == (row["mean"], row["std"])


def test_a_shard_without_values_keeps_the_statistics_but_not_the_values():
    full = np.arange(4, dtype=np.float64)
    row = assemble(frame([shard_row(full, (0,), (2,), 0), shard_row(full, (2,), (2,), 1, keep=False)])).iloc[0]
    assert row["values"] is None and 1.5 == row["mean"] and 3.0 == row["max"]


def test_complex_shards_are_placed_and_their_statistics_are_of_the_magnitude():
    full = np.array([3 + 4j, 1j, -2.0 + 0j])
    row = assemble(frame([shard_row(full, (0,), (2,), 0), shard_row(full, (2,), (1,), 1)])).iloc[0]
    assert full.tolist() == row["values"].tolist()
    assert (8 / 3, 1.0, 5.0) == pytest.approx((row["mean"], row["min"], row["max"]), rel=1e-15)


def test_partial_addends_are_summed_from_values_and_otherwise_not_assembled():
    a, b = np.array([1.0, 2.0]), np.array([10.0, 20.0])
    rows = [
        shard_row(a, (0,), (2,), 0, placements="Partial(sum)"),
        shard_row(b, (0,), (2,), 1, placements="Partial(sum)"),
    ]
    row = assemble(frame(rows)).iloc[0]
    assert [11.0, 22.0] == row["values"].tolist() and 16.5 == row["mean"]
    no_values = assemble(frame([dict(r, values=None) for r in rows])).iloc[0]
    assert no_values["values"] is None and pd.isna(no_values["mean"])


def test_plain_rows_pass_through_in_order_and_groups_stay_apart():
    full = np.arange(4, dtype=np.float64)
    loss = dict(shard_row(np.array([0.5]), (0,), (1,), 0, kind="loss", name="loss"))
    loss.update(global_shape=None, shard_offset=None, placements=None)
    rows = [
        loss,
        shard_row(full, (0,), (2,), 0, kind="param"),
        shard_row(full * 2, (0,), (2,), 0, step=1),
        shard_row(full, (2,), (2,), 1, kind="param"),
        shard_row(full * 2, (2,), (2,), 1, step=1),
        dict(loss, rank=1, seq=101),
    ]
    out = assemble(frame(rows))
    assert [("loss", 0, 0), ("param", 0, None), ("grad", 1, None), ("loss", 0, 1)] == [
        (k, s, None if pd.isna(r) else r) for k, s, r in zip(out["kind"], out["step"], out["rank"])
    ]
    assert [0.0, 2.0, 4.0, 6.0] == out.iloc[2]["values"].tolist()


def test_verify_columns_combine_shard_by_shard():
    full = np.arange(4, dtype=np.float64)
    rows = [shard_row(full, (0,), (2,), 0, kind="update"), shard_row(full, (2,), (2,), 1, kind="update")]
    rows[0].update(rule_error=1e-9, rule_matches=True)
    rows[1].update(rule_error=2e-9, rule_matches=True)
    row = assemble(frame(rows)).iloc[0]
    assert (2e-9, True) == (row["rule_error"], row["rule_matches"])
    rows[1].update(rule_matches=False)
    assert [False] == assemble(frame(rows))["rule_matches"].tolist()
    rows[1].update(rule_error=None, rule_matches=None)
    assert assemble(frame(rows)).iloc[0]["rule_matches"] is None


def test_frames_without_shard_columns_are_returned_as_they_are_and_missing_columns_are_named():
    df = pd.DataFrame({"step": [0], "kind": ["loss"]})
    assert df is assemble(df)
    full = np.arange(2, dtype=np.float64)
    with pytest.raises(ValueError, match=r"needs the columns \['norm'\]"):
        assemble(frame([shard_row(full, (0,), (2,), 0)]).drop(columns=["norm"]))


def test_a_frame_as_tracer_load_converts_it_from_arrow_is_assembled():
    import pyarrow as pa

    from tracer._load import to_frame
    from tracer._schema import SCHEMA

    full = np.arange(10, dtype=np.float64).reshape(5, 2)
    rows = [shard_row(full, (0, 0), (3, 2), 0), shard_row(full, (3, 0), (2, 2), 1)]
    for r in rows:
        r.update(module_type="Linear", grad_enabled=None, optimizer="SGD", param_group=0, hparams="{}")
        r["values"] = r["values"].tolist()
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    loaded = to_frame(table)
    row = assemble(loaded).iloc[0]
    assert full.reshape(-1).tolist() == row["values"].tolist() and 4.5 == row["mean"]
    assert pd.isna(row["rank"]) and "Linear" == row["module_type"] and [5, 2] == list(row["shape"])


def test_load_assembles_shard_rows_on_a_trace_file(tmp_path, reference_trace):
    """``tracer.load(path, assemble=True)`` on shard rows written to a real trace directory."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    import tracer
    from tracer._schema import SCHEMA

    path = tmp_path / "sharded"
    shutil.copytree(reference_trace, path)
    plain = tracer.load(path)
    full = np.arange(15, dtype=np.float64).reshape(5, 3) - 4.0
    shards = frame([shard_row(full, (0, 0), (3, 3), 0, step=0), shard_row(full, (3, 0), (2, 3), 1, step=0)])
    shards["seq"] = [1000, 1001]
    for column in SCHEMA.names:
        if column not in shards:
            shards[column] = None
    shards["module_type"], shards["rank"] = "Linear", [0, 1]
    table = pa.Table.from_pandas(shards[list(SCHEMA.names)].astype({"nonfinite": "float64"}), preserve_index=False)
    pq.write_table(
        table.cast(SCHEMA).replace_schema_metadata(SCHEMA.metadata), path / "part-00001-0a1b2c3d-000000.parquet"
    )
    raw = tracer.load(path)
    assert len(raw) == len(plain) + 2  # one row per rank, as written
    together = tracer.load(path, assemble=True)
    assert len(together) == len(plain) + 1
    whole = together[together["name"] == "w"].iloc[0]
    assert full.reshape(-1).tolist() == whole["values"].tolist() and pd.isna(whole["rank"])
    assert tracer.load(path, kind="grad", name="w", columns=["step", "norm"], assemble=True)["norm"].tolist() == [
        pytest.approx(math.sqrt((full**2).sum()), rel=1e-15)
    ]
    unsharded = tracer.load(reference_trace, assemble=True)  # nothing to combine: the same rows
    assert plain.drop(columns=["values"]).equals(unsharded.drop(columns=["values"]))
    with pytest.raises(TypeError, match="assemble must be True or False"):
        tracer.load(path, assemble="yes")
