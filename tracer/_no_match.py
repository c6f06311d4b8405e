"""Why a filter matched nothing: the closest names and the range of steps, in one sentence.

An empty answer must never be silent (README, "Load filters"): ``tracer.load`` warns with
this sentence, and the command line exits 2 with it.

>>> why_empty(tracer.open("traces/run1"), kind="grad", name="fc3*", step=None)  # doctest: +SKIP
"no rows match name='fc3*' among the grad rows; names there: fc1.weight, ... (closest: 'fc1.weight')"
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracer._trace import KindFilter, NameFilter, StepFilter, Trace

_SHOWN_NAMES = 8


def why_empty(trace: Trace, *, kind: KindFilter, name: NameFilter, step: StepFilter) -> str | None:
    """None when ``name`` and ``step`` (under ``kind``) match rows of ``trace``, else what exists.

    Only ``name`` and ``step`` are judged: a kind that has no rows in a trace is a fact about
    the run (no ``skipped`` steps), not a mistake in the query.
    """
    if name is None and step is None:
        return None
    stats = trace.rows(kind=kind, columns=("step", "name"))
    where = "" if kind is None else f" among the {_kinds(kind)} rows"
    if stats.empty:  # no rows of this kind at all: a fact about the run
        return None
    names = sorted({str(n) for n in stats["name"]})
    steps = stats["step"]
    if name is not None:
        patterns = [name] if isinstance(name, str) else [str(p) for p in name]
        matched = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not matched:
            return f"no rows match name={_shown(name)}{where}; names there: {_names(names)}{_closest(patterns, names)}"
        steps = stats.loc[stats["name"].isin(matched), "step"]
    if step is not None:
        lo, hi = int(steps.min()), int(steps.max())
        have = f"step {lo}" if lo == hi else f"steps {lo}–{hi}"
        count = steps.nunique()
        if count not in (1, hi - lo + 1):
            have += f" ({count} of them)"
        return f"no rows at step={_shown(step)}{where}{'' if name is None else f' for name={_shown(name)}'}; the trace has {have}"
    return None


def _kinds(kind: Any) -> str:
    return kind if isinstance(kind, str) else "/".join(str(k) for k in kind)


def _shown(value: Any) -> str:
    if isinstance(value, (str, int, slice)):
        return repr(value)
    return repr(list(value))


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN_NAMES])
    return shown + (f", … ({len(names)} in all)" if len(names) > _SHOWN_NAMES else "")


def _closest(patterns: Iterable[str], names: list[str]) -> str:
    stripped = [p.replace("*", "").replace("?", "") for p in patterns]
    close = [m for p in stripped for m in difflib.get_close_matches(p, names, n=1, cutoff=0.5)]
    return f" (closest: {close[0]!r})" if close else ""
