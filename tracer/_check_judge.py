"""How :func:`tracer._checks.build_checks` checks each update: rule, replay, or the training
process's verification.

:class:`Judge` fills one :class:`~tracer._checks.UpdateCheck` per update row: the rule's text,
the traced values (float64; a complex tensor as its real view, as ``torch.optim`` steps it),
the dtypes the trace recorded (which the rules compute scalars in), then a prediction, which
``Tolerance.judge`` compares, or a replay, or ``rule_matches`` from a ``verify=True`` trace.

Example::

    judge = Judge(trace.meta.optimizer_bases, (), UpdateCheck)
    check = judge.new_check(step, name, update_row, param_row, grad_row)
    judge.run(check, update_row, param_row, grad_row, state_rows)
    judge.finish()      # the predictions; then Tolerance().judge(checks); judge.verified(checks)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from tracer import rules
from tracer._checks_stacked import MIN_STACK, predict_stacked, stack_key
from tracer._hparams import is_reserved
from tracer._lbfgs_trace import LBFGSCheck, is_lbfgs
from tracer._replay import CannotReplay, find_class, replay
from tracer._row_checks import is_complex, parse_hparams
from tracer.rules._shared import PARAM_DTYPE, STATE_DTYPES, TENSORS

if TYPE_CHECKING:
    from tracer._checks import UpdateCheck

NO_OPTIMIZER = "no optimizer made this update (a change outside torch.optim), so no rule says what it should be"

_BAD_HPARAMS = (TypeError, ValueError, KeyError, ArithmeticError)
"""What a rule raises on hyper-parameters of the wrong type (a damaged or hand-made trace)."""


def _bad_hparams(rule_class: str | None, exc: Exception) -> str:
    return (
        f"the traced hyper-parameters do not fit the {rule_class} rule ({type(exc).__name__}: {exc}); "
        "is the trace's hparams column damaged?"
    )


def _null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def group_of(value: Any) -> int | None:
    """A ``param_group`` cell as an int; None where it is null."""
    return None if _null(value) else int(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_shapes: dict[tuple[Any, ...], tuple[int, ...]] = {}
"""Checked shapes by (shape, dtype): a parameter's is the same at every step, so converting
the ``shape`` cell once per distinct shape, not once per row, saves most of the time."""


def checked_shape(row: dict[str, Any]) -> tuple[int, ...]:
    """The shape of what is checked: a complex parameter's real view has a last axis of 2."""
    shape = row["shape"]
    key = (shape.tobytes() if type(shape) is np.ndarray else tuple(shape), row["dtype"])
    found = _shapes.get(key)
    if found is None:
        dims = tuple(shape.tolist() if type(shape) is np.ndarray else (int(s) for s in shape))
        found = _shapes[key] = (*dims, 2) if is_complex(row["dtype"]) else dims
    return found


def values_of(row: dict[str, Any] | None) -> np.ndarray | None:
    """The row's values in its checked shape, float64; None when not stored. A view, not a copy."""
    values = None if row is None else row.get("values")
    if row is None or values is None or isinstance(values, float):  # NaN: not stored
        return None
    array = values if type(values) is np.ndarray else np.asarray(values)
    if array.dtype.kind == "c":
        array = np.ascontiguousarray(array, dtype=np.complex128).view(np.float64)
    elif array.dtype != np.float64:
        array = array.astype(np.float64)
    return array.reshape(checked_shape(row))


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


def _verdict(upd: dict[str, Any]) -> tuple[bool, float] | None:
    """``(rule_matches, rule_error)`` of a ``verify=True`` update row; None where it has none."""
    matches, error = upd.get("rule_matches"), upd.get("rule_error")
    if _null(matches):
        return None
    return bool(matches), math.nan if error is None or _null(error) else float(error)


class Judge:
    """Checks the updates; what many of them share (rule lookup, hparams, rule text) is done once."""

    def __init__(
        self,
        bases: dict[str, list[str]],
        extra: tuple[type, ...],
        make: Callable[..., UpdateCheck],
        lbfgs: dict[tuple[int, str], LBFGSCheck] | None = None,
    ) -> None:
        self.bases, self.extra, self.make = bases, extra, make
        self.lbfgs = lbfgs or {}  # LBFGS steps, replayed over all their parameters and evaluations
        self._diverged: set[int] = set()
        self._pending: dict[Any, list[tuple[UpdateCheck, rules.Rule, str | None, Any, Any]]] = {}
        self._hparams: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._rules: dict[str, tuple[rules.Rule | None, str | None]] = {}
        self._texts: dict[tuple[str, str], tuple[str, str] | str] = {}
        self._verdicts: dict[int, tuple[bool, float]] = {}

    def _split(self, text: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The group's hyper-parameters, and tracer's reserved keys (``_tensors``, ...), parsed once."""
        if text not in self._hparams:
            parsed = parse_hparams(text, where)
            plain = {k: v for k, v in parsed.items() if not is_reserved(k)}
            self._hparams[text] = plain, {k: v for k, v in parsed.items() if is_reserved(k)}
        return self._hparams[text]

    def new_check(self, step: int, name: str, upd: dict[str, Any], par: Any, grd: Any) -> UpdateCheck:
        hp_text = upd.get("hparams")
        plain, reserved = (
            self._split(hp_text, f"the hparams of the update of {name!r} at step {step}")
            if isinstance(hp_text, str)
            else ({}, {})
        )
        dtype = str(par["dtype"]) if par is not None else str(upd["dtype"])
        check = self.make(
            step=step,
            name=name,
            optimizer=_text(upd.get("optimizer")),
            param_group=group_of(upd.get("param_group")),
            hparams=dict(plain),
            dtype=dtype,
            shape=checked_shape(upd),
            context={**reserved, PARAM_DTYPE: dtype, STATE_DTYPES: {}},
        )
        check.norms = {
            "update": float(upd["norm"]),
            "param": float(par["norm"]) if par is not None else math.nan,
            "grad": float(grd["norm"]) if grd is not None else math.nan,
        }
        verdict = _verdict(upd)
        if verdict is not None:
            self._verdicts[id(check)] = verdict
        return check

    def rule(self, optimizer: str) -> tuple[rules.Rule | None, str | None]:
        if optimizer not in self._rules:
            self._rules[optimizer] = rules.rule_for(optimizer, self.bases.get(optimizer, []))
        return self._rules[optimizer]

    def texts(self, rule: rules.Rule, used: str | None, hp_text: str, hparams: dict[str, Any]) -> tuple[str, str] | str:
        """The rule's ``(text, LaTeX)`` for these hyper-parameters (made once per rule and
        hparams text); the reason, when they do not fit the rule."""
        key = (str(used), hp_text)
        if key not in self._texts:
            try:
                self._texts[key] = (rule.text(hparams), rule.latex(hparams))
            except _BAD_HPARAMS as exc:
                self._texts[key] = _bad_hparams(used, exc)
        return self._texts[key]

    def describe(self, check: UpdateCheck, rule: rules.Rule, used: str | None, hp_text: str) -> bool:
        """Fill in the rule's text and LaTeX; False (with the reason) when the hparams do not fit it."""
        texts = self.texts(rule, used, hp_text, check.hparams)
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
        if check.optimizer is not None and is_lbfgs(check.optimizer, self.bases):
            self._lbfgs(check, upd, par, grd)
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

    def _lbfgs(self, check: UpdateCheck, upd: Any, par: Any, grd: Any) -> None:
        """An LBFGS update: the replay of its whole step (:mod:`tracer._lbfgs_trace`)."""
        found = self.lbfgs.get((check.step, check.name))
        param, update = values_of(par), values_of(upd)
        if found is None or found.predicted is None or param is None or update is None:
            check.reason = found.reason if found is not None and found.reason else self._unstored(upd)
            return
        check.param, check.update, check.grad = param, update, values_of(grd)
        check.check, check.predicted, check.reason = "replay", found.predicted, found.reason
        if found.diverged:
            self._diverged.add(id(check))

    def diverged(self, checks: list[UpdateCheck]) -> None:
        """An LBFGS replay that evaluated its closure elsewhere than the traced step did: the
        update does not follow the rule, whatever its values say."""
        for c in checks:
            if id(c) in self._diverged:
                c.matches = False

    def verified(self, checks: list[UpdateCheck]) -> None:
        """Where neither the rule nor a replay could check an update, the training process's
        verdict (``verify=True``) decides: ``check="verify"``."""
        for c in checks:
            verdict = self._verdicts.get(id(c))
            if verdict is None or c.matches is not None:
                continue
            c.matches, c.max_abs_error = verdict
            c.check, c.reason = "verify", None
            c.mismatches = 0 if c.matches else 1

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
        param, update, grad = values_of(par), values_of(upd), values_of(grd)
        missing = [] if param is not None and update is not None else ["param" if param is None else "update"]
        if grd is not None and grad is None:
            missing.append("grad")
        dtypes = check.context[STATE_DTYPES]
        for srow in state_rows:
            part = str(srow["part"])
            dtypes[part] = str(srow["dtype"])
            value = values_of(srow)
            if value is None:
                missing.append(f"state {part}")
            else:
                check.state[part] = value
        if missing:
            check.reason = self._unstored(upd, missing)
            return False
        check.param, check.update, check.grad = param, update, grad
        return True

    @staticmethod
    def _unstored(upd: Any, missing: Sequence[str] = ("param or update",)) -> str:
        return (
            f"the values of {', '.join(missing)} were not stored ({int(upd['numel'])} elements, more than "
            "max_values); trace with verify=True to check it in the training process, or with "
            "max_values=None to store them"
        )

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
                _held(check.hparams, check.context.get(TENSORS) or {}),
            )
        except CannotReplay as exc:  # the real cause, in words (LBFGS without its closure, ...)
            reasons.append(str(exc))
            check.reason = "; ".join(reasons)
            return
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


def _held(hparams: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters for a replay, a tensor one a tensor again, of its recorded dtype."""
    out = dict(hparams)
    for key, spec in tensors.items():
        if key not in out:
            continue
        if isinstance(spec, dict):
            out[key] = torch.tensor(out[key], dtype=_torch_dtype(str(spec.get("dtype"))))
        elif isinstance(spec, list) and isinstance(out[key], list) and len(spec) == len(out[key]):
            out[key] = [
                torch.tensor(v, dtype=_torch_dtype(str(s.get("dtype")))) if isinstance(s, dict) else v
                for v, s in zip(out[key], spec)
            ]
    return out
