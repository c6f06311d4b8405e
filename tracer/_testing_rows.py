"""The machinery behind ``tracer.testing``'s one-tensor assertions: find the row, compare it,
and say what went wrong in the style of ``torch.testing.assert_close``."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tracer._tolerances import tolerances
from tracer._trace import KindFilter, NameFilter, StepFilter, Trace

if TYPE_CHECKING:
    import pandas as pd
    import torch

_ROW_COLUMNS = (
    "step", "seq", "rank", "kind", "name", "call", "part", "shape", "dtype", "numel", "grad_enabled", "values",
)  # fmt: skip
MAX_LISTED = 10


class At(NamedTuple):
    """Which row of a kind and name an assertion is about."""

    step: int
    call: int
    part: str
    rank: int
    evaluation: bool = False  # the rows recorded without gradients (torch.no_grad, inference_mode)


def label(trace: Trace) -> str:
    """How messages name a trace: its path, or ``a DataFrame``."""
    return "a DataFrame" if trace.path is None else str(trace.path)


def rows(
    trace: Trace, kind: KindFilter = None, name: NameFilter = None, step: StepFilter = None, *, columns: Sequence[str]
) -> pd.DataFrame:
    """``trace.rows(...)``, with every column asked for: a DataFrame that lacks one is a ValueError."""
    found = trace.rows(kind=kind, name=name, step=step, columns=columns)
    missing = [c for c in columns if c not in found.columns]
    if missing:
        raise ValueError(
            f"the DataFrame lacks the trace column(s) {missing}; pass the DataFrame that "
            "tracer.load(path) returns, with all its columns"
        )
    return found


def assert_tensor(
    trace: Trace, kind: str, name: str, expected: Any, at: At, rtol: float | None, atol: float | None
) -> None:
    """Compare the values of one row with ``expected``; AssertionError saying where they differ."""
    __tracebackhide__ = True
    import torch

    row, at = the_row(trace, kind, name, at)
    what = describe(kind, name, at)
    shape = tuple(int(s) for s in row["shape"])
    wanted = expected_tensor(expected)
    if tuple(wanted.shape) != shape:
        raise AssertionError(f"{what}: shape mismatch: traced shape {shape}, expected shape {tuple(wanted.shape)}")
    values = row["values"]
    if values is None or (isinstance(values, float) and np.isnan(values)):
        raise AssertionError(not_stored(trace, what, row))
    dtype = param_dtype(trace, name, at.step, at.rank) if kind == "update" else row["dtype"]
    tol = tolerances(dtype, rtol=rtol, atol=atol)
    actual = torch.from_numpy(np.array(values)).reshape(shape)  # float64, or complex128
    if actual.is_complex() or wanted.is_complex():  # compared as complex numbers
        actual, wanted = actual.to(torch.complex128), wanted.to(torch.complex128)
    try:
        torch.testing.assert_close(actual, wanted, rtol=tol[0], atol=tol[1])
    except AssertionError as exc:
        raise AssertionError(mismatch(exc, actual, wanted, tol, what, dtype, trace)) from None


def the_row(trace: Trace, kind: str, name: str, at: At) -> tuple[Any, At]:
    """The row asserted on, and ``at`` saying whether it is an evaluation row; or AssertionError."""
    found = rows(trace, kind, name, at.step, columns=_ROW_COLUMNS)
    same = (found["name"] == name) & (found["call"] == at.call) & (found["part"] == at.part)
    found, at = _of_mode(trace, kind, name, found[same & (found["rank"] == at.rank)], at)
    if found.empty:
        raise AssertionError(missing(trace, kind, name, at))
    return found.iloc[0], at


def _of_mode(trace: Trace, kind: str, name: str, found: Any, at: At) -> tuple[Any, At]:
    """The training rows among ``found``, or the evaluation ones when asked or when they are all
    the trace has of ``name`` (an inference-only trace); ``at`` says which were taken."""
    evaluation = _is_evaluation(found)
    if at.evaluation:
        return found[evaluation], at
    if evaluation.any() and evaluation.all() and not _has_training_rows(trace, kind, name):
        return found, at._replace(evaluation=True)
    return found[~evaluation], at


def _is_evaluation(found: Any) -> np.ndarray:
    """Per row: recorded without gradients (``grad_enabled`` false; null counts as training)."""
    return found["grad_enabled"].eq(False).fillna(False).to_numpy(dtype=bool)


def _has_training_rows(trace: Trace, kind: str, name: str) -> bool:
    found = rows(trace, kind, name, columns=["name", "grad_enabled"])
    return bool((~_is_evaluation(found[found["name"] == name])).any())


def mismatch(
    exc: AssertionError,
    actual: torch.Tensor,
    wanted: torch.Tensor,
    tol: tuple[float, float],
    what: str,
    dtype: str,
    trace: Trace,
) -> str:
    """The message of a failed comparison: torch's, with the first mismatching index added."""
    import torch

    body = str(exc).split("\n\n", 1)[-1].splitlines()
    bad = np.flatnonzero(~torch.isclose(actual, wanted, rtol=tol[0], atol=tol[1]).flatten().numpy())
    if bad.size:
        flat = int(bad[0])
        first = (
            f"First mismatch at index {index_of(flat, tuple(actual.shape))}: traced "
            f"{actual.flatten()[flat].item()!r}, expected {wanted.flatten()[flat].item()!r}"
        )
        if body and body[0].startswith("Mismatched"):
            body.insert(1, first)
        else:  # a 0-d tensor: torch says "Expected x but got y."; say it as for tensors
            body[:1] = ["Mismatched elements: 1 / 1 (100.0%)", first]
    return "\n".join(
        [
            f"{what} is not close to expected!",
            "",
            *body,
            f"Traced dtype {dtype}: rtol={tol[0]:.3g}, atol={tol[1]:.3g}; trace: {label(trace)}",
        ]
    )


def expected_tensor(expected: Any) -> torch.Tensor:
    """``expected`` as a float64 (or complex128) CPU tensor, without rounding it through float32 first."""
    import torch

    if isinstance(expected, torch.Tensor):
        wide = torch.complex128 if expected.is_complex() else torch.float64
        return expected.detach().to("cpu", wide)
    array = np.asarray(expected)
    return torch.from_numpy(np.array(array, dtype=np.complex128 if np.iscomplexobj(array) else np.float64))


def describe(kind: str, name: str, at: At) -> str:
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


def param_dtype(trace: Trace, name: str, step: int, rank: int) -> str:
    """The parameter's dtype: an update is judged at the precision of what it changed."""
    found = rows(trace, ["param", "grad"], name, step, columns=["rank", "kind", "name", "dtype"])
    found = found[(found["name"] == name) & (found["rank"] == rank)]
    for kind in ("param", "grad"):
        dtypes = found.loc[found["kind"] == kind, "dtype"]
        if len(dtypes):
            return str(dtypes.iloc[0])
    return "float64"


def not_stored(trace: Trace, what: str, row: Any) -> str:
    numel = int(row["numel"])
    limit = trace.meta.options.max_values
    limit_text = f"the trace's max_values={limit}" if limit is not None else "the trace's max_values"
    reason = f"its {numel} elements are more than {limit_text}, so only statistics were kept"
    fix = f"trace with tracer.trace(..., max_values=None) or a max_values of at least {numel}"
    return f"{what} has no stored values: {reason}. To assert on its values, {fix}."


def missing(trace: Trace, kind: str, name: str, at: At) -> str:
    """Why no row matched, saying what the trace holds instead (closest names first)."""
    what = describe(kind, name, at)
    found = rows(trace, kind, columns=["step", "rank", "kind", "name", "call", "part", "grad_enabled"])
    if found.empty:
        held = ", ".join(dict.fromkeys(trace.rows(columns=["kind"])["kind"])) or "none"
        return f"no {what}: the trace has no {kind} rows (kinds in it: {held}); trace with capture including {kind!r}"
    names = list(dict.fromkeys(found["name"]))
    if name not in names:
        return f"no {kind} named {name!r} in the trace; its {kind} names are (closest first): " + listed(
            closest(name, names), quote=True
        )
    found = found[found["name"] == name]
    evaluation = _is_evaluation(found)
    if at.evaluation and not evaluation.any():
        return (
            f"no {what}: {kind} {name!r} has no evaluation rows (forward passes under torch.no_grad() "
            "or inference_mode); pass evaluation=False for its training rows"
        )
    other = found[~evaluation] if at.evaluation else found[evaluation]
    found = found[evaluation] if at.evaluation else found[~evaluation]
    return _missing_in(found, kind, name, at, what) + _other_mode_hint(other, at)


def _missing_in(found: Any, kind: str, name: str, at: At, what: str) -> str:
    """Which of rank, step, call or part of ``at`` is not among ``found`` (the rows of ``name``)."""
    ranks = sorted({int(r) for r in found["rank"]})
    if at.rank not in ranks:
        return f"no {what}: {kind} {name!r} is traced on ranks {listed(ranks)}"
    found = found[found["rank"] == at.rank]
    steps = sorted({int(s) for s in found["step"]})
    if at.step not in steps:
        return f"no {what}: {kind} {name!r} is traced at steps {listed(steps)}"
    found = found[found["step"] == at.step]
    calls = sorted({int(c) for c in found["call"]})
    if at.call not in calls:
        return f"no {what}: {kind} {name!r} at step {at.step} has calls {listed(calls)}"
    parts = list(dict.fromkeys(found.loc[found["call"] == at.call, "part"]))
    what_parts = "state keys" if kind == "state" else "parts"
    return f"no {what}: its {what_parts} are (closest first): " + listed(closest(at.part, parts), quote=True)


def _other_mode_hint(other: Any, at: At) -> str:
    """``; an evaluation row matches: pass evaluation=True`` when the other mode has the row."""
    match = other[
        (other["rank"] == at.rank)
        & (other["step"] == at.step)
        & (other["call"] == at.call)
        & (other["part"] == at.part)
    ]
    if match.empty:
        return ""
    if at.evaluation:
        return "; a training row matches: pass evaluation=False"
    return "; an evaluation row (recorded without gradients) matches: pass evaluation=True"


def index_of(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index in a tensor of ``shape`` of its ``flat``-th element (row-major): ``(0, 1)``."""
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def closest(name: str, names: list[str]) -> list[str]:
    """``names``, the most like ``name`` first."""
    return sorted(names, key=lambda candidate: difflib.SequenceMatcher(None, name, candidate).ratio(), reverse=True)


def listed(items: list[Any], *, quote: bool = False) -> str:
    """At most ``MAX_LISTED`` items, comma-separated, and how many more there are."""
    shown = [repr(i) if quote else str(i) for i in items[:MAX_LISTED]]
    more = len(items) - MAX_LISTED
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")
