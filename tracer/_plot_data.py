"""The numbers the plots draw, taken from a :class:`~tracer.Trace` and its shared series.

Loss per step, norms per layer and update ratios come from :mod:`tracer._series` (so a
plot shows what ``tracer summary`` and ``tracer diagnose`` say); everything is read from
the trace's cached statistics, and values only for the one tensor a histogram draws.

>>> trace = tracer.open("traces/run1")          # doctest: +SKIP
>>> layer_table(trace, "grad").iloc[-1]         # doctest: +SKIP
layer
fc1    0.031
fc2    0.004
"""

from __future__ import annotations

import glob
from typing import Any

import numpy as np
import pandas as pd

from tracer._series import series
from tracer._trace import Trace

_VALUE_COLUMNS = ("rank", "name", "call", "part", "numel", "values")


def steps(trace: Trace) -> list[int]:
    """The traced steps, ascending (those of the shared series)."""
    return series(trace).steps


def loss_table(trace: Trace) -> pd.DataFrame | None:
    """Per step (rows) and loss series (columns, ``"loss"`` for one): the loss; None without loss rows."""
    losses = series(trace).losses
    if losses.empty:
        return None
    order = list(dict.fromkeys(losses["series"]))
    table = losses.pivot(index="step", columns="series", values="loss")
    return table.reindex(columns=order).sort_index().astype("float64")


def first_nonfinite_loss(trace: Trace) -> int | None:
    """The first step whose loss (of any series) is NaN or infinite, or None."""
    losses = series(trace).losses
    bad = losses.loc[~np.isfinite(losses["loss"].to_numpy(dtype=float)), "step"]
    return int(bad.min()) if len(bad) else None


def layer_table(trace: Trace, kind: str) -> pd.DataFrame | None:
    """Per step (rows) and layer (columns, in training order): √Σ‖·‖² of the ``kind`` norms
    (``"grad"``, ``"param"`` or ``"update"``) of the layer's parameters; None without them."""
    norms = series(trace).norms
    rows = norms.loc[norms[kind].notna().to_numpy(), ["step", "layer", kind]]  # few columns: cheap to take
    if rows.empty:
        return None
    order = list(pd.unique(rows["layer"]))
    squares = rows.assign(sq=rows[kind].astype("float64") ** 2)
    table = squares.groupby(["step", "layer"], sort=True)["sq"].sum(min_count=1).unstack("layer")
    return np.sqrt(table.reindex(columns=order))


def ratio_table(trace: Trace) -> pd.DataFrame | None:
    """Per step and layer: ‖Δθ‖/‖θ‖ of the layer's parameters together; None when there is
    nothing to divide (no updates, or only zero parameters)."""
    update, param = layer_table(trace, "update"), layer_table(trace, "param")
    if update is None or param is None:
        return None
    param = param.reindex(index=update.index, columns=update.columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = update / param.where(param > 0)
    return ratio if np.isfinite(ratio.to_numpy(dtype=float)).any() else None


def activation_tables(trace: Trace) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per step and module (in training order): the mean and the std of its float outputs,
    several outputs of a step (calls, parts) pooled; None without activations."""
    lead = series(trace).lead
    acts = lead.loc[(lead["kind"] == "activation").to_numpy(), ["step", "name", "dtype", "mean", "std"]]
    acts = acts[acts["dtype"].astype(str).str.contains("float").to_numpy()]
    if acts.empty:
        return None
    order = list(pd.unique(acts["name"]))
    mean = acts["mean"].astype(float)
    acts = acts.assign(mean=mean, sq=acts["std"].astype(float) ** 2 + mean**2)
    grouped = acts.groupby(["step", "name"], sort=True)
    means = grouped["mean"].mean().unstack("name").reindex(columns=order)
    squares = grouped["sq"].mean().unstack("name").reindex(columns=order)
    return means, np.sqrt((squares - means**2).clip(lower=0))


def metric_table(trace: Trace) -> pd.DataFrame | None:
    """Per step (rows) and logged name (columns, in the order first logged): the value that
    ``run.log`` recorded (the last one when a step logged a name twice); None without metrics."""
    lead = series(trace).lead
    rows = lead.loc[(lead["kind"] == "metric").to_numpy(), ["step", "name", "mean"]]
    if rows.empty:
        return None
    order = list(pd.unique(rows["name"]))
    rows = rows.drop_duplicates(["step", "name"], keep="last")
    table = rows.pivot(index="step", columns="name", values="mean").reindex(columns=order).sort_index()
    return table.astype("float64")


def describe(kind: str, name: str, step: int, call: int = 0, part: str = "") -> str:
    """``"grad 'fc.weight' (step 3, call 0)"``: how a histogram names its tensor."""
    return f"{kind} {name!r} (step {step}, call {call}" + (f", part {part!r})" if part else ")")


def tensor_values(trace: Trace, *, kind: str, name: str, step: int, call: int = 0, part: str = "") -> np.ndarray:
    """The stored values of one tensor (lead rank), read alone from the trace.

    Raises:
        ValueError: no such tensor, or its values were not stored (more than ``max_values``).
    """
    recorded = trace.meta.aliases.get(name, name)  # a tied parameter's rows use its first name
    pattern = glob.escape(recorded) if any(c in recorded for c in "*?[") else recorded  # the name, not a glob
    rows = trace.rows(kind=kind, name=pattern, step=step, columns=_VALUE_COLUMNS)
    rows = _lead(rows)
    rows = rows[(rows["name"] == recorded) & (rows["call"] == call) & (rows["part"] == part)]
    where = describe(kind, name, step, call, part)
    if rows.empty:
        raise ValueError(f"the trace holds no {where}")
    values = rows["values"].iloc[0] if "values" in rows.columns else None
    if values is None:
        raise ValueError(
            f"the values of {where} were not stored ({int(rows['numel'].iloc[0])} elements, more than "
            "max_values): only its statistics are in the trace; trace with a larger max_values"
        )
    return np.asarray(values)


def default_histogram(trace: Trace) -> tuple[dict[str, Any], np.ndarray] | None:
    """The tensor the report page draws a histogram of, and its values: the largest gradient
    with stored values at the last step (from :meth:`Trace.updates`, which the report's
    checks have read already); None when there is none."""
    lead = series(trace).lead
    steps = lead.loc[(lead["kind"] == "grad").to_numpy(), "step"]
    if steps.empty:
        return None
    last = int(steps.max())
    rows = trace.updates()
    if "values" not in rows.columns:
        return None
    rows = _lead(rows[((rows["kind"] == "grad") & (rows["step"] == last)).to_numpy()])
    rows = rows[(rows["call"] == 0) & (rows["part"] == "") & rows["values"].map(lambda v: v is not None)]
    if rows.empty:
        return None
    best = rows.sort_values("numel", kind="stable").iloc[-1]
    return {"kind": "grad", "name": str(best["name"]), "step": last}, np.asarray(best["values"])


def _lead(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the lowest rank (a distributed trace is drawn as rank 0 saw it)."""
    if "rank" not in rows.columns or rows.empty:
        return rows
    return rows[rows["rank"] == rows["rank"].min()]
