"""``tracer.diff``: the first place two traces part ways, in training order.

Also the two helpers every comparison in tracer shares: :func:`frame` (a path, a ``Run``
or a DataFrame -> the rows wanted) and :func:`tolerances` (``torch.testing``'s defaults
for a traced dtype).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tracer._schema import KINDS

if TYPE_CHECKING:
    import pandas

_STORED_KEY = ("step", "rank", "kind", "name", "call", "part")
KEY = (*_STORED_KEY, "evaluation")
"""What identifies a row: two traces are compared row by row on these. ``evaluation``
(``grad_enabled`` false: a forward pass under ``torch.no_grad()``/``inference_mode``)
is derived: evaluation passes number their calls apart from training ones, so a training
row is never compared with an evaluation row."""

STATS = ("numel", "mean", "std", "min", "max", "norm", "nonfinite")
"""Compared when a row's values are not stored in both traces (``nonfinite`` and ``numel`` exactly)."""

_EXACT_STATS = ("numel", "nonfinite")
_DIFF_COLUMNS = (*_STORED_KEY, "grad_enabled", "seq", "shape", "dtype", *STATS, "values")

# torch.testing's defaults, used only when its private table cannot be imported
_FALLBACK_TOLERANCES = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex32": (1e-3, 1e-5),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}


# --------------------------------------------------------------------------- shared helpers


def frame(
    trace: Any,
    *,
    kind: str | Iterable[str] | None = None,
    name: str | Iterable[str] | None = None,
    step: int | Iterable[int] | slice | None = None,
    columns: Sequence[str] | None = None,
) -> pandas.DataFrame:
    """The rows of ``trace`` (a path, a ``Run`` or a DataFrame from ``tracer.load``), filtered.

    Filters mean what they mean in ``tracer.load``; rows come back in training order.
    """
    import pandas as pd

    if not isinstance(trace, pd.DataFrame):
        from tracer._load import load

        return load(trace, kind=kind, name=name, step=step, columns=columns)
    wanted = list(columns) if columns is not None else list(trace.columns)
    filtered_on = [c for c, f in (("kind", kind), ("name", name), ("step", step)) if f is not None]
    missing = [c for c in dict.fromkeys([*wanted, *filtered_on]) if c not in trace.columns]
    if missing:
        raise ValueError(
            f"the DataFrame lacks the trace column(s) {missing}; pass the DataFrame that "
            "tracer.load(path) returns, with all its columns"
        )
    keep = np.ones(len(trace), dtype=bool)
    if kind is not None:
        keep &= trace["kind"].isin([kind] if isinstance(kind, str) else list(kind)).to_numpy()
    if name is not None:
        keep &= _name_mask(trace["name"], name)
    if step is not None:
        keep &= _step_mask(trace["step"], step)
    rows = trace.loc[keep]
    order = [c for c in ("step", "rank", "seq") if c in rows.columns]
    if order:
        rows = rows.sort_values(order, kind="stable")
    return rows[wanted].reset_index(drop=True)


def _name_mask(names: pandas.Series, name: str | Iterable[str]) -> np.ndarray:
    patterns = [name] if isinstance(name, str) else list(name)
    if not any(ch in p for p in patterns for ch in "*?["):
        return names.isin(patterns).to_numpy()
    return np.array([any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names], dtype=bool)


def _step_mask(steps: pandas.Series, step: int | Iterable[int] | slice) -> np.ndarray:
    values = steps.to_numpy()
    if isinstance(step, slice):
        if step.step not in (None, 1):
            return np.isin(values, list(range(step.start or 0, step.stop, step.step)))
        keep = np.ones(len(values), dtype=bool)
        if step.start is not None:
            keep &= values >= step.start
        if step.stop is not None:
            keep &= values < step.stop
        return keep
    if isinstance(step, (int, np.integer)):
        return values == step
    return np.isin(values, list(step))


def tolerances(*dtypes: str, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    """``(rtol, atol)``: the given ones, else ``torch.testing.assert_close``'s defaults.

    With several dtypes the loosest default wins, as ``assert_close`` does for two inputs of
    different dtypes. Giving only one of ``rtol``/``atol`` keeps the default of the other.
    """
    if rtol is not None and atol is not None:
        return float(rtol), float(atol)
    default_rtol, default_atol = _default_tolerances(tuple(sorted(set(dtypes))))
    return (
        default_rtol if rtol is None else float(rtol),
        default_atol if atol is None else float(atol),
    )


_tolerance_cache: dict[tuple[str, ...], tuple[float, float]] = {}


def _default_tolerances(dtypes: tuple[str, ...]) -> tuple[float, float]:
    cached = _tolerance_cache.get(dtypes)
    if cached is not None:
        return cached
    import torch

    torch_dtypes = [d for d in (getattr(torch, name, None) for name in dtypes) if isinstance(d, torch.dtype)]
    try:  # reuse torch.testing's own table rather than copying it
        from torch.testing._comparison import default_tolerances

        result = default_tolerances(*torch_dtypes) if torch_dtypes else (0.0, 0.0)
    except (ImportError, TypeError, ValueError):
        pairs = [_FALLBACK_TOLERANCES.get(name, (0.0, 0.0)) for name in dtypes]
        result = (max((p[0] for p in pairs), default=0.0), max((p[1] for p in pairs), default=0.0))
    _tolerance_cache[dtypes] = (float(result[0]), float(result[1]))
    return _tolerance_cache[dtypes]


def check_kinds(kinds: str | Iterable[str] | None) -> list[str] | None:
    """``kinds`` as a list, or None for all; an unknown kind is a ValueError."""
    if kinds is None:
        return None
    wanted = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kind(s) {unknown}; valid kinds are {list(KINDS)}")
    return wanted


def close(a: np.ndarray, b: np.ndarray, rtol: Any, atol: Any) -> np.ndarray:
    """``torch.isclose`` elementwise (``|a - b| <= atol + rtol·|b|``), NaN equal to NaN."""
    with np.errstate(all="ignore"):
        return (a == b) | (np.abs(a - b) <= atol + rtol * np.abs(b)) | (np.isnan(a) & np.isnan(b))


def describe(kind: str, name: str, call: int, part: str, rank: int = 0, evaluation: bool = False) -> str:
    """``"grad 'fc.weight' call 0"``: how messages name one row."""
    text = f"{kind} {name!r} call {call}"
    if part:
        text += f" part {part!r}"
    if rank:
        text += f" rank {rank}"
    if evaluation:
        text += " (evaluation, no gradients)"
    return text


def flat_to_index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Flat (row-major) index -> index into a tensor of ``shape``."""
    if not len(shape):
        return ()
    return tuple(int(i) for i in np.unravel_index(flat, tuple(int(s) for s in shape)))


# --------------------------------------------------------------------------- Divergence


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Where two traces first differ, in training order; ``str()`` explains it.

    Attributes:
        step, kind, name, call, part, rank: the row (see the trace columns).
        field: what differs: ``"missing"`` (the row is in one trace only), ``"shape"``,
            ``"values"``, or a statistic (``"mean"``, ``"norm"``, ...) when the values are
            not stored in both traces.
        index: for ``"values"``, the flat (row-major) index of the first differing element.
        a, b: the two values there: numbers for values/statistics, shapes for ``"shape"``,
            and for ``"missing"`` whether the row is in ``a`` / in ``b``.
        later: how many later rows (in training order) also differ.
        evaluation: the row is of a forward pass run without gradients (``grad_enabled``
            false), whose calls are counted apart from the training ones.
    """

    step: int
    kind: str
    name: str
    call: int
    part: str
    field: str
    index: int | None
    a: Any
    b: Any
    later: int
    rank: int = 0
    evaluation: bool = False
    shape: tuple[int, ...] | None = dataclasses.field(default=None, repr=False)
    rtol: float | None = dataclasses.field(default=None, repr=False)
    atol: float | None = dataclasses.field(default=None, repr=False)
    note: str = dataclasses.field(default="", repr=False)
    labels: tuple[str, str] = dataclasses.field(default=("a", "b"), repr=False)

    def __str__(self) -> str:
        la, lb = self.labels
        row = describe(self.kind, self.name, self.call, self.part, self.rank, self.evaluation)
        head = f"traces diverge at step {self.step}: {row}"
        if self.field == "missing":
            where = f"is in {la} but not in {lb}" if self.a else f"is in {lb} but not in {la}"
            lines = [f"{head} {where}" + (f" ({self.note})" if self.note else "")]
        elif self.field == "shape":
            lines = [f"{head} has shape {_shape(self.a)} in {la} and {_shape(self.b)} in {lb}"]
        else:
            if self.field == "values":
                at = f"values differ at index {flat_to_index(self.index or 0, self.shape or ())}"
                if self.shape is not None and len(self.shape) > 1:
                    at += f" (flat index {self.index})"
            else:
                at = f"statistic {self.field!r} differs (values are not stored in both traces)"
            lines = [f"{head}: {at}: {la} = {self.a!r}, {lb} = {self.b!r}"]
            if self.rtol is not None and self.atol is not None and self.field not in _EXACT_STATS:
                diff, allowed = _abs_diff(self.a, self.b), self.atol + self.rtol * _abs(self.b)
                lines.append(
                    f"  |{la} - {lb}| = {diff:.6g}, allowed atol + rtol·|{lb}| = {allowed:.3g} "
                    f"(rtol={self.rtol:.3g}, atol={self.atol:.3g})"
                )
        if self.later == 1:
            lines.append("  1 later row also differs")
        elif self.later:
            lines.append(f"  {self.later} later rows also differ")
        else:
            lines.append("  no later row differs")
        return "\n".join(lines)


def _shape(shape: Any) -> str:
    return str(tuple(int(s) for s in shape))


def _abs(x: Any) -> float:
    try:
        return abs(complex(x))
    except (TypeError, ValueError):
        return float("nan")


def _abs_diff(a: Any, b: Any) -> float:
    """|a − b| of two numbers, real or complex (NaN when either is not a number)."""
    try:
        with np.errstate(all="ignore"):
            return float(abs(complex(a) - complex(b)))
    except (TypeError, ValueError, OverflowError):
        return float("nan")


# --------------------------------------------------------------------------- diff


def diff(
    a: Any,
    b: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    kinds: str | Iterable[str] | None = None,
) -> Divergence | None:
    """The first divergence between two traces in training order, or None when they are close.

    Rows are matched on (step, rank, kind, name, call, part) and visited in training
    order: by step, then in the order the events happened in that step. Values are
    compared where both traces store them, otherwise the statistics are. A row that is in
    one trace only (a missing step, a renamed parameter) is a divergence too.

    Example::

        d = tracer.diff("traces/before", "traces/after", kinds=["loss", "grad"])
        if d is not None:
            print(d)          # traces diverge at step 3: grad 'fc.weight' call 0: ...

    Args:
        a, b: traces: paths, ``Run`` objects or DataFrames from ``tracer.load``.
        rtol, atol: tolerances as in ``torch.testing.assert_close``; by default that
            function's defaults for each row's dtype (for ``update`` rows, the parameter's).
        kinds: compare only these kinds (default: all).

    Raises:
        TraceFormatError: a path is not a readable trace.
        ValueError: an unknown kind.
    """
    return compare(a, b, rtol=rtol, atol=atol, kinds=kinds)


def compare(
    a: Any,
    b: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    kinds: str | Iterable[str] | None = None,
    name: str | Iterable[str] | None = None,
    step: int | Iterable[int] | slice | None = None,
    labels: tuple[str, str] = ("a", "b"),
) -> Divergence | None:
    """:func:`diff` with row filters and labels for the two traces (golden traces use them)."""
    wanted = check_kinds(kinds)
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

    merged = pd.merge(
        prepared(fa), prepared(fb), on=[*KEY, "dup"], how="outer", suffixes=("_a", "_b"), indicator=True
    )
    merged["order"] = merged["order_a"].fillna(merged["order_b"])
    merged["b_only"] = merged["_merge"] == "right_only"
    merged = merged.sort_values(["step", "order", "b_only"], kind="stable")
    return merged.reset_index(drop=True)


def _row_tolerances(
    merged: pandas.DataFrame,
    a: Any,
    b: Any,
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
        for i in np.flatnonzero(kinds == "update"):
            dt = param_dtypes.get((int(ranks[i]), names[i]))
            if dt is not None:
                dtype_a[i] = dtype_b[i] = dt
    rtols, atols = np.empty(n), np.empty(n)
    for i, (da, db) in enumerate(zip(dtype_a, dtype_b)):
        present = tuple(d for d in (da, db) if isinstance(d, str))
        rtols[i], atols[i] = tolerances(*present, rtol=rtol, atol=atol)
    return rtols, atols


def _param_dtypes(trace: Any, rows: pandas.DataFrame) -> dict[tuple[int, str], str]:
    """``(rank, name) -> dtype`` of the parameters: an update is judged at its parameter's precision."""
    params = rows[rows["kind"].isin(["param", "grad"])]
    if params.empty:
        params = frame(trace, kind=["param", "grad"], columns=["rank", "kind", "name", "dtype"])
    params = params.sort_values("kind", key=lambda k: k != "param", kind="stable")  # param first
    out: dict[tuple[int, str], str] = {}
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
            if stat in _EXACT_STATS:
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
    key = {
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
        note = _missing_note(key, fa, fb, in_a, labels)
        return Divergence(**key, field="missing", index=None, a=in_a, b=not in_a, note=note)
    shape_a, shape_b = _shape_tuple(row["shape_a"]), _shape_tuple(row["shape_b"])
    if shape_a != shape_b:
        return Divergence(**key, field="shape", index=None, a=shape_a, b=shape_b)
    tol = {"rtol": rtol, "atol": atol, "shape": shape_a}
    if _has_values(row["values_a"]) and _has_values(row["values_b"]):
        va, vb = _flat(row["values_a"]), _flat(row["values_b"])
        if va.size != vb.size:  # a shape that does not match its values: report the lengths
            return Divergence(**key, field="shape", index=None, a=(va.size,), b=(vb.size,))
        flat = int(np.flatnonzero(~close(va, vb, rtol, atol))[0])
        return Divergence(**key, field="values", index=flat, a=_number(va[flat]), b=_number(vb[flat]), **tol)
    for stat in STATS:
        x, y = _stat_value(row[f"{stat}_a"]), _stat_value(row[f"{stat}_b"])
        same = (x == y or (np.isnan(x) and np.isnan(y))) if stat in _EXACT_STATS else bool(
            close(np.float64(x), np.float64(y), rtol, atol)
        )
        if not same:
            if stat in _EXACT_STATS and not (np.isnan(x) or np.isnan(y)):
                x, y = int(x), int(y)
            return Divergence(**key, field=stat, index=None, a=x, b=y, **tol)
    raise AssertionError("a row marked as differing has no difference")  # pragma: no cover


def _stat_value(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _missing_note(
    key: dict[str, Any], fa: pandas.DataFrame, fb: pandas.DataFrame, in_a: bool, labels: tuple[str, str]
) -> str:
    """Why a row is in one trace only: the step is missing, or the name changed."""
    here, there = (fa, fb) if in_a else (fb, fa)
    other = labels[1] if in_a else labels[0]
    step = key["step"]
    there_steps = there["step"].unique()
    if step not in there_steps:
        return f"{other} has no step {step}; its steps are {_steps_text(there_steps)}"
    same = there[(there["step"] == step) & (there["kind"] == key["kind"])]
    if same.empty:
        return f"{other} has no {key['kind']} rows at step {step}"
    names_here = set(here.loc[(here["step"] == step) & (here["kind"] == key["kind"]), "name"])
    instead = [n for n in dict.fromkeys(same["name"]) if n not in names_here]
    if instead:
        shown = ", ".join(repr(n) for n in instead[:5]) + (", ..." if len(instead) > 5 else "")
        return f"{other} has {key['kind']} {shown} at step {step} instead"
    if key["name"] in set(same["name"]):
        calls = sorted(set(same.loc[same["name"] == key["name"], "call"]))
        return f"{other} has {key['kind']} {key['name']!r} at step {step} with calls {calls}"
    return ""


def _steps_text(steps: Any) -> str:
    steps = sorted({int(s) for s in steps})
    if not steps:
        return "none"
    if len(steps) == steps[-1] - steps[0] + 1 and len(steps) > 2:  # no gaps
        return f"{steps[0]} to {steps[-1]}"
    shown = ", ".join(str(s) for s in steps[:10])
    return shown + (", ..." if len(steps) > 10 else "")

