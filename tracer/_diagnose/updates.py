"""Updates: ``update-ratio``, ``never-changes`` and ``changes-without-grad``, from the norms
per (step, parameter) of :mod:`tracer._series`."""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np
import pandas as pd

from tracer._diagnose._findings import Finding, label, module, num
from tracer._diagnose._thresholds import Thresholds
from tracer._diagnose.gradients import active_steps
from tracer._series import layer_of, series
from tracer._trace import Trace, TraceOptions


def update_ratio(trace: Trace, t: Thresholds) -> list[Finding]:
    """A weight matrix whose median ‖update‖/‖param‖ is far from the usual 1e-3.

    Example::

        update_ratio(tracer.open("traces/lr1e-7"), Thresholds())[0].evidence["median_ratio"]
    """
    norms = series(trace).norms
    judged = norms[(norms["ndim"] >= 2) & (norms["param"] > 0) & np.isfinite(norms["param"])]
    judged = judged[np.isfinite(judged["update"]) & judged["step"].isin(active_steps(trace, t))]
    out = []
    for name, g in judged.groupby("name", sort=False):
        if len(g) < t.min_steps or not (g["update"] > 0).any():
            continue  # never-changes speaks for a parameter whose updates are all zero
        ratio = g["ratio"].to_numpy(dtype=float)
        median = float(np.median(ratio))
        if t.update_ratio_low <= median <= t.update_ratio_high:
            continue
        steps = tuple(int(s) for s in g["step"])
        evidence = {
            "median_ratio": median,
            "min_ratio": float(ratio.min()),
            "max_ratio": float(ratio.max()),
            "steps": len(g),
        }
        if median > t.update_ratio_high:
            what, limit, why = (
                "large",
                f"above {num(t.update_ratio_high)}",
                "the learning rate is probably too high for it",
            )
        else:
            what, limit = "tiny", f"below {num(t.update_ratio_low)}"
            why = "it barely learns: a learning rate too small, or a vanishing gradient"
        message = (
            f"The updates of {label(str(name))} are {what}: ‖update‖/‖param‖ has median {num(median)} over "
            f"{len(g)} steps (usual: about 1e-3, flagged {limit}); {why}."
        )
        out.append(Finding("warning", "update-ratio", steps[0], steps, "update", str(name), message, evidence))
    return out


def _moves(trace: Trace) -> pd.DataFrame:
    norms = series(trace).norms
    return norms[np.isfinite(norms["update"])]


def never_changes(trace: Trace, t: Thresholds) -> list[Finding]:
    """A parameter whose update is exactly zero at every traced step, and a module that
    runs but none of whose parameters (under any of their names) has a row.

    Example::

        never_changes(tracer.open("traces/frozen"), Thresholds())[0].name   # "2"
    """
    return _zero_updates(trace, t) + _frozen_modules(trace)


def _zero_updates(trace: Trace, t: Thresholds) -> list[Finding]:
    lead = series(trace).lead
    hparams = lead[lead["kind"] == "update"].drop_duplicates("name", keep="last").set_index("name")["hparams"]
    out = []
    for name, g in _moves(trace).groupby("name", sort=False):
        if not (g["update"] == 0).all() or len(g) < t.never_changes_steps:
            continue
        lr = _lr(hparams.get(name))
        evidence: dict[str, Any] = {"steps": len(g), "max_grad_norm": float(g["grad"].max(skipna=True) or 0.0)}
        if lr is not None:
            evidence["lr"] = lr
        if bool((g["grad"].fillna(0) == 0).all()):
            why = "its gradient is zero at every step, so nothing reaches it (detached, or multiplied by zero?)"
        elif lr == 0:
            why = "its learning rate is 0"
        else:
            why = "the optimizer leaves it unchanged although it has a gradient"
        message = f"Parameter {label(str(name))} never changes: its update is exactly zero at all {len(g)} traced steps; {why}."
        steps = tuple(int(s) for s in g["step"])
        out.append(Finding("warning", "never-changes", steps[0], steps, "update", str(name), message, evidence))
    return out


def changes_without_grad(trace: Trace, t: Thresholds) -> list[Finding]:
    """A parameter that moves while its gradient is exactly zero (weight decay, momentum).

    Example::

        changes_without_grad(tracer.open("traces/gated"), Thresholds())[0].name   # "aux.weight"
    """
    out = []
    for name, g in _moves(trace).groupby("name", sort=False):
        if (g["update"] == 0).all() and len(g) >= t.never_changes_steps:
            continue  # never-changes speaks for it
        no_grad = g[(g["grad"] == 0) & (g["update"] > 0)]
        if no_grad.empty:
            continue
        always = len(no_grad) == len(g)
        steps = tuple(int(s) for s in no_grad["step"])
        evidence = {
            "steps_without_grad": len(no_grad),
            "steps": len(g),
            "max_update_norm": float(no_grad["update"].max()),
        }
        if always:
            message = (
                f"Parameter {label(str(name))} changes without a gradient at all {len(g)} traced steps (its gradient "
                "is exactly zero): only weight decay or momentum moves it; is it used in the forward pass?"
            )
        else:
            message = (
                f"Parameter {label(str(name))} changes without a gradient at {len(no_grad)} of {len(g)} traced steps "
                "(its gradient is exactly zero there): weight decay or momentum moves it."
            )
        severity = "warning" if always else "info"
        out.append(Finding(severity, "changes-without-grad", steps[0], steps, "update", str(name), message, evidence))
    return out


def _lr(hparams: Any) -> float | None:
    if not isinstance(hparams, str):
        return None
    from tracer._row_checks import parse_hparams

    try:
        lr = parse_hparams(hparams, "hparams").get("lr")
    except ValueError:  # a DataFrame not read by tracer.load may hold anything
        return None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


# torch.nn modules that always own a trainable parameter (norm layers may have none)
_PARAMETRIC = frozenset((
    "Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "Embedding", "EmbeddingBag", "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "PReLU",
))  # fmt: skip


def _frozen_modules(trace: Trace) -> list[Finding]:
    """Modules that run but none of whose parameters ever got a gradient (frozen by accident?).

    A shared parameter counts under each of its names: ``lm_head`` of a model whose
    ``lm_head.weight`` is tied to ``wte.weight`` has rows (under ``wte.weight``)."""
    s = series(trace)
    lead, options = s.lead, trace.meta.options
    optimized = lead[lead["kind"].isin(["grad", "param", "update"])]
    capture = set(options.capture or ("grad", "param", "update"))
    if optimized.empty or not capture & {"grad", "param", "update"}:
        return []  # traced without an optimizer, or without its kinds
    names = set(optimized["name"].unique())
    names |= {alias for name in names for alias in s.aliases.get(name, ())}
    layers = {layer_of(n) for n in names}
    modules = lead[lead["kind"].isin(["activation", "input"])].drop_duplicates("name")
    out = []
    for name, module_type in zip(modules["name"], modules["module_type"]):
        if module_type not in _PARAMETRIC or name in layers or not _selected(f"{name}.weight".lstrip("."), options):
            continue
        if name and any(layer.startswith(f"{name}.") for layer in layers):
            continue
        steps = tuple(sorted({int(x) for x in lead.loc[lead["name"] == name, "step"]}))
        what = module(name)
        message = (
            f"{what[0].upper()}{what[1:]} ({module_type}) runs, but none of its parameters got a gradient or an "
            "update in any traced step, so it never changes: requires_grad=False, left out of the optimizer, "
            "or cut from the graph (detach)? Ignore this if you froze it on purpose."
        )
        first = steps[0] if steps else None
        out.append(Finding("warning", "never-changes", first, steps, "param", name, message, {"steps": len(steps)}))
    return out


def _selected(name: str, options: TraceOptions) -> bool:
    """Whether ``include``/``exclude`` let ``name`` be traced."""
    if options.include and not any(fnmatch.fnmatchcase(name, p) for p in options.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in options.exclude)
