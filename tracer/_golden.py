"""Golden traces: a small trace kept in the user's repository, compared against in tests.

A golden trace is an ordinary trace directory (``tracer.load`` reads it) holding only the
rows chosen (kinds, names, steps), with values kept for small tensors only.
``pytest --tracer-update-golden`` (or ``TRACER_UPDATE_GOLDEN=1``) rewrites it instead of
comparing, as snapshot-testing tools do.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracer._diff import check_kinds, compare, frame
from tracer._schema import COLUMNS
from tracer._trace import NameFilter, OptimizerMeta, StepFilter, Trace, TraceLike

if TYPE_CHECKING:
    import pandas

DEFAULT_GOLDEN_MAX_VALUES = 64
"""Tensors with more elements are kept in a golden trace as statistics only."""

UPDATE_ENV = "TRACER_UPDATE_GOLDEN"
UPDATE_OPTION = "--tracer-update-golden"
_FILE = "part-00000-golden-000000.parquet"
_HOW_TO_UPDATE = (
    f"If the change is intended, rewrite the golden trace: pytest {UPDATE_OPTION} "
    f"(or {UPDATE_ENV}=1), then review and commit it."
)


def assert_matches_golden(
    trace: TraceLike,
    golden_dir: str | os.PathLike[str],
    *,
    kinds: str | Iterable[str] | None = None,
    names: NameFilter = None,
    steps: StepFilter = None,
    max_values: int | None = DEFAULT_GOLDEN_MAX_VALUES,
    rtol: float | None = None,
    atol: float | None = None,
    update: bool | None = None,
) -> None:
    """Assert ``trace`` matches the golden trace in ``golden_dir`` (or rewrite it in update mode).

    Only the rows chosen by ``kinds``/``names``/``steps`` are stored and compared; tensors
    with more than ``max_values`` elements are kept as statistics only, so golden traces
    stay small enough to commit.

    Example::

        GOLDEN = Path(__file__).parent / "golden" / "first_steps"

        def test_first_steps(traced):
            with traced(model, optimizer) as run:
                train(model, optimizer, steps=3)
            assert_matches_golden(run, GOLDEN, kinds=["loss", "grad", "update"])

    Create or refresh the golden trace with ``pytest --tracer-update-golden``.

    Args:
        trace: a trace path, a ``run``, a DataFrame from ``tracer.load`` or a Trace.
        golden_dir: the golden trace's directory (keep it next to the test).
        kinds, names, steps: the rows to keep and compare (as in ``tracer.load``).
        max_values: larger tensors are stored as statistics only; None keeps every value.
        rtol, atol: as in ``tracer.diff``.
        update: rewrite instead of compare; default: the pytest option or ``$TRACER_UPDATE_GOLDEN``.

    Raises:
        AssertionError: no golden trace yet, or the first divergence from it.
    """
    __tracebackhide__ = True
    golden = Path(golden_dir)
    wanted = check_kinds(kinds)
    bad_limit = isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 0
    if max_values is not None and bad_limit:
        raise ValueError(f"max_values must be an int >= 0 or None (got {max_values!r})")
    selection = _selection(wanted, names, steps, max_values)
    from_option = update is None
    if from_option:
        update = update_requested()
    from tracer._directory import is_trace

    trace = Trace.open(trace)
    existed = is_trace(golden)
    # the whole trace goes to compare (filtered there): update rows are judged at the
    # precision of their parameters, which the chosen rows may not include
    chosen: dict[str, Any] = {"kinds": wanted, "name": names, "step": steps, "labels": ("golden", "trace")}
    if update:
        stored = _open_golden(golden) if existed else None
        unchanged = (
            stored is not None
            and stored.meta.golden == selection
            and compare(stored, trace, rtol=rtol, atol=atol, **chosen) is None
        )
        if unchanged:
            return
        rows = frame(trace, kind=wanted, name=names, step=steps, columns=COLUMNS)
        write_golden(rows, golden, selection=selection, source=trace)
        if from_option:
            _record(golden, "updated" if existed else "created")
        return
    if not existed:
        raise AssertionError(
            f"no golden trace at {str(golden)!r} yet: create it with pytest {UPDATE_OPTION} "
            f"(or {UPDATE_ENV}=1), then review and commit it"
        )
    found = compare(golden, trace, rtol=rtol, atol=atol, **chosen)
    if found is not None:
        raise AssertionError(f"trace does not match the golden trace {str(golden)!r}!\n\n{found}\n\n{_HOW_TO_UPDATE}")


def update_requested() -> bool:
    """True when golden traces should be rewritten: the pytest option or ``$TRACER_UPDATE_GOLDEN``."""
    if os.environ.get(UPDATE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    plugin = sys.modules.get("tracer._pytest_plugin")  # imported only by pytest itself
    return bool(plugin is not None and plugin.update_golden())


def _record(golden: Path, action: str) -> None:
    plugin = sys.modules.get("tracer._pytest_plugin")
    if plugin is not None:
        plugin.golden_written(golden, action)


def _selection(kinds: list[str] | None, names: Any, steps: Any, max_values: int | None) -> dict[str, Any]:
    """The choice of rows, as JSON: stored with the golden trace, so a changed choice rewrites it."""
    if isinstance(steps, slice):
        steps = {"start": steps.start, "stop": steps.stop, "step": steps.step}
    elif steps is not None and not isinstance(steps, int):
        steps = [int(s) for s in steps]
    return json.loads(
        json.dumps(
            {
                "kinds": kinds,
                "names": [names] if isinstance(names, str) else (list(names) if names is not None else None),
                "steps": steps,
                "max_values": max_values,
            }
        )
    )


def _open_golden(golden: Path) -> Trace | None:
    """The golden trace, opened (None when it cannot be read: it is then rewritten or reported)."""
    try:
        return Trace.open(golden)
    except (OSError, ValueError):
        return None


def write_golden(
    rows: pandas.DataFrame, golden: Path, *, selection: dict[str, Any], source: Trace | None = None
) -> None:
    """Write ``rows`` as a one-file trace in ``golden``; only files a trace owns are replaced."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tracer._directory import has_tracer_footer, write_json_atomic
    from tracer._load import stored_values
    from tracer._schema import META_FILE, SCHEMA, SCHEMA_VERSION

    limit = selection["max_values"]
    rows = rows[list(COLUMNS)].copy()
    big = rows["numel"].to_numpy() > limit if limit is not None else np.zeros(len(rows), dtype=bool)
    rows["values"] = [None if b else stored_values(v) for b, v in zip(big, rows["values"])]
    table = pa.Table.from_pandas(rows, schema=SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata(SCHEMA.metadata)
    if golden.exists() and not golden.is_dir():
        raise FileExistsError(f"golden trace path {str(golden)!r} is a file; pass a directory path")
    golden.mkdir(parents=True, exist_ok=True)
    tmp = golden / ".golden-writing.tmp"  # matches no pattern deleted below
    pq.write_table(table, tmp, compression="zstd")
    olds = [old for old in golden.glob("part-*.parquet") if old.name != _FILE]
    foreign = [old.name for old in olds if not has_tracer_footer(old)]
    if foreign:  # someone else's Parquet files (Spark's, pyarrow's): never deleted
        tmp.unlink()
        raise FileExistsError(
            f"golden trace directory {str(golden)!r} holds Parquet files that tracer did not write "
            f"({', '.join(sorted(foreign)[:3])}); choose another directory"
        )
    for old in [*olds, *golden.glob(".part-*.tmp")]:
        old.unlink()
    os.replace(tmp, golden / _FILE)
    meta = {
        "format": "tracer",
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "golden": selection,
        "steps": sorted({int(s) for s in rows["step"]}),
        **_source_meta(source),
    }
    write_json_atomic(golden / META_FILE, meta)


def _source_meta(source: Trace | None) -> dict[str, Any]:
    """Model and optimizer names of the traced run (no timestamps: the file stays stable)."""
    if source is None:
        return {}
    out: dict[str, Any] = {}
    if source.meta.model is not None:
        out["model"] = source.meta.model
    if source.meta.optimizers:
        out["optimizers"] = [_optimizer_json(o) for o in source.meta.optimizers]
    return out


def _optimizer_json(optimizer: OptimizerMeta) -> dict[str, Any]:
    """An optimizer as ``_tracer.json`` writes it."""
    out: dict[str, Any] = {"class": optimizer.cls, "qualname": optimizer.qualname, "bases": list(optimizer.bases)}
    if optimizer.adopted:
        out["adopted"] = True
    return out
