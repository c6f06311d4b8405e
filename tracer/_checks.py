"""One check per traced update: the rule's prediction (or a replay) against what happened."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from tracer import rules
from tracer._reader import is_complex, parse_hparams
from tracer._replay import find_class, replay

_EPS = {
    "float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7,
    "complex128": 2.0**-52, "complex64": 2.0**-23, "complex32": 2.0**-10,
}  # fmt: skip
"""Machine epsilon per dtype; a complex dtype's is that of its real and imaginary parts."""


@dataclasses.dataclass
class UpdateCheck:
    """Everything the report says about one (step, parameter) update."""

    step: int
    name: str
    optimizer: str | None  # None: the update was made outside torch.optim
    param_group: int | None
    hparams: dict[str, Any]
    dtype: str
    shape: tuple[int, ...]
    rule_class: str | None = None  # the class whose rule was used (a base for subclasses)
    rule: str | None = None
    latex: str | None = None
    predicted: list[float] | None = None
    observed: list[float] | None = None
    max_abs_error: float | None = None
    matches: bool | None = None
    check: str | None = None
    reason: str | None = None
    param: np.ndarray | None = None
    grad: np.ndarray | None = None
    state: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    update: np.ndarray | None = None
    norms: dict[str, float] = dataclasses.field(default_factory=dict)
    group_size: int | None = None  # parameters updated in this param group at this step

    @property
    def rule_hparams(self) -> dict[str, Any]:
        """The hyper-parameters a rule sees: LBFGS also needs how many parameters share ‖g‖₁."""
        if self.group_size is None or "params" in self.hparams:
            return self.hparams
        return {**self.hparams, "params": self.group_size}

    @property
    def update_ratio(self) -> float:
        """‖Δθ‖ / ‖θ‖ (NaN when the parameter's norm is unknown or zero)."""
        param = self.norms.get("param")
        return self.norms.get("update", math.nan) / param if param else math.nan

    @property
    def rule_object(self) -> rules.Rule | None:
        rule, _ = rules.rule_for(self.rule_class) if self.rule_class else (None, None)
        return rule


def tolerance(dtype: str, old: torch.Tensor, new: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-element tolerance between a predicted and an observed new parameter value.

    A few roundings of the parameter's own dtype (kernels such as foreach and fused ones
    order operations differently), plus a small fraction of the update itself. An error
    in the rule moves the update by far more than that.
    """
    eps = _EPS.get(dtype, 2.0**-23)
    scale = torch.maximum(old.abs(), new.abs())
    return 16 * eps * scale + 256 * eps * delta.abs() + 1e-300


def compare(dtype: str, old: torch.Tensor, predicted: torch.Tensor, observed: torch.Tensor) -> tuple[float, bool]:
    """``(max_abs_error, matches)`` of a prediction against the traced new value."""
    if predicted.shape != observed.shape:
        return math.inf, False
    error = (predicted - observed).abs()
    if error.numel() == 0:
        return 0.0, True
    both_nan = predicted.isnan() & observed.isnan()
    error = torch.where(both_nan, torch.zeros_like(error), error)
    tol = tolerance(dtype, old, predicted, predicted - old)
    ok = bool(((error <= tol) | both_nan | (predicted == observed)).all())
    return float(error.max()), ok


def _tensor(row: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor | None:
    """The row's values as a tensor of its shape; a complex tensor as its real view (shape + (2,)),
    as ``torch.optim`` steps it."""
    values = row["values"]
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return None
    tensor = torch.from_numpy(np.array(values)).reshape(tuple(row["shape"]))
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    return tensor.to(dtype)


def _torch_dtype(name: str) -> torch.dtype:
    """The dtype a checked tensor is replayed in: a complex one's real view takes its parts' dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        return torch.float64
    return dtype.to_real() if dtype.is_complex else dtype


def build_checks(
    df: pd.DataFrame,
    optimizer_bases: dict[str, list[str]],
    extra_classes: Sequence[type] = (),
) -> list[UpdateCheck]:
    """One :class:`UpdateCheck` per ``update`` row of ``df`` (kinds grad/param/update/state)."""
    rows = df[df.kind.isin(["grad", "param", "update", "state"])]
    columns = [c for c in ("step", "name", "kind", "part", "optimizer", "param_group", "hparams",
                           "dtype", "shape", "numel", "norm", "values") if c in rows.columns]  # fmt: skip
    # one pass in plain Python: pandas grouping per update costs far more than the check
    events: dict[tuple[int, str], dict[str, Any]] = {}
    group_sizes: dict[tuple[Any, ...], int] = {}
    for values in zip(*(rows[c].tolist() for c in columns)):
        row = dict(zip(columns, values))
        entry = events.setdefault((row["step"], row["name"]), {"state": []})
        if row["kind"] == "state":
            entry["state"].append(row)
        else:
            entry.setdefault(row["kind"], row)
        if row["kind"] == "param":
            key = (row["step"], row["optimizer"], _group(row["param_group"]))
            group_sizes[key] = group_sizes.get(key, 0) + 1
    hparams_cache: dict[str, dict[str, Any]] = {}
    checks = []
    for (step, name), entry in events.items():
        upd = entry.get("update")
        if upd is None:
            continue
        par, grd = entry.get("param"), entry.get("grad")
        hp_text = upd["hparams"]
        if isinstance(hp_text, str) and hp_text not in hparams_cache:
            hparams_cache[hp_text] = parse_hparams(hp_text, f"the hparams of the update of {name!r} at step {step}")
        check = UpdateCheck(
            step=int(step),
            name=str(name),
            optimizer=upd["optimizer"] if isinstance(upd["optimizer"], str) else None,
            param_group=_group(upd["param_group"]),
            hparams=dict(hparams_cache[hp_text]) if isinstance(hp_text, str) else {},
            dtype=str(par["dtype"]) if par is not None else "float64",
            shape=_checked_shape(upd),
        )
        check.norms = {
            "update": float(upd["norm"]),
            "param": float(par["norm"]) if par is not None else math.nan,
            "grad": float(grd["norm"]) if grd is not None else math.nan,
        }
        # a rule may need the size of the group (LBFGS's first step scales by ‖g‖₁ of all)
        check.group_size = group_sizes.get((step, upd["optimizer"], check.param_group))
        _run_check(check, upd, par, grd, entry["state"], optimizer_bases, extra_classes)
        checks.append(check)
    checks.sort(key=lambda c: c.step)  # stable: training order within a step
    return checks


def _checked_shape(row: dict[str, Any]) -> tuple[int, ...]:
    """The shape of what is checked: a complex parameter's real view has a last axis of 2."""
    shape = tuple(int(s) for s in row["shape"])
    return (*shape, 2) if is_complex(str(row["dtype"])) else shape


def _group(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA else int(value)


def _run_check(check, upd, par, grd, state_rows, optimizer_bases, extra_classes) -> None:
    bases = optimizer_bases.get(check.optimizer, [])
    rule, used = rules.rule_for(check.optimizer, bases) if check.optimizer is not None else (None, None)
    if rule is not None:
        try:
            check.rule, check.latex = rule.text(check.hparams), rule.latex(check.hparams)
        except _BAD_HPARAMS as exc:
            check.reason = _bad_hparams(used, exc)
            return
        check.rule_class = used
    update = _tensor(upd)
    param = _tensor(par) if par is not None else None
    grad = _tensor(grd) if grd is not None else None
    state: dict[str, torch.Tensor] = {}
    missing = [] if param is not None and update is not None else ["param" if param is None else "update"]
    if grd is not None and grad is None:
        missing.append("grad")
    for srow in state_rows:
        t = _tensor(srow)
        if t is None:
            missing.append(f"state {srow['part']}")
        else:
            state[str(srow["part"])] = t
    if missing:
        numel = int(upd["numel"])
        check.reason = (
            f"the values of {', '.join(missing)} were not stored ({numel} elements, more than "
            "max_values); trace with max_values=None to check this update"
        )
        return
    assert param is not None and update is not None
    check.param = param.numpy()
    check.grad = None if grad is None else grad.numpy()
    check.state = {k: v.numpy() for k, v in state.items()}
    check.update = update.numpy()
    observed = param + update
    check.observed = observed.flatten().tolist()
    if check.optimizer is None:
        check.reason = NO_OPTIMIZER
        return
    reasons = []
    if rule is not None:
        try:
            predicted = rule.predict(param, grad, state, check.rule_hparams)
        except rules.CannotPredict as exc:
            reasons.append(f"the {used} rule cannot predict this update: {exc}")
        except _BAD_HPARAMS as exc:
            check.reason = _bad_hparams(used, exc)
            return
        else:
            _settle(check, "rule", predicted, param, observed)
            return
    else:
        reasons.append(f"no update rule is known for {check.optimizer}")
    cls, found = find_class(check.optimizer, bases, extra_classes)
    if cls is None:
        check.reason = "; ".join([*reasons, found])
        return
    dtype = _torch_dtype(check.dtype)
    try:
        state_native = {k: _native(v, state_rows, k) for k, v in state.items()}
        new = replay(
            cls,
            param.to(dtype),
            None if grad is None else grad.to(_torch_dtype(str(grd["dtype"]))),
            state_native,
            check.hparams,
        )
    except Exception as exc:  # noqa: BLE001 - any optimizer failure becomes a sentence
        reasons.append(f"replaying {found} failed: {type(exc).__name__}: {exc}")
        check.reason = "; ".join(reasons)
        return
    _settle(check, "replay", new.to(torch.float64), param, observed)
    check.reason = "; ".join(reasons) or None


NO_OPTIMIZER = "no optimizer made this update (a change outside torch.optim), so no rule says what it should be"

_BAD_HPARAMS = (TypeError, ValueError, KeyError, ArithmeticError)
"""What a rule raises on hyper-parameters of the wrong type (a damaged or hand-made trace)."""


def _bad_hparams(rule_class: str | None, exc: Exception) -> str:
    return (
        f"the traced hyper-parameters do not fit the {rule_class} rule ({type(exc).__name__}: {exc}); "
        "is the trace's hparams column damaged?"
    )


def _native(value: torch.Tensor, state_rows: list[dict[str, Any]], key: str) -> torch.Tensor:
    row = next(r for r in state_rows if r["part"] == key)
    return value.to(_torch_dtype(str(row["dtype"])))


def _settle(check: UpdateCheck, how: str, predicted: torch.Tensor, param: torch.Tensor, observed: torch.Tensor) -> None:
    check.check = how
    check.predicted = predicted.flatten().tolist()
    check.max_abs_error, check.matches = compare(check.dtype, param, predicted, observed)
