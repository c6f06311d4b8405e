"""One check per traced update: the rule's prediction (or a replay) against what happened.

:func:`check_updates` is the one place that says whether an update follows its rule: the
report, ``diagnose`` and ``tracer.testing.assert_updates_follow_rule`` all call it, so they
give the same verdict on every update. :class:`~tracer._check_tolerance.Tolerance` (importable
from here too) is the one policy behind ``matches``.

>>> checks = check_updates("traces/run1")                  # doctest: +SKIP
>>> [(c.step, c.name, c.matches) for c in checks][:2]       # doctest: +SKIP
[(0, 'fc.weight', True), (0, 'fc.bias', True)]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from tracer import rules
from tracer._check_tolerance import Tolerance
from tracer._checks_stacked import MIN_STACK, predict_stacked, stack_key
from tracer._replay import find_class, replay
from tracer._row_checks import is_complex, parse_hparams
from tracer._trace import UPDATE_KINDS, NameFilter, StepFilter, Trace, TraceLike, filter_frame

__all__ = ["Tolerance", "UpdateCheck", "build_checks", "check_updates"]


@dataclasses.dataclass
class UpdateCheck:
    """Everything known about one (step, parameter) update, and the verdict on it.

    ``matches`` is True or False when the rule (``check="rule"``) or a replay
    (``check="replay"``) predicted the new value, judged by :class:`Tolerance`; None where
    nothing could check the update, and ``reason`` says why.
    """

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
    predicted: np.ndarray | None = None  # the new values the check predicts, flat float64
    max_abs_error: float | None = None
    matches: bool | None = None
    check: str | None = None
    reason: str | None = None
    param: np.ndarray | None = None  # the traced values (float64, a complex tensor as its real view)
    grad: np.ndarray | None = None
    state: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    update: np.ndarray | None = None
    norms: dict[str, float] = dataclasses.field(default_factory=dict)
    group_size: int | None = None  # parameters updated in this param group at this step
    mismatches: int = 0  # elements outside the tolerance
    first_mismatch: int | None = None  # flat index of the first of them

    @property
    def observed(self) -> np.ndarray | None:
        """The traced new values (param + update), flat float64; None when not stored."""
        if self.param is None or self.update is None:
            return None
        return (self.param + self.update).reshape(-1)

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


# --------------------------------------------------------------------------- the one entry point


def check_updates(
    trace: TraceLike,
    *,
    optimizers: Sequence[type] = (),
    tolerance: Tolerance | None = None,
    step: StepFilter = None,
    name: NameFilter = None,
) -> list[UpdateCheck]:
    """Check every traced update against its optimizer's rule, in training order.

    Reads only the rows an update check needs (:meth:`Trace.updates`: grad, param,
    update and state), never an activation. The checks of a whole Trace are kept with it:
    asked again (the findings of a report's HTML page), for all steps or some, they are
    not computed again.

    Example::

        bad = [c for c in check_updates("traces/run1") if c.matches is False]

    Args:
        trace: a trace directory, a ``run``, a DataFrame from ``tracer.load`` or a Trace.
        optimizers: optimizer classes outside ``torch.optim`` that a replay may rebuild
            (a class named in a trace is never imported).
        tolerance: the policy of ``matches``; default ``Tolerance()``.
        step, name: only these steps / parameters (as in ``tracer.load``).
    """
    opened = Trace.open(trace)
    key = (tuple(optimizers), tolerance or Tolerance())
    known = _done.get(opened, {}).get(key)
    if known is not None and name is None:
        return _at_steps(known, step)
    if step is None and name is None:
        _done.setdefault(opened, {})[key] = build_checks(opened.updates(), opened.meta.optimizer_bases, *key)
        return list(_done[opened][key])
    return build_checks(opened.rows(kind=UPDATE_KINDS, step=step, name=name), opened.meta.optimizer_bases, *key)


def _at_steps(checks: list[UpdateCheck], step: StepFilter) -> list[UpdateCheck]:
    """The checks at ``step``, filtered as ``tracer.load`` filters steps."""
    if step is None:
        return list(checks)
    steps = pd.DataFrame({"step": sorted({c.step for c in checks})})
    wanted = set(filter_frame(steps, step=step)["step"].tolist())
    return [c for c in checks if c.step in wanted]


_done: weakref.WeakKeyDictionary[Trace, dict[tuple[Any, ...], list[UpdateCheck]]] = weakref.WeakKeyDictionary()
"""The checks of every update of a Trace, per (optimizers, tolerance), kept while the Trace lives."""


def build_checks(
    df: pd.DataFrame,
    optimizer_bases: dict[str, list[str]],
    extra_classes: Sequence[type] = (),
    tolerance: Tolerance | None = None,
) -> list[UpdateCheck]:
    """One :class:`UpdateCheck` per ``update`` row of ``df`` (kinds grad/param/update/state)."""
    judge = _Judge(optimizer_bases, tuple(extra_classes))
    events, group_sizes = _events(df)
    checks = []
    for (step, name), entry in events.items():
        upd = entry.get("update")
        if upd is None:
            continue
        check = judge.new_check(int(step), str(name), upd, entry.get("param"), entry.get("grad"))
        # a rule may need the size of the group (LBFGS's first step scales by ‖g‖₁ of all)
        check.group_size = group_sizes.get((step, upd["optimizer"], check.param_group))
        judge.run(check, upd, entry.get("param"), entry.get("grad"), entry["state"])
        checks.append(check)
    judge.finish()
    (tolerance or Tolerance()).judge([c for c in checks if c.predicted is not None])
    checks.sort(key=lambda c: c.step)  # stable: training order within a step
    return checks


_EVENT_COLUMNS = ("step", "name", "kind", "part", "optimizer", "param_group", "hparams", "dtype", "shape", "numel",
                  "norm", "values")  # fmt: skip


def _events(df: pd.DataFrame) -> tuple[dict[tuple[int, str], dict[str, Any]], dict[tuple[Any, ...], int]]:
    """The rows of each (step, parameter), by kind; and how many parameters each group updated."""
    rows = df[df["kind"].isin(["grad", "param", "update", "state"])] if len(df) else df
    columns = [c for c in _EVENT_COLUMNS if c in rows.columns]
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
            key = (row["step"], row.get("optimizer"), _group(row.get("param_group")))
            group_sizes[key] = group_sizes.get(key, 0) + 1
    return events, group_sizes


def _group(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA else int(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _values(row: dict[str, Any] | None) -> np.ndarray | None:
    """The row's values in its shape, float64 (a complex tensor as its real view, shape + (2,),
    as ``torch.optim`` steps it); None when not stored. A view, not a copy."""
    values = None if row is None else row.get("values")
    if row is None or values is None or isinstance(values, float):  # NaN: not stored
        return None
    array = values if type(values) is np.ndarray else np.asarray(values)
    if array.dtype.kind == "c":
        array = np.ascontiguousarray(array, dtype=np.complex128).view(np.float64)
    return array.astype(np.float64, copy=False).reshape(_checked_shape(row))


def _checked_shape(row: dict[str, Any]) -> tuple[int, ...]:
    """The shape of what is checked: a complex parameter's real view has a last axis of 2."""
    shape = row["shape"]
    dims = tuple(shape.tolist() if type(shape) is np.ndarray else (int(s) for s in shape))
    return (*dims, 2) if _is_complex(row["dtype"]) else dims


_is_complex = functools.cache(is_complex)


def _tensor(array: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A tensor of its own (the arrays are read-only views of the trace) for a rule to compute on."""
    tensor = torch.from_numpy(np.array(array, dtype=np.float64))
    return tensor if dtype == torch.float64 else tensor.to(dtype)


def _torch_dtype(name: str) -> torch.dtype:
    """The dtype a checked tensor is replayed in: a complex one's real view takes its parts' dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        return torch.float64
    return dtype.to_real() if dtype.is_complex else dtype


NO_OPTIMIZER = "no optimizer made this update (a change outside torch.optim), so no rule says what it should be"

_BAD_HPARAMS = (TypeError, ValueError, KeyError, ArithmeticError)
"""What a rule raises on hyper-parameters of the wrong type (a damaged or hand-made trace)."""


def _bad_hparams(rule_class: str | None, exc: Exception) -> str:
    return (
        f"the traced hyper-parameters do not fit the {rule_class} rule ({type(exc).__name__}: {exc}); "
        "is the trace's hparams column damaged?"
    )


class _Judge:
    """Checks the updates; what many of them share (rule lookup, hparams, rule text) is done once."""

    def __init__(self, bases: dict[str, list[str]], extra: tuple[type, ...]) -> None:
        self.bases, self.extra = bases, extra
        self._pending: dict[Any, list[tuple[UpdateCheck, rules.Rule, str | None, Any, Any]]] = {}
        self._hparams: dict[str, dict[str, Any]] = {}
        self._rules: dict[str, tuple[rules.Rule | None, str | None]] = {}
        self._texts: dict[tuple[str, str], tuple[str, str] | str] = {}

    def new_check(self, step: int, name: str, upd: dict[str, Any], par: Any, grd: Any) -> UpdateCheck:
        hp_text = upd.get("hparams")
        if isinstance(hp_text, str) and hp_text not in self._hparams:
            self._hparams[hp_text] = parse_hparams(hp_text, f"the hparams of the update of {name!r} at step {step}")
        check = UpdateCheck(
            step=step,
            name=name,
            optimizer=_text(upd.get("optimizer")),
            param_group=_group(upd.get("param_group")),
            hparams=dict(self._hparams[hp_text]) if isinstance(hp_text, str) else {},
            dtype=str(par["dtype"]) if par is not None else "float64",
            shape=_checked_shape(upd),
        )
        check.norms = {
            "update": float(upd["norm"]),
            "param": float(par["norm"]) if par is not None else math.nan,
            "grad": float(grd["norm"]) if grd is not None else math.nan,
        }
        return check

    def rule(self, optimizer: str) -> tuple[rules.Rule | None, str | None]:
        if optimizer not in self._rules:
            self._rules[optimizer] = rules.rule_for(optimizer, self.bases.get(optimizer, []))
        return self._rules[optimizer]

    def describe(self, check: UpdateCheck, rule: rules.Rule, used: str | None, hp_text: str) -> bool:
        """Fill in the rule's text and LaTeX; False (with the reason) when the hparams do not fit it."""
        key = (str(used), hp_text)
        if key not in self._texts:
            try:
                self._texts[key] = (rule.text(check.hparams), rule.latex(check.hparams))
            except _BAD_HPARAMS as exc:
                self._texts[key] = _bad_hparams(used, exc)
        texts = self._texts[key]
        if isinstance(texts, str):
            check.reason = texts
            return False
        check.rule, check.latex = texts
        check.rule_class = used
        return True

    def run(
        self, check: UpdateCheck, upd: dict[str, Any], par: Any, grd: Any, state_rows: list[dict[str, Any]]
    ) -> None:
        rule, used = self.rule(check.optimizer) if check.optimizer is not None else (None, None)
        if rule is not None and not self.describe(check, rule, used, str(upd.get("hparams"))):
            return
        if not self._take_values(check, upd, par, grd, state_rows):
            return
        if check.optimizer is None:
            check.reason = NO_OPTIMIZER
            return
        if rule is not None:  # predicted in :meth:`finish`, stacked where the rule allows it
            key = stack_key(check, used, str(upd.get("hparams")))
            self._pending.setdefault(key or id(check), []).append((check, rule, used, grd, state_rows))
        else:
            self._replay(check, grd, state_rows, [f"no update rule is known for {check.optimizer}"])

    def finish(self) -> None:
        """Predict every update :meth:`run` left to its rule: a stack of steps at once where the
        rule gives each step as it would alone (:mod:`tracer._checks_stacked`), else one by one."""
        for group in self._pending.values():
            rule = group[0][1]
            stacked = predict_stacked(rule, [g[0] for g in group], self._inputs) if len(group) >= MIN_STACK else None
            for i, (check, _, used, grd, state_rows) in enumerate(group):
                if stacked is not None:
                    check.check, check.predicted = "rule", stacked[i]
                else:
                    self._predict_alone(check, rule, used, grd, state_rows)
        self._pending.clear()

    def _predict_alone(self, check: UpdateCheck, rule: rules.Rule, used: str | None, grd: Any, state_rows: Any) -> None:
        try:
            predicted = rule.predict(*self._inputs(check), check.rule_hparams)
        except rules.CannotPredict as exc:
            self._replay(check, grd, state_rows, [f"the {used} rule cannot predict this update: {exc}"])
        except _BAD_HPARAMS as exc:
            check.reason = _bad_hparams(used, exc)
        else:
            self._settle(check, "rule", predicted)

    def _take_values(self, check: UpdateCheck, upd: Any, par: Any, grd: Any, state_rows: list[Any]) -> bool:
        """The traced arrays onto ``check``; False (with the reason) when some were not stored."""
        param, update, grad = _values(par), _values(upd), _values(grd)
        missing = [] if param is not None and update is not None else ["param" if param is None else "update"]
        if grd is not None and grad is None:
            missing.append("grad")
        for srow in state_rows:
            value = _values(srow)
            if value is None:
                missing.append(f"state {srow['part']}")
            else:
                check.state[str(srow["part"])] = value
        if missing:
            check.reason = (
                f"the values of {', '.join(missing)} were not stored ({int(upd['numel'])} elements, more than "
                "max_values); trace with max_values=None to check this update"
            )
            return False
        check.param, check.update, check.grad = param, update, grad
        return True

    @staticmethod
    def _inputs(check: UpdateCheck) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        assert check.param is not None
        grad = None if check.grad is None else _tensor(check.grad)
        return _tensor(check.param), grad, {k: _tensor(v) for k, v in check.state.items()}

    def _replay(self, check: UpdateCheck, grd: Any, state_rows: list[dict[str, Any]], reasons: list[str]) -> None:
        """Check by stepping a fresh optimizer of the traced class, where one can be rebuilt."""
        assert check.optimizer is not None and check.param is not None
        cls, found = find_class(check.optimizer, self.bases.get(check.optimizer, []), self.extra)
        if cls is None:
            check.reason = "; ".join([*reasons, found])
            return
        dtypes = {str(r["part"]): _torch_dtype(str(r["dtype"])) for r in state_rows}
        try:
            new = replay(
                cls,
                _tensor(check.param, _torch_dtype(check.dtype)),
                None if check.grad is None else _tensor(check.grad, _torch_dtype(str(grd["dtype"]))),
                {k: _tensor(v, dtypes[k]) for k, v in check.state.items()},
                check.hparams,
            )
        except Exception as exc:
            reasons.append(f"replaying {found} failed: {type(exc).__name__}: {exc}")
            check.reason = "; ".join(reasons)
            return
        self._settle(check, "replay", new)
        check.reason = "; ".join(reasons) or None

    @staticmethod
    def _settle(check: UpdateCheck, how: str, predicted: torch.Tensor) -> None:
        """Keep the prediction; :meth:`Tolerance.judge` compares all of them at the end."""
        check.check = how
        check.predicted = predicted.detach().reshape(-1).numpy().astype(np.float64, copy=False)
