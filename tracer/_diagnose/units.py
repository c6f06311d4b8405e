"""Units: ``dead-relu``, ReLU units that output zero for the whole batch, step after step."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracer._diagnose._findings import Finding, label, num
from tracer._diagnose._thresholds import Thresholds
from tracer._series import series
from tracer._trace import Trace

_VALUE_COLUMNS = ["step", "rank", "name", "shape", "values"]


def dead_relu(trace: Trace, t: Thresholds) -> list[Finding]:
    """ReLU-family layers with at least ``dead_fraction`` of their units dead in each of
    the last ``dead_steps`` traced steps (an error when every unit is).

    Example::

        dead_relu(tracer.open("traces/dead"), Thresholds())[0].evidence["dead_fraction"]   # 0.75
    """
    lead = series(trace).lead
    acts = lead[(lead["kind"] == "activation") & lead["module_type"].isin(list(t.relu_types))]
    window = _last_steps(acts, t)
    if not window:
        return []
    values = _values(trace, acts, window)
    out = []
    for name, steps in window.items():
        stats = acts[(acts["name"] == name) & acts["step"].isin(steps)]
        dead, units, basis = _dead_mask(stats, values[values["name"] == name], steps)
        if dead is None or units == 0 or float(dead.mean()) < t.dead_fraction:
            continue
        out.append(_finding(name, str(stats["module_type"].iloc[0]), steps, dead, basis))
    return out


def _last_steps(acts: pd.DataFrame, t: Thresholds) -> dict[str, list[int]]:
    """Per ReLU layer with elements: its last ``dead_steps`` traced steps (if it has that many)."""
    out = {}
    for name in sorted(acts.loc[acts["numel"] > 0, "name"].unique()):
        steps = sorted({int(s) for s in acts.loc[acts["name"] == name, "step"]})
        if len(steps) >= t.dead_steps:
            out[name] = steps[-t.dead_steps :]
    return out


def _values(trace: Trace, acts: pd.DataFrame, window: dict[str, list[int]]) -> pd.DataFrame:
    """The stored values of those layers' outputs at those steps, of the lead rank (an
    empty frame where values were not kept: the statistics decide then)."""
    wanted = sorted({s for steps in window.values() for s in steps})
    values = trace.rows(kind="activation", step=wanted, columns=_VALUE_COLUMNS)
    if "values" not in values.columns:  # a DataFrame loaded without them
        return pd.DataFrame(columns=_VALUE_COLUMNS)
    values = values[values["name"].isin(list(window))]
    if "rank" in values.columns and len(values) and len(acts):
        values = values[values["rank"] == acts["rank"].min()]
    return values


def _finding(name: str, module_type: str, steps: list[int], dead: np.ndarray, basis: str) -> Finding:
    fraction = float(dead.mean())
    all_dead = fraction >= 1.0
    evidence = {
        "dead_fraction": fraction,
        "units": int(dead.size),
        "dead_units": int(dead.sum()),
        "steps": len(steps),
        "basis": basis,
    }
    if all_dead:
        message = (
            f"Every unit of {module_type} {label(name)} output zero for the whole batch in each of the last "
            f"{len(steps)} traced steps: the layer is dead and passes no gradient back "
            "(learning rate too high, or a large negative bias)."
        )
    else:
        message = (
            f"{num(100 * fraction)}% of the units of {module_type} {label(name)} output zero for the whole "
            f"batch in each of the last {len(steps)} traced steps (dead units); a lower learning rate, "
            "LeakyReLU or another initialisation may revive them."
        )
    severity = "error" if all_dead else "warning"
    return Finding(severity, "dead-relu", steps[0], tuple(steps), "activation", name, message, evidence)


def _dead_mask(stats: pd.DataFrame, values: pd.DataFrame, steps: list[int]) -> tuple[np.ndarray | None, int, str]:
    """Per unit: dead in every one of ``steps``; the number of units; what it is based on.

    A unit is axis 1 of an output with a batch axis (features of ``(N, F)``, channels of
    ``(N, C, H, W)``), each element of a 1-d output. With values, a unit is dead at a step
    when all its outputs over the batch are zero; without them only "every unit is dead"
    (the tensor's max is 0) can be told, and a tensor whose max is above 0 counts as alive.
    """
    mask: np.ndarray | None = None
    bases = set()
    for step in steps:
        at_stats = stats[stats["step"] == step]
        at_values = values[values["step"] == step] if len(values) else values
        step_mask = None
        if len(at_values) and all(v is not None for v in at_values["values"]):
            for v, shape in zip(at_values["values"], at_values["shape"]):
                shape = tuple(int(s) for s in shape)
                arr = np.asarray(v).reshape(shape)
                if arr.ndim == 0:
                    arr = arr.reshape(1)
                per_unit = (
                    (arr == 0) if arr.ndim == 1 else np.moveaxis(arr == 0, 1, 0).reshape(arr.shape[1], -1).all(axis=1)
                )
                if step_mask is not None and step_mask.shape != per_unit.shape:
                    step_mask = None
                    break
                step_mask = per_unit if step_mask is None else (step_mask & per_unit)
            if step_mask is not None:
                bases.add("values")
        if step_mask is None:
            dead_all = bool(len(at_stats)) and bool((at_stats["max"] == 0).all() and (at_stats["min"] == 0).all())
            bases.add("tensor max")
            if mask is None:
                mask = np.array([dead_all])
            else:
                mask = mask & dead_all
            continue
        if mask is None or mask.shape == (1,):
            mask = step_mask if mask is None else (step_mask & bool(mask[0]))
        elif mask.shape == step_mask.shape:
            mask = mask & step_mask
        else:
            return None, 0, ""
    if mask is None:
        return None, 0, ""
    basis = (
        "values"
        if bases == {"values"}
        else ("tensor max (values not stored)" if bases == {"tensor max"} else "values and tensor max")
    )
    return mask, int(mask.size), basis
