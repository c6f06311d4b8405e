"""The read side's one noun: a :class:`Trace`, opened once, read by every consumer.

``Trace.open(x)`` is the only place that decides what ``x`` is (a path, a ``tracer.Run``,
a DataFrame from ``tracer.load``, or a ``Trace``); the metadata is parsed once into
:class:`TraceMeta`; rows are read with one filter semantics, pushed into the Parquet
reader for files; the statistics columns are read once and kept. Verdicts, findings,
text and comparisons are not here: they live with the report, diagnose and testing.

>>> trace = tracer.open("traces/run1")              # doctest: +SKIP
>>> trace.meta.optimizers[0].cls                     # doctest: +SKIP
'SGD'
>>> trace.rows(kind="grad", step=0)                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from tracer._schema import COLUMNS, KINDS

_T = TypeVar("_T")

if TYPE_CHECKING:
    import pandas as pd

    from tracer._session import Run

TraceLike = Union[str, "os.PathLike[str]", "Run", "pd.DataFrame", "Trace"]
"""What every public function that reads a trace takes: a path, a ``run``, a DataFrame
from ``tracer.load``, or a :class:`Trace`. Pass it to :meth:`Trace.open`."""

StepFilter = Union[int, Iterable[int], slice, None]
NameFilter = Union[str, Iterable[str], None]
KindFilter = Union[str, Iterable[str], None]

STAT_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "values")
"""Every column but ``values``: what :attr:`Trace.stats` holds."""

UPDATE_KINDS = ("grad", "param", "update", "state", "skipped")
UPDATE_COLUMNS = (
    "step", "seq", "rank", "kind", "name", "call", "part", "optimizer", "param_group", "hparams", "dtype",
    "shape", "numel", "mean", "std", "min", "max", "norm", "nonfinite", "values", "rule_error", "rule_matches",
    "global_shape", "shard_offset", "placements",
)  # fmt: skip
"""What the update checks read of those rows (and what assembling a sharded tensor's rows needs)."""
"""The kinds an update check reads (:meth:`Trace.updates`)."""


# --------------------------------------------------------------------------- metadata


@dataclasses.dataclass(frozen=True)
class OptimizerMeta:
    """One traced optimizer: its class name, qualified name and ``torch.optim`` bases."""

    cls: str
    qualname: str = ""
    bases: tuple[str, ...] = ()
    adopted: bool = False


@dataclasses.dataclass(frozen=True)
class ParameterMeta:
    """One parameter of the model, traced or not (frozen ones have no rows)."""

    name: str
    shape: tuple[int, ...] = ()
    dtype: str = ""
    requires_grad: bool = True
    optimizer: int | None = None
    param_group: int | None = None
    aliases: tuple[str, ...] = ()  # other names of a shared (tied) parameter


@dataclasses.dataclass(frozen=True)
class TraceOptions:
    """The ``tracer.trace`` options the trace was recorded with (None: not recorded)."""

    capture: tuple[str, ...] | None = None
    max_values: int | None = None
    every: int = 1
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    verify: bool = False
    capture_ops: bool = False


@dataclasses.dataclass(frozen=True)
class TraceMeta:
    """``_tracer.json``, checked and parsed once (empty for a DataFrame or a bare directory)."""

    schema_version: int | None = None
    model: str | None = None
    complete: bool | None = None
    steps: int | None = None
    optimizers: tuple[OptimizerMeta, ...] = ()
    parameters: tuple[ParameterMeta, ...] = ()
    options: TraceOptions = TraceOptions()
    files: tuple[str, ...] = ()
    golden: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TraceMeta:
        """From the dict :func:`tracer._reader.read_meta` returns (its types are checked there)."""
        options = raw.get("options") or {}
        steps = raw.get("steps")
        return cls(
            schema_version=raw.get("schema_version"),
            model=raw.get("model"),
            complete=raw.get("complete"),
            steps=steps if isinstance(steps, int) else None,
            optimizers=tuple(
                OptimizerMeta(o["class"], o.get("qualname", ""), tuple(o.get("bases", ())), bool(o.get("adopted")))
                for o in raw.get("optimizers", ())
            ),
            parameters=tuple(
                ParameterMeta(
                    p["name"],
                    tuple(p.get("shape", ())),
                    p.get("dtype", ""),
                    p.get("requires_grad", True),
                    p.get("optimizer"),
                    p.get("param_group"),
                    tuple(p.get("aliases", ())),
                )  # fmt: skip
                for p in raw.get("parameters", ())
            ),
            options=TraceOptions(
                capture=None if options.get("capture") is None else tuple(options["capture"]),
                max_values=options.get("max_values"),
                every=options.get("every", 1),
                include=None if options.get("include") is None else tuple(options["include"]),
                exclude=tuple(options.get("exclude") or ()),
                verify=bool(options.get("verify", False)),
                capture_ops=bool(options.get("capture_ops", False)),
            ),
            files=tuple(raw.get("files", ())),
            golden=raw.get("golden"),
            raw=dict(raw),
        )

    @property
    def aliases(self) -> dict[str, str]:
        """``{alias: name}``: the other names of shared parameters, and the name their rows use."""
        return {alias: p.name for p in self.parameters for alias in p.aliases}

    @property
    def optimizer_bases(self) -> dict[str, list[str]]:
        """``{class name: [torch.optim base class names]}``: what rule lookup needs."""
        return {o.cls: list(o.bases) for o in self.optimizers}


# --------------------------------------------------------------------------- the trace


class Trace:
    """A trace, opened: its metadata, and its rows read on demand, each once.

    Make one with :meth:`open` (or ``tracer.open``). A trace on disk is read lazily, with
    filters pushed into the Parquet reader; one opened on a DataFrame filters it in
    memory, with the same semantics.
    """

    def __init__(self, *, path: Path | None, frame: pd.DataFrame | None, meta: TraceMeta) -> None:
        self.path = path
        self.meta = meta
        self._frame = frame
        self._stats: pd.DataFrame | None = None
        self._updates: pd.DataFrame | None = None
        self._memo: dict[Hashable, Any] = {}

    @classmethod
    def open(cls, trace: TraceLike) -> Trace:
        """The one dispatch on what a trace argument is.

        Args:
            trace: a trace directory, the ``run`` of ``tracer.trace`` (flushed first when
                its block is still running), a DataFrame from ``tracer.load``, or a Trace.

        Raises:
            TypeError: anything else.
            TraceFormatError: a path that is not a readable trace.
        """
        if isinstance(trace, Trace):
            return trace
        import pandas as pd

        if isinstance(trace, pd.DataFrame):
            missing = [c for c in ("step", "kind", "name") if c not in trace.columns]
            if missing:
                raise ValueError(
                    f"the DataFrame lacks the trace columns {missing}; pass tracer.load(path) "
                    "(all columns), or the trace's path"
                )
            return cls(path=None, frame=trace, meta=TraceMeta())
        if isinstance(trace, (str, os.PathLike)):
            path = Path(trace)
        else:
            run_path = getattr(trace, "path", None)
            if not isinstance(run_path, Path) or not hasattr(trace, "flush"):
                raise TypeError(
                    "a trace is a path, a tracer.Run, a DataFrame from tracer.load or a tracer.Trace "
                    f"(got {type(trace).__module__}.{type(trace).__qualname__})".replace("builtins.", "")
                )
            path = run_path
            trace.flush()
        from tracer._reader import check_trace_root, read_meta

        check_trace_root(path)  # each data file is checked when it is read
        return cls(path=path, frame=None, meta=TraceMeta.parse(read_meta(path)))

    def __repr__(self) -> str:
        return f"<tracer.Trace {self.source}>"

    @property
    def source(self) -> str:
        """Where the trace comes from, for messages: its path, or ``"DataFrame"``."""
        return "DataFrame" if self.path is None else str(self.path)

    # -- rows ------------------------------------------------------------------------
    def rows(
        self,
        kind: KindFilter = None,
        name: NameFilter = None,
        step: StepFilter = None,
        columns: Sequence[str] | None = None,
        *,
        errors: str = "raise",
    ) -> pd.DataFrame:
        """The rows that match, in training order: ``tracer.load``'s filters and columns.

        ``kind`` and ``name`` take one value or several, ``name`` glob patterns too;
        ``step`` an int, an iterable of ints or a slice. A DataFrame trace keeps only the
        requested columns it has.
        """
        check_kinds(kind)
        if self._frame is None:
            from tracer._load import read_frame

            assert self.path is not None
            return read_frame(self.path, kind=kind, name=name, step=step, columns=columns, errors=errors)
        return filter_frame(self._frame, kind=kind, name=name, step=step, columns=columns)

    @property
    def stats(self) -> pd.DataFrame:
        """Every row's columns but ``values`` (read once, then kept), in training order."""
        if self._stats is None:
            stats = self.rows(columns=STAT_COLUMNS)
            self._stats = _numeric_stats(stats)
        return self._stats

    def updates(self) -> pd.DataFrame:
        """The ``grad``, ``param``, ``update``, ``state`` and ``skipped`` rows, with values
        (read once, then kept): what checking the updates needs, and nothing else."""
        if self._updates is None:
            self._updates = update_rows(self, kind=UPDATE_KINDS, columns=UPDATE_COLUMNS)
        return self._updates

    def memo(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """``compute()``, once per Trace and ``key``: results that several readers share
        (the update checks that the report and ``diagnose`` both need) are made once.

        >>> trace.memo(("checks", tolerance), lambda: check_updates(trace, tolerance))  # doctest: +SKIP
        """
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def steps(self) -> list[int]:
        """The steps that have rows, ascending (from :attr:`stats` when they were read, else
        from the step column alone)."""
        import numpy as np

        column = self.stats["step"] if self._stats is not None else self.memo("step-column", self._step_column)
        return np.unique(np.asarray(column, dtype=np.int64)).tolist()

    def _step_column(self) -> Any:
        return self.rows(columns=("step",))["step"]


# --------------------------------------------------------------------------- filters


def update_rows(trace: Trace, **filters: Any) -> pd.DataFrame:
    """``trace.rows(**filters)`` with a sharded tensor's rows (one per rank, FSDP2/DTensor)
    assembled into the whole tensor's, as the update checks need them."""
    from tracer._assemble import assemble

    return assemble(trace.rows(**filters))


def check_kinds(kind: KindFilter) -> None:
    """A ``kind=`` filter naming an unknown kind is a ValueError (as ``capture=`` is)."""
    if kind is None:
        return
    kinds = [kind] if isinstance(kind, str) else list(kind)
    unknown = sorted({str(k) for k in kinds} - set(KINDS))
    if unknown:
        from difflib import get_close_matches

        hints = [m for k in unknown for m in get_close_matches(k, KINDS, n=1)]
        hint = f" (did you mean {hints[0]!r}?)" if len(unknown) == 1 and hints else ""
        raise ValueError(f"unknown kind(s) {unknown}{hint}; valid kinds are {list(KINDS)}")


def filter_frame(
    frame: pd.DataFrame,
    *,
    kind: KindFilter = None,
    name: NameFilter = None,
    step: StepFilter = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``tracer.load``'s filters applied to a DataFrame in memory, the same way."""
    keep = None

    def both(mask: Any) -> Any:
        return mask if keep is None else keep & mask

    if kind is not None:
        keep = both(frame["kind"].isin([kind] if isinstance(kind, str) else list(kind)))
    if name is not None:
        patterns = [name] if isinstance(name, str) else list(name)
        if any(ch in p for p in patterns for ch in "*?["):
            names = frame["name"].astype(str)
            keep = both(names.map(lambda n: any(fnmatch.fnmatchcase(n, p) for p in patterns)).astype(bool))
        else:
            keep = both(frame["name"].isin(patterns))
    if step is not None:
        keep = both(_step_mask(frame["step"], step))
    out = frame if keep is None else frame[keep]
    if columns is not None:
        out = out[[c for c in columns if c in out.columns]]
    return out.reset_index(drop=True)


def _step_mask(steps: pd.Series, step: Any) -> Any:
    if isinstance(step, slice):
        lo = step.start if step.start is not None else -math.inf
        hi = step.stop if step.stop is not None else math.inf
        mask = (steps >= lo) & (steps < hi)
        if step.step not in (None, 1):
            mask &= (steps - (step.start or 0)) % step.step == 0
        return mask
    return steps.isin([step] if isinstance(step, int) else list(step))


def _numeric_stats(stats: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    stats = stats.copy(deep=False)  # columns are replaced, never written into: no data is copied
    for column in ("mean", "std", "min", "max", "norm"):
        if column in stats.columns and stats[column].dtype != "float64":
            stats[column] = pd.to_numeric(stats[column], errors="coerce").astype("float64")
    if "nonfinite" in stats.columns:
        stats["nonfinite"] = pd.to_numeric(stats["nonfinite"], errors="coerce").fillna(0).astype("int64")
    for column in ("seq", "rank", "call"):
        if column not in stats.columns:
            stats[column] = 0
    return stats


def open_trace(trace: TraceLike) -> Trace:
    """``tracer.open(x)``: the :class:`Trace` of a path, a ``run``, a DataFrame or a Trace.

    Example::

        trace = tracer.open("traces/run1")
        trace.rows(kind="loss")
    """
    return Trace.open(trace)
