"""The update checks of a parameter's steps at once: one array per (parameter, kind).

:func:`tracer._checks.build_checks` checks most updates here. The traced values of one
parameter's param, grad, update and state rows are stacked into one array each (a row per
step), the rule predicts every step of a stack in one call (:mod:`tracer._checks_stacked`,
which checks bit for bit that the rule gives each step as it would alone), and the
:class:`~tracer._check_tolerance.Tolerance` judges all the steps with array operations. The
verdicts are the ones the step-by-step path gives; only the Python work per update is gone.

A parameter whose rows are anything but regular (a step without its param row, values not
stored, a complex dtype, LBFGS, no rule, several rows of one kind at a step, ...) is left to
the step-by-step path, row for row as before.

Example::

    checks, slow = array_checks(rows, judge, group_sizes, order, Tolerance(), UpdateCheck)
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter, methodcaller
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from tracer import _check_judge, rules
from tracer._checks_stacked import predict_arrays
from tracer._lbfgs_trace import is_lbfgs
from tracer._row_checks import is_complex
from tracer.rules._shared import PARAM_DTYPE, STATE_DTYPES

if TYPE_CHECKING:
    from tracer._check_judge import Judge
    from tracer._check_tolerance import Tolerance
    from tracer._checks import UpdateCheck

NEEDED = ("step", "name", "kind", "part", "call", "optimizer", "param_group", "hparams", "dtype", "shape", "numel",
          "norm", "values")  # fmt: skip
"""The columns this path reads; a frame without one of them is checked step by step."""

Ordered = tuple[int, int, "UpdateCheck"]
"""``(step, order, check)``: ``order`` is the (step, parameter)'s first row in the frame."""


_DTYPE, _SHAPE, _BYTES = attrgetter("dtype"), attrgetter("shape"), methodcaller("tobytes")


class _Slow(Exception):
    """This parameter's rows are left to the step-by-step path."""


def array_checks(
    rows: pd.DataFrame,
    judge: Judge,
    group_sizes: dict[tuple[Any, ...], int],
    order: np.ndarray,
    tolerance: Tolerance,
    make: Callable[..., UpdateCheck],
) -> tuple[list[Ordered], np.ndarray]:
    """The checks of every parameter whose rows are regular, and a mask of the rows left to
    the step-by-step path (all of them when a column is missing)."""
    slow = np.ones(len(rows), dtype=bool)
    if not len(rows) or any(c not in rows.columns for c in NEEDED):
        return [], slow
    cols = _Columns(rows)
    out: list[Ordered] = []
    for name, kinds in cols.by_name().items():
        if "update" not in kinds:
            slow[np.concatenate(list(kinds.values()))] = False  # no update: nothing to check
            continue
        try:
            found = _Parameter(cols, name, kinds, judge, group_sizes, order).checks(tolerance, make)
        except _Slow:
            continue
        out += found
        slow[np.concatenate(list(kinds.values()))] = False
    return out, slow


class _Columns:
    """The frame's columns as NumPy arrays and lists, each made once."""

    def __init__(self, rows: pd.DataFrame) -> None:
        self.rows = rows
        self.step = rows["step"].to_numpy(dtype=np.int64)
        self.call = rows["call"].fillna(0).to_numpy(dtype=np.int64)
        self.values = rows["values"].to_numpy(dtype=object)
        self.norm = rows["norm"].to_numpy(dtype=np.float64, na_value=np.nan)
        self.part = rows["part"].fillna("").astype(str).to_numpy(dtype=object)
        self._objects: dict[str, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}  # the stacks of one parameter, reused by the next

    def by_name(self) -> dict[str, dict[str, np.ndarray]]:
        """``{name: {kind: row positions}}``; a state kind is ``"state:PART"``."""
        kind = self.rows["kind"].astype(str).to_numpy(dtype=object)
        state = kind == "state"
        kind[state] = "state:" + self.part[state]
        keys = pd.DataFrame({"name": self.rows["name"].astype(str).to_numpy(dtype=object), "kind": kind})
        out: dict[str, dict[str, np.ndarray]] = {}
        for (name, k), where in keys.groupby(["name", "kind"], sort=False).indices.items():
            out.setdefault(str(name), {})[str(k)] = np.asarray(where)
        return out

    def column(self, name: str) -> np.ndarray:
        """A column as an object array (made once)."""
        found = self._objects.get(name)
        if found is None:
            found = self._objects[name] = self.rows[name].to_numpy(dtype=object, na_value=None)
        return found

    def one(self, column: str, where: np.ndarray) -> Any:
        """The single value ``column`` holds at ``where``; :class:`_Slow` when it holds several
        (or none)."""
        values = self.column(column)[where]
        first = values[0]
        if first is None or (first != first) or bool((values != first).any()):  # None, NaN: null
            raise _Slow
        return first

    def views(self, where: np.ndarray, shape: tuple[int, ...], stacked: np.ndarray) -> list[np.ndarray]:
        """The rows' own values in ``shape`` (read-only views of the trace, not copies); the rows
        of ``stacked`` (their values made float64) where they are of another dtype."""
        values = self.values[where].tolist()
        if set(map(_DTYPE, values)) != {np.float64}:
            return _each(stacked.copy())  # the stack's buffer is reused
        return values if len(shape) == 1 else list(map(methodcaller("reshape", shape), values))

    def stacked(self, where: np.ndarray, numel: int, role: str) -> np.ndarray:
        """The values of rows ``where`` as one float64 array, a row each; :class:`_Slow` unless
        each is stored (a flat real array of ``numel`` numbers, made float64 as the row
        checks make it). The array is ``role``'s buffer: valid until the next stack of ``role``
        (fresh memory costs more than the copy: a long trace's stacks are hundreds of MB)."""
        values = self.values[where].tolist()
        if not values or set(map(type, values)) != {np.ndarray} or set(map(_SHAPE, values)) != {(numel,)}:
            raise _Slow  # not stored, a 0-d array, of another size, ...
        if any(d.kind not in "fiu" for d in set(map(_DTYPE, values))):
            raise _Slow  # a complex tensor's values
        size = len(values) * numel
        buffer = self._buffers.get(role)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[role] = np.empty(size, dtype=np.float64)
        return np.concatenate(values, out=buffer[:size]).reshape(len(values), numel)  # as np.stack, made float64


class _Parameter:
    """One parameter's steps: aligned rows, stacks, predictions and verdicts."""

    def __init__(
        self,
        cols: _Columns,
        name: str,
        kinds: dict[str, np.ndarray],
        judge: Judge,
        group_sizes: dict[tuple[Any, ...], int],
        order: np.ndarray,
    ) -> None:
        self.cols, self.name, self.judge = cols, name, judge
        if any(cols.call[w].any() for w in kinds.values()) or "param" not in kinds:
            raise _Slow  # LBFGS's closure evaluations, or no param rows
        self.upd = kinds["update"]
        self.steps = cols.step[self.upd]
        if np.any(np.diff(self.steps) <= 0):
            raise _Slow  # two update rows at one step (ranks not assembled, ...)
        self.par = self._aligned(kinds["param"], required=True)
        self.grd = self._aligned(kinds["grad"], required=True) if "grad" in kinds else None
        self.parts = {k[6:]: self._aligned(w, required=False) for k, w in kinds.items() if k.startswith("state:")}
        self.optimizer = str(cols.one("optimizer", self.upd))
        self.dtype = str(cols.one("dtype", self.par))
        if is_complex(self.dtype) or is_complex(str(cols.one("dtype", self.upd))):
            raise _Slow
        self.rule, self.used = judge.rule(self.optimizer)
        if self.rule is None or is_lbfgs(self.optimizer, judge.bases):
            raise _Slow
        self.param_group = _check_judge.group_of(cols.one("param_group", self.upd))
        self.shape = self._shape(self.upd)
        if self._shape(self.par) != self.shape:
            raise _Slow
        self.numel = int(np.prod(self.shape))
        self.order = order[self.upd]
        step_list = self.steps.tolist()
        self.group_sizes = [group_sizes.get((s, self.optimizer, self.param_group)) for s in step_list]

    def _aligned(self, where: np.ndarray, *, required: bool) -> np.ndarray:
        """Positions of this kind's rows at the update steps (-1: none at that step)."""
        steps = self.cols.step[where]
        if np.any(np.diff(steps) <= 0):
            raise _Slow
        at = np.searchsorted(steps, self.steps).clip(max=len(steps) - 1)
        found = steps[at] == self.steps
        if required and not found.all():
            raise _Slow
        return np.where(found, where[at], -1)

    def _shape(self, where: np.ndarray) -> tuple[int, ...]:
        """The checked shape, the same at every step."""
        cells = self.cols.column("shape")[where]
        arrays = set(map(type, cells)) == {np.ndarray}
        keys = (
            set(map(_BYTES, cells)) if arrays else {c.tobytes() if type(c) is np.ndarray else tuple(c) for c in cells}
        )
        if len(keys) != 1:
            raise _Slow
        return _check_judge.checked_shape({"shape": cells[0], "dtype": str(self.cols.column("dtype")[where[0]])})

    def checks(self, tolerance: Tolerance, make: Callable[..., UpdateCheck]) -> list[Ordered]:
        cols = self.cols
        hp_text = cols.column("hparams")[self.upd]
        if any(not isinstance(t, str) for t in hp_text):
            raise _Slow
        present = np.stack([w >= 0 for w in self.parts.values()]) if self.parts else np.zeros((0, len(self.upd)))
        keys = pd.DataFrame({"hp": hp_text, "size": [-1 if g is None else g for g in self.group_sizes]})
        for i in range(len(present)):
            keys[f"s{i}"] = present[i]
        param = cols.stacked(self.par, self.numel, "param").reshape(-1, *self.shape)
        update = cols.stacked(self.upd, self.numel, "update").reshape(-1, *self.shape)
        grad = None if self.grd is None else cols.stacked(self.grd, self.numel, "grad").reshape(-1, *self.shape)
        out: list[Ordered] = []
        for _, where in keys.groupby(list(keys.columns), sort=False).indices.items():
            out += self._stack(np.asarray(where), str(hp_text[where[0]]), param, update, grad, tolerance, make)
        return out

    def _stack(
        self,
        where: np.ndarray,
        hp_text: str,
        param: np.ndarray,
        update: np.ndarray,
        grad: np.ndarray | None,
        tolerance: Tolerance,
        make: Callable[..., UpdateCheck],
    ) -> list[Ordered]:
        """The checks of the steps ``where`` (positions among the update steps), which share
        hyper-parameters, group size and the state keys they have."""
        cols, first = self.cols, int(where[0])
        where_text = f"the hparams of the update of {self.name!r} at step {int(self.steps[first])}"
        plain, reserved = self.judge._split(hp_text, where_text)
        texts = self.judge.texts(self.rule, self.used, hp_text, plain) if self.rule is not None else None
        if not isinstance(texts, tuple):
            raise _Slow
        state, dtypes, kept_state = {}, {}, {}
        for part, rows in self.parts.items():
            if rows[first] >= 0:
                at = rows[_rows(where)]
                dtypes[part] = str(cols.one("dtype", at))
                shape = self._shape(at)
                state[part] = cols.stacked(at, int(np.prod(shape)), f"state:{part}").reshape(-1, *shape)
                kept_state[part] = cols.views(at, shape, state[part])
        context = {**reserved, PARAM_DTYPE: self.dtype, STATE_DTYPES: dtypes}
        size = self.group_sizes[first]
        extra = {} if size is None or "params" in plain else {"params": size}
        hparams = {**plain, **context, **extra}
        take = _rows(where)
        p, g, u = param[take], None if grad is None else grad[take], update[take]
        predicted = self._predict(p, g, state, hparams)
        if any(np.may_share_memory(predicted, a) for a in (param, update, grad, *state.values()) if a is not None):
            predicted = predicted.copy()  # a rule that returned its input: the stacks' buffers are reused
        worst, counts, firsts = tolerance.judge_rows(p.reshape(len(where), -1), u.reshape(len(where), -1),
                                                     predicted, self.dtype)  # fmt: skip
        n = len(where)
        norms = zip(
            cols.norm[self.upd[where]].tolist(),
            cols.norm[self.par[where]].tolist(),
            cols.norm[self.grd[where]].tolist() if self.grd is not None else [np.nan] * n,
        )
        template = make(step=0, name=self.name, optimizer=self.optimizer, param_group=self.param_group,
                        hparams={}, dtype=self.dtype, shape=self.shape)  # fmt: skip
        base = template.__dict__
        base.update({"rule_class": self.used, "rule": texts[0], "latex": texts[1], "check": "rule", "group_size": size})
        # the checks hold the trace's own values, as the step-by-step path does: the stacks' buffers are reused
        states = (
            [dict(zip(kept_state, values)) for values in zip(*kept_state.values())] if state else [{} for _ in range(n)]
        )
        grads = [None] * n if g is None or self.grd is None else cols.views(self.grd[where], self.shape, g)
        steps, orders = self.steps[where].tolist(), self.order[where].tolist()
        out: list[Ordered] = []
        cls = type(template)
        olds, updates = cols.views(self.par[where], self.shape, p), cols.views(self.upd[where], self.shape, u)
        for step, order, new, top, bad, at, old, grd, upd, kept, (un, pn, gn) in zip(
            steps, orders, list(predicted), worst, counts, firsts, olds, grads, updates, states, norms
        ):
            c = object.__new__(cls)
            c.__dict__ = {
                **base,
                "step": step,
                "hparams": dict(plain),
                "predicted": new,
                "max_abs_error": top,
                "matches": not bad,
                "param": old,
                "grad": grd,
                "state": kept,  # a dict of its own (made above)
                "update": upd,
                "norms": {"update": un, "param": pn, "grad": gn},
                "mismatches": bad,
                "first_mismatch": at if bad else None,
                "context": {**context, STATE_DTYPES: dict(dtypes)},
            }
            out.append((step, order, c))
        return out

    def _predict(
        self, param: np.ndarray, grad: np.ndarray | None, state: dict[str, np.ndarray], hparams: dict[str, Any]
    ) -> np.ndarray:
        """Every step's new values (a row of flat float64 each): stacked where the rule allows it."""
        rule = self.rule
        assert rule is not None

        def alone(i: int) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
            return (
                _tensor(param[i]),
                None if grad is None else _tensor(grad[i]),
                {k: _tensor(v[i, ...]) for k, v in state.items()},
            )

        n = len(param)
        if n >= _check_judge.MIN_STACK:
            stacked = predict_arrays(rule, param, grad, state, hparams, alone)
            if stacked is not None:
                return stacked
        out = np.empty((n, self.numel))
        for i in range(n):
            try:
                new = rule.predict(*alone(i), hparams)
            except (rules.CannotPredict, *_check_judge._BAD_HPARAMS):
                raise _Slow from None  # the step-by-step path replays it, or says why not
            if new.numel() != self.numel:
                raise _Slow
            out[i] = new.detach().reshape(-1).numpy()
        return out


def _each(values: np.ndarray) -> list[np.ndarray]:
    """The steps' arrays of a stack: row views, a 0-d array each for a scalar state."""
    return list(values) if values.ndim > 1 else [values[i, ...] for i in range(len(values))]


def _rows(where: np.ndarray) -> slice | np.ndarray:
    """``where`` as a slice when it is a run of consecutive positions (a view, not a copy)."""
    if len(where) and int(where[-1]) - int(where[0]) == len(where) - 1:
        return slice(int(where[0]), int(where[-1]) + 1)
    return where


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float64 tensor of its own, as :func:`tracer._check_judge._tensor` makes it."""
    return torch.from_numpy(np.array(array, dtype=np.float64))
