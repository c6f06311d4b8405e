"""Assertions for tests and CI: pin what a training step does, and check it stays so.

Every function takes a trace as a path, the ``run`` of ``tracer.trace``, or a DataFrame
from ``tracer.load``, and raises ``AssertionError`` with a message in the style of
``torch.testing.assert_close``. Tolerances default to ``assert_close``'s for the traced
dtype (for an ``update``, the parameter's dtype).

Example::

    import tracer.testing as tt

    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_one_step(model, optimizer)
    tt.assert_loss(run, 25.0)
    tt.assert_grad(run, "weight", [[-10.0, -20.0]])
    tt.assert_updates_follow_rule(run)
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tracer._diff import close, diff, flat_to_index, frame, tolerances
from tracer._golden import assert_matches_golden

if TYPE_CHECKING:
    import torch

__all__ = [
    "assert_activation",
    "assert_activation_grad",
    "assert_grad",
    "assert_input",
    "assert_loss",
    "assert_matches_golden",
    "assert_param",
    "assert_state",
    "assert_traces_close",
    "assert_update",
    "assert_updates_follow_rule",
]

_ROW_COLUMNS = [
    "step", "seq", "rank", "kind", "name", "call", "part", "shape", "dtype", "numel", "grad_enabled", "values",
]  # fmt: skip
_MAX_LISTED = 10


# --------------------------------------------------------------------------- one tensor


def assert_activation(
    trace: Any,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "",
    rank: int = 0,
    evaluation: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the output of module ``name`` (``""`` = the root module) equals ``expected``.

    Example::

        assert_activation(run, "fc", [[3.0]])          # fc's output at step 0, first call
        assert_activation(run, "lstm", h, part="1.0")  # a tensor inside a returned tuple
        assert_activation(run, "fc", [[2.5]], evaluation=True)  # under torch.no_grad()

    Args:
        trace: a trace path, a ``run``, or a DataFrame from ``tracer.load``.
        name: the module path, as in ``model.named_modules()``.
        expected: anything ``torch.as_tensor`` takes, of the traced shape (complex for a
            complex tensor).
        step, call, part, rank: which row (see the trace columns).
        evaluation: assert on the forward passes run without gradients (``torch.no_grad()``,
            ``inference_mode``: ``grad_enabled`` false), which count their calls apart from
            the training ones. By default the training rows; a trace with no training rows of
            this module (inference only) uses its evaluation rows.
        rtol, atol: as in ``torch.testing.assert_close`` (default: its defaults for the dtype).

    Raises:
        AssertionError: the values differ, the shapes differ, the row is not in the trace,
            or its values were not stored.
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "activation", name, expected, _Row(step, call, part, rank, evaluation), rtol, atol)


def assert_input(
    trace: Any,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "0",
    rank: int = 0,
    evaluation: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert an input of module ``name`` equals ``expected`` (``part``: ``"0"`` = first positional).

    ``evaluation`` chooses the forward passes run without gradients, as in :func:`assert_activation`.

    Example::

        assert_input(run, "", [[1.0, 2.0]])
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "input", name, expected, _Row(step, call, part, rank, evaluation), rtol, atol)


def assert_activation_grad(
    trace: Any,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "",
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the gradient of the loss w.r.t. module ``name``'s output equals ``expected``.

    Example::

        assert_activation_grad(run, "", [[-10.0]])
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "activation_grad", name, expected, _Row(step, call, part, rank), rtol, atol)


def assert_loss(
    trace: Any,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "",
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the loss (the tensor ``.backward()`` was called on) equals ``expected``.

    Example::

        assert_loss(run, 25.0)
        assert_loss(run, 19.36, step=1)
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "loss", "loss", expected, _Row(step, call, part, rank), rtol, atol)


def assert_grad(
    trace: Any,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert ``p.grad`` of parameter ``name``, as the optimizer consumed it, equals ``expected``.

    Example::

        assert_grad(run, "fc.weight", [[-10.0, -20.0]])
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "grad", name, expected, _Row(step, 0, "", rank), rtol, atol)


def assert_param(
    trace: Any,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert parameter ``name`` just before the update of ``step`` equals ``expected``.

    Example::

        assert_param(run, "fc.bias", [0.1], step=1)
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "param", name, expected, _Row(step, 0, "", rank), rtol, atol)


def assert_update(
    trace: Any,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the change ``step`` made to parameter ``name`` (after minus before) equals ``expected``.

    The default tolerances are those of the parameter's dtype.

    Example::

        assert_update(run, "fc.weight", [[0.1, 0.2]])
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "update", name, expected, _Row(step, 0, "", rank), rtol, atol)


def assert_state(
    trace: Any,
    name: str,
    key: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the optimizer state ``key`` of parameter ``name`` before the update equals ``expected``.

    Example::

        assert_state(run, "fc.weight", "momentum_buffer", [[-10.0, -20.0]], step=1)
    """
    __tracebackhide__ = True
    _assert_tensor(trace, "state", name, expected, _Row(step, 0, key, rank), rtol, atol)


class _Row(NamedTuple):
    """Which row of a kind and name an assertion is about."""

    step: int
    call: int
    part: str
    rank: int
    evaluation: bool = False  # the rows recorded without gradients (torch.no_grad, inference_mode)


def _assert_tensor(
    trace: Any, kind: str, name: str, expected: Any, at: _Row, rtol: float | None, atol: float | None
) -> None:
    __tracebackhide__ = True
    import torch

    row, at = _the_row(trace, kind, name, at)
    what = _what(kind, name, at)
    shape = tuple(int(s) for s in row["shape"])
    wanted = _expected_tensor(expected)
    if tuple(wanted.shape) != shape:
        raise AssertionError(
            f"{what}: shape mismatch: traced shape {shape}, expected shape {tuple(wanted.shape)}"
        )
    values = row["values"]
    if values is None or (isinstance(values, float) and np.isnan(values)):
        raise AssertionError(_not_stored(trace, what, row))
    dtype = _param_dtype(trace, name, at.step, at.rank) if kind == "update" else row["dtype"]
    tol = tolerances(dtype, rtol=rtol, atol=atol)
    actual = torch.from_numpy(np.array(values)).reshape(shape)  # float64, or complex128
    if actual.is_complex() or wanted.is_complex():  # compared as complex numbers
        actual, wanted = actual.to(torch.complex128), wanted.to(torch.complex128)
    try:
        torch.testing.assert_close(actual, wanted, rtol=tol[0], atol=tol[1])
    except AssertionError as exc:
        raise AssertionError(_mismatch(exc, actual, wanted, shape, tol, what, dtype, trace)) from None


def _the_row(trace: Any, kind: str, name: str, at: _Row) -> tuple[Any, _Row]:
    """The row asserted on, and ``at`` saying whether it is an evaluation row; or AssertionError."""
    rows = frame(trace, kind=kind, name=name, step=at.step, columns=_ROW_COLUMNS)
    same = (rows["name"] == name) & (rows["call"] == at.call) & (rows["part"] == at.part) & (rows["rank"] == at.rank)
    rows, at = _of_mode(trace, kind, name, rows[same], at)
    if rows.empty:
        raise AssertionError(_missing(trace, kind, name, at))
    return rows.iloc[0], at


def _of_mode(trace: Any, kind: str, name: str, rows: Any, at: _Row) -> tuple[Any, _Row]:
    """The training rows among ``rows``, or the evaluation ones when asked or when they are all
    the trace has of ``name`` (an inference-only trace); ``at`` says which were taken."""
    evaluation = _is_evaluation(rows)
    if at.evaluation:
        return rows[evaluation], at
    if evaluation.any() and evaluation.all() and not _has_training_rows(trace, kind, name):
        return rows, at._replace(evaluation=True)
    return rows[~evaluation], at


def _is_evaluation(rows: Any) -> np.ndarray:
    """Per row: recorded without gradients (``grad_enabled`` false; null counts as training)."""
    return rows["grad_enabled"].eq(False).fillna(False).to_numpy(dtype=bool)


def _has_training_rows(trace: Any, kind: str, name: str) -> bool:
    rows = frame(trace, kind=kind, name=name, columns=["name", "grad_enabled"])
    return bool((~_is_evaluation(rows[rows["name"] == name])).any())


def _mismatch(
    exc: AssertionError,
    actual: torch.Tensor,
    wanted: torch.Tensor,
    shape: tuple[int, ...],
    tol: tuple[float, float],
    what: str,
    dtype: str,
    trace: Any,
) -> str:
    """The message of a failed comparison: torch's, with the first mismatching index added."""
    body = str(exc).split("\n\n", 1)[-1].splitlines()
    bad = np.flatnonzero(~_isclose(actual, wanted, *tol))
    if bad.size:
        flat = int(bad[0])
        first = (
            f"First mismatch at index {flat_to_index(flat, shape)}: traced "
            f"{actual.flatten()[flat].item()!r}, expected {wanted.flatten()[flat].item()!r}"
        )
        if body and body[0].startswith("Mismatched"):
            body.insert(1, first)
        else:  # a 0-d tensor: torch says "Expected x but got y."; say it as for tensors
            body[:1] = ["Mismatched elements: 1 / 1 (100.0%)", first]
    lines = [
        f"{what} is not close to expected!",
        "",
        *body,
        f"Traced dtype {dtype}: rtol={tol[0]:.3g}, atol={tol[1]:.3g}; trace: {_label(trace)}",
    ]
    return "\n".join(lines)


def _isclose(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> np.ndarray:
    import torch

    return torch.isclose(actual, expected, rtol=rtol, atol=atol).flatten().numpy()


def _expected_tensor(expected: Any) -> torch.Tensor:
    """``expected`` as a float64 (or complex128) CPU tensor, without rounding it through float32 first."""
    import torch

    if isinstance(expected, torch.Tensor):
        wide = torch.complex128 if expected.is_complex() else torch.float64
        return expected.detach().to("cpu", wide)
    array = np.asarray(expected)
    return torch.from_numpy(np.array(array, dtype=np.complex128 if np.iscomplexobj(array) else np.float64))


def _what(kind: str, name: str, at: _Row) -> str:
    """``"grad 'fc.weight' at step 0, call 0"``: how messages name the tensor asserted on."""
    text = f"loss at step {at.step}" if (kind, name) == ("loss", "loss") else f"{kind} {name!r} at step {at.step}"
    text += f", call {at.call}"
    if kind == "state":
        text += f", key {at.part!r}"
    elif at.part:
        text += f", part {at.part!r}"
    if at.rank:
        text += f", rank {at.rank}"
    if at.evaluation:
        text += " (evaluation: recorded without gradients)"
    return text


def _label(trace: Any) -> str:
    if isinstance(trace, (str, os.PathLike)):
        return str(trace)
    path = getattr(trace, "path", None)
    return str(path) if path is not None else f"a {type(trace).__name__}"


def _param_dtype(trace: Any, name: str, step: int, rank: int) -> str:
    """The parameter's dtype: an update is judged at the precision of what it changed."""
    rows = frame(trace, kind=["param", "grad"], name=name, step=step, columns=["rank", "kind", "name", "dtype"])
    rows = rows[(rows["name"] == name) & (rows["rank"] == rank)]
    for kind in ("param", "grad"):
        found = rows.loc[rows["kind"] == kind, "dtype"]
        if len(found):
            return str(found.iloc[0])
    return "float64"


def _not_stored(trace: Any, what: str, row: Any) -> str:
    numel = int(row["numel"])
    limit = _max_values(trace)
    limit_text = f"the trace's max_values={limit}" if limit is not None else "the trace's max_values"
    reason = f"its {numel} elements are more than {limit_text}, so only statistics were kept"
    fix = f"trace with tracer.trace(..., max_values=None) or a max_values of at least {numel}"
    return f"{what} has no stored values: {reason}. To assert on its values, {fix}."


def _max_values(trace: Any) -> int | None:
    import pandas as pd

    if isinstance(trace, pd.DataFrame):
        return None
    from tracer._load import trace_path
    from tracer._reader import read_meta

    try:
        return read_meta(trace_path(trace)).get("options", {}).get("max_values")
    except (OSError, ValueError):
        return None


def _missing(trace: Any, kind: str, name: str, at: _Row) -> str:
    """Why no row matched, saying what the trace holds instead (closest names first)."""
    what = _what(kind, name, at)
    rows = frame(trace, kind=kind, columns=["step", "rank", "kind", "name", "call", "part", "grad_enabled"])
    if rows.empty:
        kinds = frame(trace, columns=["kind"])["kind"].unique()
        held = ", ".join(k for k in kinds) or "none"
        return (
            f"no {what}: the trace has no {kind} rows (kinds in it: {held}); "
            f"trace with capture including {kind!r}"
        )
    names = list(dict.fromkeys(rows["name"]))
    if name not in names:
        return f"no {kind} named {name!r} in the trace; its {kind} names are (closest first): " + _listed(
            _closest(name, names), quote=True
        )
    rows = rows[rows["name"] == name]
    evaluation = _is_evaluation(rows)
    if at.evaluation and not evaluation.any():
        return (
            f"no {what}: {kind} {name!r} has no evaluation rows (forward passes under torch.no_grad() "
            "or inference_mode); pass evaluation=False for its training rows"
        )
    other = rows[~evaluation] if at.evaluation else rows[evaluation]
    rows = rows[evaluation] if at.evaluation else rows[~evaluation]
    return _missing_in(rows, kind, name, at, what) + _other_mode_hint(other, at)


def _missing_in(rows: Any, kind: str, name: str, at: _Row, what: str) -> str:
    """Which of rank, step, call or part of ``at`` is not among ``rows`` (those of ``name``)."""
    ranks = sorted({int(r) for r in rows["rank"]})
    if at.rank not in ranks:
        return f"no {what}: {kind} {name!r} is traced on ranks {_listed(ranks)}"
    rows = rows[rows["rank"] == at.rank]
    steps = sorted({int(s) for s in rows["step"]})
    if at.step not in steps:
        return f"no {what}: {kind} {name!r} is traced at steps {_listed(steps)}"
    rows = rows[rows["step"] == at.step]
    calls = sorted({int(c) for c in rows["call"]})
    if at.call not in calls:
        return f"no {what}: {kind} {name!r} at step {at.step} has calls {_listed(calls)}"
    parts = list(dict.fromkeys(rows.loc[rows["call"] == at.call, "part"]))
    label = "state keys" if kind == "state" else "parts"
    return f"no {what}: its {label} are (closest first): " + _listed(_closest(at.part, parts), quote=True)


def _other_mode_hint(other: Any, at: _Row) -> str:
    """``; an evaluation row matches: pass evaluation=True`` when the other mode has the row."""
    match = other[
        (other["rank"] == at.rank) & (other["step"] == at.step) & (other["call"] == at.call) & (other["part"] == at.part)
    ]
    if match.empty:
        return ""
    if at.evaluation:
        return "; a training row matches: pass evaluation=False"
    return "; an evaluation row (recorded without gradients) matches: pass evaluation=True"


def _closest(name: str, names: list[str]) -> list[str]:
    def score(candidate: str) -> float:
        return difflib.SequenceMatcher(None, name, candidate).ratio()

    return sorted(names, key=score, reverse=True)


def _listed(items: list[Any], *, quote: bool = False) -> str:
    shown = [repr(i) if quote else str(i) for i in items[:_MAX_LISTED]]
    more = len(items) - _MAX_LISTED
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")


# --------------------------------------------------------------------------- whole traces


def assert_traces_close(
    a: Any,
    b: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    kinds: str | Iterable[str] | None = None,
) -> None:
    """Assert two traces agree row by row (``tracer.diff(a, b)`` is None).

    Example::

        assert_traces_close("traces/before", run, kinds=["loss", "grad", "update"])

    Raises:
        AssertionError: the first divergence in training order, and how many rows follow it.
    """
    __tracebackhide__ = True
    found = diff(a, b, rtol=rtol, atol=atol, kinds=kinds)
    if found is not None:
        raise AssertionError(f"traces are not close!\n\na: {_label(a)}\nb: {_label(b)}\n{found}")


def assert_updates_follow_rule(
    trace: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    optimizers: Iterable[type] | None = None,
    step: int | None = None,
    name: str | None = None,
) -> None:
    """Assert every traced update is what its optimizer's rule gives from the traced inputs.

    An update that nothing could check (no rule, and no replay possible) fails too, so
    a pass always means "checked". Predicted and observed new values are compared with
    ``torch.testing``'s default tolerances for the parameter's dtype, or ``rtol``/``atol``.

    Example::

        assert_updates_follow_rule(run)
        assert_updates_follow_rule(run, optimizers=[MyOptimizer])  # replay a custom class

    Args:
        trace: a trace path, a ``run``, or a DataFrame from ``tracer.load``.
        rtol, atol: tolerances on the new parameter values.
        optimizers: optimizer classes the report may rebuild to replay updates.
        step, name: check only this step / the parameters matching this glob.
    """
    __tracebackhide__ = True
    from tracer._report import report

    options: dict[str, Any] = {"step": step, "name": name}
    if optimizers is not None:
        options["optimizers"] = tuple(optimizers)
    table = report(trace, **options).to_frame()
    if table["optimizer"].isna().all():
        outside = f" (its {len(table)} traced updates were made outside torch.optim)" if len(table) else ""
        raise AssertionError(
            f"no updates to check in {_label(trace)}{outside}: trace an optimizer with capture including "
            "'grad', 'param' and 'update'"
        )
    params = _param_info(trace)
    failures: list[str] = []
    unchecked = 0
    for row in table.to_dict("records"):
        problem = _rule_problem(row, params, rtol, atol)
        if problem is not None:
            failures.append(problem)
            unchecked += ": not checked: " in problem
    if failures:
        shown = failures[:_MAX_LISTED]
        more = len(failures) - len(shown)
        wrong, total = len(failures) - unchecked, len(table)
        counts = []
        if wrong:
            verb = "does" if wrong == 1 else "do"
            counts.append(f"{wrong} of {total} traced updates {verb} not follow the rule")
        if unchecked:
            counts.append(f"{unchecked} of {total} traced updates could not be checked")
        lines = ["; ".join(counts) + "!", "", *shown]
        if more:
            lines.append(f"... and {more} more")
        lines.append(f"trace: {_label(trace)}")
        raise AssertionError("\n".join(lines))


def _param_info(trace: Any) -> dict[tuple[int, str], tuple[str, tuple[int, ...]]]:
    """``(step, name) -> (dtype, shape)`` of each traced parameter (rank 0 first)."""
    rows = frame(trace, kind="param", columns=["step", "rank", "name", "dtype", "shape"])
    rows = rows.sort_values("rank", kind="stable")
    info: dict[tuple[int, str], tuple[str, tuple[int, ...]]] = {}
    for step, name, dtype, shape in zip(rows["step"], rows["name"], rows["dtype"], rows["shape"]):
        info.setdefault((int(step), name), (str(dtype), tuple(int(s) for s in shape)))
    return info


def _rule_problem(
    row: dict[str, Any],
    params: dict[tuple[int, str], tuple[str, tuple[int, ...]]],
    rtol: float | None,
    atol: float | None,
) -> str | None:
    """None when the row's update follows its rule, else one line (or two) saying why not."""
    where = f"step {int(row['step'])}, {row['name']!r} ({row.get('optimizer') or 'no optimizer'}"
    check = row.get("check")
    where += f", checked by {check})" if isinstance(check, str) else ")"
    matches = row.get("matches")
    if matches is None or (isinstance(matches, float) and np.isnan(matches)) or _is_na(matches):
        reason = row.get("reason") or "the report gave no reason"
        return f"  {where}: not checked: {reason}"
    predicted, observed = _values(row.get("predicted")), _values(row.get("observed"))
    if predicted is None or observed is None or predicted.size != observed.size:
        if bool(matches):
            return None
        error = row.get("max_abs_error")
        return f"  {where}: does not match (max abs error {error})" + _rule_text(row)
    dtype, shape = params.get((int(row["step"]), row["name"]), ("float64", (predicted.size,)))
    if int(np.prod(shape)) != predicted.size:
        shape = (predicted.size,)
    rt, at = tolerances(dtype, rtol=rtol, atol=atol)
    ok = close(observed, predicted, rt, at)
    if ok.all():
        return None
    flat = int(np.flatnonzero(~ok)[0])
    with np.errstate(all="ignore"):
        worst = float(np.nanmax(np.abs(observed - predicted)))
    return (
        f"  {where}: {int((~ok).sum())} / {ok.size} elements differ; first at index "
        f"{flat_to_index(flat, shape)}: observed {float(observed[flat])!r}, predicted "
        f"{float(predicted[flat])!r}; greatest absolute difference {worst:.6g} "
        f"(rtol={rt:.3g}, atol={at:.3g} for {dtype})" + _rule_text(row)
    )


def _rule_text(row: dict[str, Any]) -> str:
    rule = row.get("rule")
    return f"\n      rule: {rule}" if isinstance(rule, str) and rule else ""


def _values(value: Any) -> np.ndarray | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None


def _is_na(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
