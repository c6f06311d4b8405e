"""Numerics: the first NaN/Inf (``first-nonfinite``) and gradient-scaler skips (``amp-skipped``).

What counts as the first non-finite value is defined once, in :mod:`tracer._series`
(``tracer summary`` prints the same one); here it becomes a finding with its cause.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracer._diagnose._findings import Finding, label, module, num
from tracer._diagnose._thresholds import Thresholds
from tracer._series import NonFinite, layer_of, series
from tracer._trace import Trace

_PLACE = {
    "input": "an input of {module}",
    "activation": "the output of {module}",
    "activation_grad": "the gradient flowing back into the output of {module}",
    "loss": "the loss",
    "grad": "the gradient of parameter {name}",
    "param": "parameter {name}",
    "update": "the update of parameter {name}",
    "state": "the optimizer state {part!r} of parameter {name}",
}


def first_nonfinite(trace: Trace, t: Thresholds) -> list[Finding]:
    """The earliest NaN/Inf that counts, where it is and what produced it.

    Example::

        first_nonfinite(tracer.open("traces/nan"), Thresholds())[0].name   # "fc2"
    """
    s = series(trace)
    first = s.first_nonfinite
    if first is None:
        return []
    evidence: dict[str, Any] = {"nonfinite": first.count, "numel": first.numel, "call": first.call}
    if first.part:
        evidence["part"] = first.part
    if first.rank:
        evidence["rank"] = first.rank
    if first.index is not None:
        evidence["index"] = str(list(first.index))
        evidence["value"] = str(first.value) if isinstance(first.value, complex) else first.value
    stats = s.stats
    same_step = stats[(stats["step"] == first.step) & (stats["rank"] == first.rank)]
    cause = _cause(first, same_step, stats, evidence)
    place = _PLACE.get(first.kind, first.kind + " {name}").format(
        name=label(first.name), module=module(first.name), part=first.part
    )
    message = (
        f"The first non-finite value (NaN/Inf) appeared at step {first.step} in {place}"
        f" ({first.count} of {first.numel} elements){cause}."
    )
    steps = tuple(sorted({int(x) for x in s.nonfinite["step"]}))
    return [Finding("error", "first-nonfinite", first.step, steps, first.kind, first.name, message, evidence)]


def _cause(first: NonFinite, same_step: pd.DataFrame, stats: pd.DataFrame, evidence: dict[str, Any]) -> str:
    """The clause that says where the value came from, from the rows just before it."""
    before = same_step[same_step["seq"] < first.seq]
    if first.step > 0:
        prev = stats[(stats["kind"] == "loss") & (stats["step"] < first.step)]
        if len(prev):
            evidence["previous_loss"] = float(prev["mean"].iloc[-1])
    if first.kind == "input":
        if first.name == "":
            return ": the batch fed to the model already held it, so look at the data"
        return ": no traced module produced it, so it came from code between modules"
    if first.kind == "activation":
        return _activation_cause(first, before, same_step, evidence)
    if first.kind == "loss":
        return _loss_cause(before, evidence)
    return _CAUSES.get(first.kind, "")


_CAUSES = {
    "activation_grad": ": the forward pass was finite, the backward pass overflowed",
    "grad": ": the forward pass was finite, the backward pass produced it",
    "update": ": the optimizer turned finite gradients and parameters into a non-finite update",
    "state": ": the optimizer state itself holds it",
    "param": ": the parameter was already non-finite before this step's update",
}


def _largest(rows: pd.DataFrame) -> float:
    return float(np.nanmax(np.abs(rows[["min", "max"]].to_numpy(dtype=float))))


def _activation_cause(first: NonFinite, before: pd.DataFrame, same_step: pd.DataFrame, evidence: dict[str, Any]) -> str:
    inputs = before[(before["kind"] == "input") & (before["name"] == first.name) & (before["call"] == first.call)]
    params = same_step[(same_step["kind"] == "param") & (same_step["name"].map(layer_of) == first.name)]
    if len(params):
        evidence["param_max_abs"] = _largest(params)
    if len(inputs) and not (inputs["nonfinite"] > 0).any():
        evidence["input_max_abs"] = _largest(inputs)
        return (
            f", from finite inputs: the {first.module_type or 'module'} itself overflowed or took an "
            "invalid value (weights grown too large, log or division by zero)"
        )
    return ""


def _loss_cause(before: pd.DataFrame, evidence: dict[str, Any]) -> str:
    outputs = before[(before["kind"] == "activation") & (before["name"] == "")]
    if outputs.empty:  # activations not traced: the outputs are unknown
        return ": the loss computation, or the model's outputs, produced it"
    largest = _largest(outputs)
    evidence["output_max_abs"] = largest
    if largest > 1e15:
        return (
            f", from finite but huge model outputs (up to {num(largest)}): the loss overflowed, "
            "the weights have grown far too large"
        )
    return ", while the model's outputs were finite: the loss computation produced it (log of 0, a NaN target?)"


def amp_skipped(trace: Trace, t: Thresholds) -> list[Finding]:
    """The steps a gradient scaler skipped: info while it calibrates, a warning when many.

    Example::

        amp_skipped(tracer.open("traces/amp"), Thresholds())[0].steps   # (0, 1, 2)
    """
    s = series(trace)
    skipped = s.skipped
    if not skipped:
        return []
    steps, traced = sorted(skipped), s.steps
    fraction = len(steps) / max(1, len(traced))
    last = traced[-1] in skipped
    severity = "warning" if fraction > t.amp_skip_fraction or last else "info"
    how = (
        "marked in the trace"
        if all(v == "marked" for v in skipped.values())
        else "inferred: non-finite gradients and a zero or missing update"
    )
    tail = (
        "; the last traced step was skipped too, so training is not recovering"
        if last
        else "; the scale was lowered and training went on"
    )
    message = (
        f"The AMP gradient scaler skipped the optimizer step at {len(steps)} of {len(traced)} "
        f"traced step(s) because the gradients held inf/NaN{tail}."
    )
    if severity == "info":
        message = message[:-1] + " (a few skips while the scale is calibrated are normal)."
    evidence = {"skipped_steps": len(steps), "traced_steps": len(traced), "fraction": fraction, "detected": how}
    return [Finding(severity, "amp-skipped", steps[0], tuple(steps), "skipped", None, message, evidence)]
