"""``tracer.diff``: the first place two traces part ways, in training order.

Each trace is opened once (:meth:`tracer.Trace.open`) and read once, with the filters
pushed into the Parquet reader. The tolerances are those of every comparison in tracer
(:mod:`tracer._tolerances`); the answer is a :class:`~tracer._divergence.Divergence`.

>>> d = diff("traces/before", "traces/after", kinds=["loss", "grad"])  # doctest: +SKIP
>>> print(d)                                                          # doctest: +SKIP
traces diverge at step 3: grad 'fc.weight' call 0: values differ at index (0, 1): ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tracer._divergence import (
    EXACT_STATS,
    Divergence,
    describe,
    flat_to_index,
    missing_note,
)
from tracer._run_hparams import HparamChange, first_change
from tracer._tolerances import close, tolerances
from tracer._trace import KindFilter, NameFilter, StepFilter, Trace, TraceLike
from tracer._trace import check_kinds as _check_kinds

if TYPE_CHECKING:
    import pandas

__all__ = ["KEY", "STATS", "Divergence", "HparamDivergence", "check_kinds", "close", "compare", "describe", "diff",
           "flat_to_index", "frame", "tolerances"]  # fmt: skip

_STORED_KEY = ("step", "rank", "kind", "name", "call", "part")
KEY = (*_STORED_KEY, "evaluation")
"""What identifies a row: two traces are compared row by row on these. ``evaluation``
(``grad_enabled`` false: a forward pass under ``torch.no_grad()``/``inference_mode``)
is derived: evaluation passes number their calls apart from training ones, so a training
row is never compared with an evaluation row."""

STATS = ("numel", "mean", "std", "min", "max", "norm", "nonfinite")
"""Compared when a row's values are not stored in both traces (``nonfinite`` and ``numel`` exactly)."""

_DIFF_COLUMNS = (*_STORED_KEY, "grad_enabled", "seq", "shape", "dtype", *STATS, "values")


def frame(
    trace: TraceLike,
    *,
    kind: KindFilter = None,
    name: NameFilter = None,
    step: StepFilter = None,
    columns: Sequence[str] | None = None,
) -> pandas.DataFrame:
    """The rows of ``trace``, filtered as ``tracer.load`` filters, in training order.

    Example::

        grads = frame(tracer.open("traces/run1"), kind="grad", columns=["step", "name", "values"])

    Raises:
        ValueError: ``trace`` is a DataFrame that lacks one of the ``columns``.
    """
    opened = Trace.open(trace)
    rows = opened.rows(kind=kind, name=name, step=step, columns=columns)
    missing = [c for c in columns or () if c not in rows.columns]
    if missing:
        raise ValueError(
            f"the DataFrame lacks the trace column(s) {missing}; pass the DataFrame that "
            "tracer.load(path) returns, with all its columns"
        )
    return rows


def check_kinds(kinds: KindFilter) -> list[str] | None:
    """``kinds`` as a list, or None for all; an unknown kind is a ValueError."""
    _check_kinds(kinds)
    if kinds is None:
        return None
    return [kinds] if isinstance(kinds, str) else list(kinds)


# --------------------------------------------------------------------------- diff


@dataclasses.dataclass(frozen=True)
class HparamDivergence(Divergence):
    """Two traces whose hyper-parameters differ (a changed learning rate, ...) at ``step``,
    before or at the first value that differs (``then``, None when no value does).

    ``field`` is ``"hparams"``; ``kind``, ``name`` are the first ``update`` row of that
    param group; ``a`` and ``b`` are the first differing hyper-parameter's values.
    """

    change: HparamChange | None = dataclasses.field(default=None, repr=False)
    then: Divergence | None = dataclasses.field(default=None, repr=False)

    def __str__(self) -> str:
        assert self.change is not None
        lines = [f"traces diverge at step {self.step}: {self.change.text(self.labels)}"]
        if self.then is None:
            lines.append("  no value differs beyond the tolerances")
        else:
            lines.append("  the first value that differs:")
            lines += ["    " + line for line in str(self.then).splitlines()]
        return "\n".join(lines)


def diff(
    a: TraceLike,
    b: TraceLike,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    kinds: KindFilter = None,
    hparams: bool = True,
) -> Divergence | None:
    """The first divergence between two traces in training order, or None when they are close.

    Hyper-parameters first: where a param group's hyper-parameters (``lr``, ``momentum``,
    ...) differ at a step no later than the first differing value, that is the divergence
    (a :class:`HparamDivergence` that names the first differing value too). Then rows are
    matched on (step, rank, kind, name, call, part) and visited in training order: by step,
    then in the order the events happened in that step. Values are compared where both
    traces store them, otherwise the statistics are. A row that is in one trace only (a
    missing step, a renamed parameter) is a divergence too.

    Example::

        d = tracer.diff("traces/before", "traces/after", kinds=["loss", "grad"])
        if d is not None:
            print(d)          # traces diverge at step 3: grad 'fc.weight' call 0: ...

    Args:
        a, b: traces: paths, ``Run`` objects, DataFrames from ``tracer.load`` or Traces.
        rtol, atol: tolerances as in ``torch.testing.assert_close``; by default that
            function's defaults for each row's dtype (for ``update`` rows, the parameter's).
        kinds: compare only these kinds (default: all; hyper-parameters are compared when
            ``update`` is one of them).
        hparams: compare the hyper-parameters (default); False: the rows only.

    Raises:
        TraceFormatError: a path is not a readable trace.
        ValueError: an unknown kind.
    """
    wanted = check_kinds(kinds)
    a, b = Trace.open(a), Trace.open(b)
    found = compare(a, b, rtol=rtol, atol=atol, kinds=wanted)
    if not hparams or (wanted is not None and "update" not in wanted):
        return found
    change = first_change(a, b)
    if change is None or (found is not None and found.step < change.step):
        return found
    key, va, vb = change.differ[0]
    return HparamDivergence(
        step=change.step, kind="update", name=change.name, call=0, part="", field="hparams", index=None,
        a=va, b=vb, later=0 if found is None else found.later + 1, change=change, then=found,
    )  # fmt: skip


def compare(
    a: TraceLike,
    b: TraceLike,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    kinds: KindFilter = None,
    name: NameFilter = None,
    step: StepFilter = None,
    labels: tuple[str, str] = ("a", "b"),
) -> Divergence | None:
    """:func:`diff` with row filters and labels for the two traces (golden traces use them).

    Example::

        compare(golden, run, kinds=["loss"], step=slice(0, 3), labels=("golden", "trace"))
    """
    wanted = check_kinds(kinds)
    a, b = Trace.open(a), Trace.open(b)
    fa = frame(a, kind=wanted, name=name, step=step, columns=_DIFF_COLUMNS)
    fb = frame(b, kind=wanted, name=name, step=step, columns=_DIFF_COLUMNS)
    if fa.empty and fb.empty:
        return None
    merged = _merge(fa, fb)
    rtols, atols = _row_tolerances(merged, a, b, fa, fb, rtol, atol)
    differs = _differs(merged, rtols, atols)
    bad = np.flatnonzero(differs)
    if not bad.size:
        return None
    first = int(bad[0])
    row = merged.iloc[first]
    return _divergence(row, float(rtols[first]), float(atols[first]), int(bad.size - 1), fa, fb, labels)


def _merge(fa: pandas.DataFrame, fb: pandas.DataFrame) -> pandas.DataFrame:
    import pandas as pd

    def prepared(f: pandas.DataFrame) -> pandas.DataFrame:
        f = f.copy()
        f["evaluation"] = f["grad_enabled"].eq(False).fillna(False).astype(bool)
        f["order"] = f.groupby("step", sort=False).cumcount()  # f is in training order
        f["dup"] = f.groupby(list(KEY), sort=False).cumcount()
        return f

    merged = pd.merge(prepared(fa), prepared(fb), on=[*KEY, "dup"], how="outer", suffixes=("_a", "_b"), indicator=True)
    merged["order"] = merged["order_a"].fillna(merged["order_b"])
    merged["b_only"] = merged["_merge"] == "right_only"
    merged = merged.sort_values(["step", "order", "b_only"], kind="stable")
    return merged.reset_index(drop=True)


def _row_tolerances(
    merged: pandas.DataFrame,
    a: Trace,
    b: Trace,
    fa: pandas.DataFrame,
    fb: pandas.DataFrame,
    rtol: float | None,
    atol: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    n = len(merged)
    if rtol is not None and atol is not None:
        return np.full(n, float(rtol)), np.full(n, float(atol))
    dtype_a = merged["dtype_a"].astype(object).to_numpy().copy()
    dtype_b = merged["dtype_b"].astype(object).to_numpy().copy()
    kinds = merged["kind"].to_numpy()
    if (kinds == "update").any():
        param_dtypes = {**_param_dtypes(b, fb), **_param_dtypes(a, fa)}
        names = merged["name"].to_numpy()
        ranks = merged["rank"].to_numpy()
        for row in np.flatnonzero(kinds == "update"):
            dt = param_dtypes.get((int(ranks[row]), names[row])) or param_dtypes.get((None, names[row]))
            if dt is not None:
                dtype_a[row] = dtype_b[row] = dt
    rtols, atols = np.empty(n), np.empty(n)
    for i, (da, db) in enumerate(zip(dtype_a, dtype_b)):
        present = tuple(d for d in (da, db) if isinstance(d, str))
        rtols[i], atols[i] = tolerances(*present, rtol=rtol, atol=atol)
    return rtols, atols


def _param_dtypes(trace: Trace, rows: pandas.DataFrame) -> dict[tuple[int | None, str], str]:
    """``(rank, name) -> dtype`` of the parameters: an update is judged at its parameter's
    precision. From the rows compared, else from the metadata (rank None: every rank), else
    (a DataFrame without them) from the trace's param and grad rows."""
    params = rows[rows["kind"].isin(["param", "grad"])]
    if params.empty and trace.meta.parameters:
        return {(None, p.name): p.dtype for p in trace.meta.parameters if p.dtype}
    if params.empty:
        params = frame(trace, kind=["param", "grad"], columns=["rank", "kind", "name", "dtype"])
    params = params.sort_values("kind", key=lambda k: k != "param", kind="stable")  # param first
    out: dict[tuple[int | None, str], str] = {}
    for rank, name, dtype in zip(params["rank"], params["name"], params["dtype"]):
        out.setdefault((int(rank), name), dtype)
    return out


def _differs(merged: pandas.DataFrame, rtols: np.ndarray, atols: np.ndarray) -> np.ndarray:
    n = len(merged)
    differs = (merged["_merge"] != "both").to_numpy().copy()
    both = np.flatnonzero(~differs)
    shapes_a, shapes_b = merged["shape_a"].to_numpy(), merged["shape_b"].to_numpy()
    values_a, values_b = merged["values_a"].to_numpy(), merged["values_b"].to_numpy()
    with_values: list[int] = []
    for i in both:
        if _shape_tuple(shapes_a[i]) != _shape_tuple(shapes_b[i]):
            differs[i] = True
        elif _has_values(values_a[i]) and _has_values(values_b[i]):
            with_values.append(int(i))
    if with_values:
        idx = np.array(with_values)
        va = [_flat(values_a[i]) for i in idx]
        vb = [_flat(values_b[i]) for i in idx]
        lengths = np.array([v.size for v in va])
        same_length = lengths == np.array([v.size for v in vb])
        differs[idx[~same_length]] = True
        keep = np.flatnonzero(same_length)
        if keep.size:
            lens = lengths[keep]
            ok = close(
                np.concatenate([va[k] for k in keep]),
                np.concatenate([vb[k] for k in keep]),
                np.repeat(rtols[idx[keep]], lens),
                np.repeat(atols[idx[keep]], lens),
            )
            bad = np.concatenate([[0], np.cumsum(~ok)])
            ends = np.cumsum(lens)
            differs[idx[keep]] |= (bad[ends] - bad[ends - lens]) > 0
    stats_rows = np.zeros(n, dtype=bool)
    stats_rows[both] = True
    stats_rows[with_values] = False
    stats_rows &= ~differs
    if stats_rows.any():
        for stat in STATS:
            x, y = _stat_column(merged, stat, "a"), _stat_column(merged, stat, "b")
            if stat in EXACT_STATS:
                ok = (x == y) | (np.isnan(x) & np.isnan(y))
            else:
                ok = close(x, y, rtols, atols)
            differs |= stats_rows & ~ok
    return differs


def _stat_column(merged: pandas.DataFrame, stat: str, side: str) -> np.ndarray:
    return merged[f"{stat}_{side}"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _shape_tuple(shape: Any) -> tuple[int, ...] | None:
    if shape is None or (isinstance(shape, float) and np.isnan(shape)):
        return None
    return tuple(int(s) for s in shape)


def _flat(values: Any) -> np.ndarray:
    """A row's values, flat: float64, or complex128 for a complex tensor (compared as complex)."""
    values = np.asarray(values)
    return values.ravel() if np.iscomplexobj(values) else values.astype(np.float64, copy=False).ravel()


def _number(x: Any) -> float | complex:
    return complex(x) if np.iscomplexobj(x) else float(x)


def _has_values(values: Any) -> bool:
    return values is not None and not (isinstance(values, float) and np.isnan(values))


def _divergence(
    row: Any,
    rtol: float,
    atol: float,
    later: int,
    fa: pandas.DataFrame,
    fb: pandas.DataFrame,
    labels: tuple[str, str],
) -> Divergence:
    key: dict[str, Any] = {
        "step": int(row["step"]),
        "kind": row["kind"],
        "name": row["name"],
        "call": int(row["call"]),
        "part": row["part"],
        "rank": int(row["rank"]),
        "evaluation": bool(row["evaluation"]),
        "later": later,
        "labels": labels,
    }
    if row["_merge"] != "both":
        in_a = row["_merge"] == "left_only"
        note = missing_note(key, fa, fb, in_a, labels)
        return Divergence(**key, field="missing", index=None, a=in_a, b=not in_a, note=note)
    shape_a, shape_b = _shape_tuple(row["shape_a"]), _shape_tuple(row["shape_b"])
    if shape_a != shape_b:
        return Divergence(**key, field="shape", index=None, a=shape_a, b=shape_b)
    tol: dict[str, Any] = {"rtol": rtol, "atol": atol, "shape": shape_a}
    if _has_values(row["values_a"]) and _has_values(row["values_b"]):
        va, vb = _flat(row["values_a"]), _flat(row["values_b"])
        if va.size != vb.size:  # a shape that does not match its values: report the lengths
            return Divergence(**key, field="shape", index=None, a=(va.size,), b=(vb.size,))
        flat = int(np.flatnonzero(~close(va, vb, rtol, atol))[0])
        return Divergence(**key, field="values", index=flat, a=_number(va[flat]), b=_number(vb[flat]), **tol)
    for stat in STATS:
        x, y = _stat_value(row[f"{stat}_a"]), _stat_value(row[f"{stat}_b"])
        same = (
            (x == y or (np.isnan(x) and np.isnan(y)))
            if stat in EXACT_STATS
            else bool(close(np.float64(x), np.float64(y), rtol, atol))
        )
        if not same:
            if stat in EXACT_STATS and not (np.isnan(x) or np.isnan(y)):
                x, y = int(x), int(y)
            return Divergence(**key, field=stat, index=None, a=x, b=y, **tol)
    raise AssertionError("a row marked as differing has no difference")  # pragma: no cover


def _stat_value(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
