"""One check per traced update: the rule's prediction (or a replay) against what happened.

:func:`check_updates` is the one place that says whether an update follows its rule: the
report, ``diagnose`` and ``tracer.testing.assert_updates_follow_rule`` all call it, so they
give the same verdict on every update. :class:`~tracer._check_tolerance.Tolerance` (importable
from here too) is the one policy behind ``matches``.

How an update is checked (``UpdateCheck.check``):

- ``"rule"``: its values were stored; the optimizer's rule (:mod:`tracer.rules`) predicts the
  new parameter from the traced param, grad and state, in the dtypes the trace recorded (the
  parameter's, its scalar state's, a tensor hyper-parameter's), and :class:`Tolerance` judges it.
- ``"replay"``: no rule fits, but the optimizer class can be rebuilt and stepped once.
- ``"verify"``: neither could check it (its values were not stored, say), but the trace was
  made with ``verify=True``: the training process checked the update against the same rule
  with the default tolerance, and ``rule_matches``/``rule_error`` of its row are the verdict.

>>> checks = check_updates("traces/run1")                  # doctest: +SKIP
>>> [(c.step, c.name, c.matches) for c in checks][:2]       # doctest: +SKIP
[(0, 'fc.weight', True), (0, 'fc.bias', True)]
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracer import rules
from tracer._check_judge import Judge, group_of
from tracer._check_tolerance import Tolerance
from tracer._checks_arrays import array_checks
from tracer._lbfgs_trace import is_lbfgs, lbfgs_checks
from tracer._trace import (
    UPDATE_COLUMNS,
    UPDATE_KINDS,
    NameFilter,
    StepFilter,
    Trace,
    TraceLike,
    filter_frame,
    update_rows,
)

__all__ = ["Tolerance", "UpdateCheck", "build_checks", "check_updates"]


@dataclasses.dataclass
class UpdateCheck:
    """Everything known about one (step, parameter) update, and the verdict on it.

    ``matches`` is True or False when the rule (``check="rule"``), a replay
    (``check="replay"``) or the training process (``check="verify"``) said whether the
    update follows the rule, judged by :class:`Tolerance`; None where nothing could check
    the update, and ``reason`` says why.
    """

    step: int
    name: str
    optimizer: str | None  # None: the update was made outside torch.optim
    param_group: int | None
    hparams: dict[str, Any]  # the param group's, as traced (tracer's reserved keys are in ``context``)
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
    context: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the trace says about dtypes, for the rule: ``_tensors`` (tensor hyper-parameters'
    dtypes), ``_default_dtype``, ``_dtype`` (the parameter's), ``_state_dtypes``."""

    @property
    def observed(self) -> np.ndarray | None:
        """The traced new values (param + update), flat float64; None when not stored."""
        if self.param is None or self.update is None:
            return None
        return (self.param + self.update).reshape(-1)

    @property
    def rule_hparams(self) -> dict[str, Any]:
        """The hyper-parameters a rule sees: the group's, the recorded dtypes (``context``) and,
        for LBFGS, how many parameters share ‖g‖₁."""
        extra = {} if self.group_size is None or "params" in self.hparams else {"params": self.group_size}
        return {**self.hparams, **self.context, **extra}

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
    update and state), never an activation. The checks of a whole Trace are kept with it
    (:meth:`Trace.memo`): asked again with the same optimizers and tolerance (the report
    and the findings of its HTML page), for all steps or some, they are not computed again.

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
    extra, policy = tuple(optimizers), tolerance or Tolerance()
    known: dict[str, list[UpdateCheck]] = opened.memo(("update-checks", extra, policy), dict)
    bases = opened.meta.optimizer_bases
    if "all" not in known and step is None and name is None:
        known["all"] = build_checks(opened.updates(), bases, extra, policy, losses=lambda: _losses(opened, None))
    if "all" in known and name is None:
        return _at_steps(known["all"], step)
    rows = update_rows(opened, kind=UPDATE_KINDS, step=step, name=name, columns=UPDATE_COLUMNS)
    return build_checks(rows, bases, extra, policy, losses=lambda: _losses(opened, step))


def _losses(trace: Trace, step: StepFilter) -> pd.DataFrame:
    """The loss rows an LBFGS replay needs (one per closure evaluation); empty when none."""
    rows = trace.rows(kind="loss", step=step, columns=("step", "call", "values"))
    return rows if {"step", "call", "values"} <= set(rows.columns) else pd.DataFrame()


def _at_steps(checks: list[UpdateCheck], step: StepFilter) -> list[UpdateCheck]:
    """The checks at ``step``, filtered as ``tracer.load`` filters steps."""
    if step is None:
        return list(checks)
    steps = pd.DataFrame({"step": sorted({c.step for c in checks})})
    wanted = set(filter_frame(steps, step=step)["step"].tolist())
    return [c for c in checks if c.step in wanted]


def build_checks(
    df: pd.DataFrame,
    optimizer_bases: dict[str, list[str]],
    extra_classes: Sequence[type] = (),
    tolerance: Tolerance | None = None,
    losses: Callable[[], pd.DataFrame] | None = None,
) -> list[UpdateCheck]:
    """One :class:`UpdateCheck` per ``update`` row of ``df`` (kinds grad/param/update/state);
    ``losses()`` gives the loss rows, read only when an LBFGS step needs them."""
    with no_gc():  # it makes a few objects per row, none in a cycle: collecting them is wasted
        lbfgs = {}
        named = set(df["optimizer"].dropna().tolist()) if len(df) and "optimizer" in df.columns else set()
        if any(is_lbfgs(o, optimizer_bases) for o in named):
            lbfgs = lbfgs_checks(df, losses() if losses else pd.DataFrame(), optimizer_bases)
        return _build(df, optimizer_bases, extra_classes, tolerance, lbfgs)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused (as it was before, after): a long trace's checks
    make hundreds of thousands of objects, and each collection walks all of them. The report
    and its renderings are built under it too (they make few cycles, and free them after)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _build(
    df: pd.DataFrame,
    optimizer_bases: dict[str, list[str]],
    extra_classes: Sequence[type],
    tolerance: Tolerance | None,
    lbfgs: dict[tuple[int, str], Any],
    *,
    arrays: bool = True,
) -> list[UpdateCheck]:
    """The checks of ``df``'s updates: most of them a parameter at a time on arrays
    (:mod:`tracer._checks_arrays`; ``arrays=False``: none), the rest row by row."""
    policy = tolerance or Tolerance()
    judge = Judge(optimizer_bases, tuple(extra_classes), UpdateCheck, lbfgs)
    keep = df["kind"].isin(_KINDS) if len(df) else None
    rows = df if keep is None or bool(keep.all()) else df[keep]  # a trace's updates() are all of these kinds
    order = rows.groupby(["step", "name"], sort=False).ngroup().to_numpy() if len(rows) else np.zeros(0, np.int64)
    group_sizes = _group_sizes(rows)
    done, slow = array_checks(rows, judge, group_sizes, order, policy, UpdateCheck) if arrays else ([], None)
    events = _events(rows if slow is None else rows[slow], order if slow is None else order[slow])
    checks = []
    for (step, name), entry in events.items():
        upd = entry.get("update")
        if upd is None:
            continue
        par, grd = entry.get("param"), entry.get("grad")
        check = judge.new_check(int(step), str(name), upd, par, grd)
        # a rule may need the size of the group (LBFGS's first step scales by ‖g‖₁ of all)
        check.group_size = group_sizes.get((int(step), check.optimizer, check.param_group))
        judge.run(check, upd, par, grd, entry["state"])
        checks.append((int(step), entry["order"], check))
    judge.finish()
    row_checks = [c for _, _, c in checks]
    policy.judge([c for c in row_checks if c.predicted is not None])
    judge.diverged(row_checks)
    judge.verified(row_checks)
    ordered = done + checks
    ordered.sort(key=lambda t: (t[0], t[1]))  # training order: by step, then each update's first row
    return [c for _, _, c in ordered]


_KINDS = ("grad", "param", "update", "state")
_EVENT_COLUMNS = ("step", "name", "kind", "part", "optimizer", "param_group", "hparams", "dtype", "shape", "numel",
                  "norm", "values", "rule_error", "rule_matches", "call")  # fmt: skip


def _events(rows: pd.DataFrame, order: np.ndarray) -> dict[tuple[int, str], dict[str, Any]]:
    """The rows of each (step, parameter), by kind, and the position of its first row (``order``)."""
    columns = [c for c in _EVENT_COLUMNS if c in rows.columns]
    # one pass in plain Python: pandas grouping per update costs far more than the check
    events: dict[tuple[int, str], dict[str, Any]] = {}
    keys = zip(rows["step"].tolist(), rows["name"].tolist()) if len(rows) else iter(())
    for key, at, row in zip(keys, order.tolist(), _records(rows, columns)):
        entry = events.get(key)
        if entry is None:
            entry = events[key] = {"state": [], "order": at}
        kind = row["kind"]
        if kind != "state" and row.get("call", 0) != 0:
            continue  # LBFGS's later closure evaluations: the LBFGS replay reads them from the frame
        if kind == "state":
            entry["state"].append(row)
        elif kind not in entry:
            entry[kind] = row
    return events


def _group_sizes(rows: pd.DataFrame) -> dict[tuple[Any, ...], int]:
    """``{(step, optimizer, param group): parameters}``: how many parameters each group updated
    (those with a param row at that step)."""
    if not len(rows):
        return {}
    call = rows["call"].fillna(0) if "call" in rows.columns else 0
    params = rows[(rows["kind"] == "param") & (call == 0)].drop_duplicates(["step", "name"])
    none = pd.Series(None, index=params.index, dtype=object)
    optimizer = params["optimizer"] if "optimizer" in params.columns else none
    group = params["param_group"] if "param_group" in params.columns else none
    opt_codes, opt_names = pd.factorize(optimizer.astype(object), use_na_sentinel=True)
    group_codes, group_values = pd.factorize(group.astype(object), use_na_sentinel=True)
    keys = pd.DataFrame({"step": params["step"].to_numpy(np.int64), "o": opt_codes, "g": group_codes})
    counts = keys.groupby(["step", "o", "g"], sort=False).size()
    names = [_text(o) for o in opt_names.tolist()]
    groups = [group_of(g) for g in group_values.tolist()]
    return {
        (step, names[o] if o >= 0 else None, groups[g] if g >= 0 else None): n
        for (step, o, g), n in zip(counts.index.tolist(), counts.tolist())
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _records(rows: pd.DataFrame, columns: list[str]) -> Any:
    """The rows as dicts of ``columns``, made from whole columns (not row by row)."""
    return (dict(zip(columns, values)) for values in zip(*(_as_list(rows[c]) for c in columns)))


def _as_list(column: pd.Series) -> list[Any]:
    """A column as a list. An Arrow-backed string column (kind, name, hparams, ...) repeats a
    few strings many times: each distinct one is made into a Python string once."""
    arrow = getattr(column.array, "_pa_array", None)
    if arrow is None or not pa.types.is_string(arrow.type) and not pa.types.is_large_string(arrow.type):
        return column.tolist()
    encoded = pc.dictionary_encode(arrow).combine_chunks()
    strings = encoded.dictionary.to_pylist()
    return [None if i is None else strings[i] for i in encoded.indices.to_pylist()]
