"""Gradients: ``exploding-grad`` (a layer against its own early steps) and ``vanishing-grad``
(a layer against the largest one trained by the same optimizer)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracer._diagnose._findings import Finding, layer_text, num
from tracer._diagnose._thresholds import Thresholds, window_steps
from tracer._series import series
from tracer._trace import Trace


def active_steps(trace: Trace, t: Thresholds, optimizer: str | None = None) -> list[int]:
    """Traced steps before the model converged: the total gradient norm (of all parameters,
    or of one optimizer's) is at least ``converged_ratio`` of its early median. Every step
    when the trace holds no gradients."""
    s = series(trace)
    layers = s.layer_grads
    if optimizer is not None:
        layers = layers[layers["optimizer"] == optimizer]
    if layers.empty:
        return s.steps
    total = np.sqrt((layers["norm"] ** 2).groupby(layers["step"]).sum())
    early = float(np.median(total.to_numpy()[: window_steps(len(total), t)]))
    if not early > 0:
        return s.steps
    keep = {int(x) for x in total.index[total >= t.converged_ratio * early]}
    return [x for x in s.steps if x in keep or x not in total.index]


def _per_layer(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (step, layer) over every optimizer: √Σ‖g‖² and numel."""
    sq = layers.assign(sq=layers["norm"] ** 2).groupby(["step", "layer"], sort=False)[["sq", "numel"]].sum()
    return sq.assign(norm=np.sqrt(sq["sq"])).reset_index()


def exploding_grad(trace: Trace, t: Thresholds) -> list[Finding]:
    """A layer whose gradient norm grows far beyond its early steps' median.

    Example::

        exploding_grad(tracer.open("traces/lr2"), Thresholds())[0].evidence["growth"]   # 3.1e4
    """
    norms = _per_layer(series(trace).layer_grads)
    out = []
    for layer, g in norms.groupby("layer", sort=False):
        if len(g) < t.min_steps:
            continue
        values = g["norm"].to_numpy(dtype=float)
        base = float(np.median(values[: window_steps(len(g), t)]))
        peak_i = int(np.argmax(values))
        peak, peak_step = float(values[peak_i]), int(g["step"].iloc[peak_i])
        if not (base > 0 and peak > t.exploding_growth * base):
            continue
        steps = tuple(int(s) for s, v in zip(g["step"], values) if v > t.exploding_growth * base)
        evidence = {"early_median": base, "max": peak, "max_step": peak_step, "growth": peak / base}
        message = (
            f"The gradient of {layer_text(layer)} is exploding: its norm reached {num(peak)} at step "
            f"{peak_step}, ×{num(peak / base)} its early median {num(base)}; lower the learning rate or clip gradients."
        )
        out.append(Finding("warning", "exploding-grad", steps[0], steps, "grad", layer, message, evidence))
    return out


def vanishing_grad(trace: Trace, t: Thresholds) -> list[Finding]:
    """A layer whose gradient per element is tiny next to the largest layer's of the same
    optimizer, at most steps before convergence.

    Example::

        vanishing_grad(tracer.open("traces/deep_sigmoid"), Thresholds())[0].name   # "0"
    """
    layers = series(trace).layer_grads
    out: list[Finding] = []
    for optimizer, own in layers.groupby("optimizer", sort=False):
        out += _vanishing_within(trace, t, str(optimizer), own)
    return out


def _vanishing_within(trace: Trace, t: Thresholds, optimizer: str, layers: pd.DataFrame) -> list[Finding]:
    names = list(layers["layer"].unique())
    if len(names) < 2:
        return []
    rms = layers.assign(rms=layers["norm"] / np.sqrt(layers["numel"].clip(lower=1)))
    table = rms.pivot_table(index="step", columns="layer", values="rms", aggfunc="first")
    largest = table.max(axis=1)
    # once every gradient has collapsed (a model that converged, or stopped learning),
    # the ratios between layers are rounding noise: judge only the steps before that
    active = active_steps(trace, t, optimizer)
    alive = [s for s, top in zip(active, largest.reindex(active).tolist()) if top > 0]  # NaN: not in the table
    if not alive:
        return []
    ratios = table.loc[alive].div(largest[alive], axis=0)
    out = []
    for layer in names:
        column = ratios[layer].dropna()
        low = column < t.vanishing_ratio
        if column.empty or low.sum() * 2 <= len(column):
            continue
        steps = tuple(int(s) for s in column.index[low.to_numpy()])
        median = float(column.median())
        evidence = {
            "ratio_to_largest": median,
            "rms": float(table.loc[alive, layer].median()),
            "largest_layer_rms": float(largest[alive].median()),
            "steps": len(column),
        }
        if bool((table.loc[alive, layer] == 0).all()):
            message = (
                f"The gradient of {layer_text(layer)} is exactly zero at every step before convergence: no "
                "gradient reaches it (dead ReLUs after it, a detach, or a zero gate?)."
            )
        else:
            message = (
                f"The gradient of {layer_text(layer)} is vanishing: per element it is ×{num(median)} that of the "
                f"layer with the largest gradient of its optimizer (median over {len(column)} step(s)); "
                "saturating activations, a bad initialisation or a missing normalisation are the usual causes."
            )
        out.append(Finding("warning", "vanishing-grad", steps[0], steps, "grad", layer, message, evidence))
    return out
