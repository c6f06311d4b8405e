"""The series of a trace that every reader shares, computed once per :class:`~tracer.Trace`.

``tracer summary`` and ``tracer diagnose`` (and, as they move here, the plots and the
exporters) take their numbers from one :class:`Series`, so they cannot disagree:

>>> s = series(tracer.open("traces/run1"))      # doctest: +SKIP
>>> s.loss().iloc[:2].tolist(), s.first_nonfinite  # doctest: +SKIP
([25.0, 19.36], None)

The definitions, each stated once:

- **Loss per step**: training loss rows only (``grad_enabled`` not False; evaluation
  records no loss). The losses backpropagated before an optimizer's ``step()`` are that
  step's micro-batches and are *summed*: under gradient accumulation each one is the
  script's loss divided by k, so the sum is the loss the script logs. Losses
  backpropagated inside ``step()`` (an LBFGS closure) count once: the first, the loss at
  the start of the step.
- **Loss series**: one per optimizer that losses lead to. A GAN backpropagates the
  discriminator's loss (``call`` 0 of the step) before the discriminator's ``step()``
  and the generator's (``call`` 1) before the generator's: two series, named after the
  module their parameters share (``"D"``, ``"G"``), else ``"optimizer 1"``. One model
  with one loss (however many optimizers step on it) is the one series ``"loss"``.
- **Optimizer of a parameter**: its index in ``_tracer.json``; a DataFrame has no
  metadata, so there the ``optimizer`` column (the class name) stands in, and two
  optimizers of one class read as one.
- **Norms** (per parameter and per layer: its module path) and **update ratios**
  ‖Δθ‖/‖θ‖: of the lowest rank, first ``call`` of each (step, kind, name).
- **Skipped steps**: marked by a GradScaler (``skipped`` rows, part ``found_inf``), or
  inferred for a fused optimizer: non-finite gradients and a missing or zero update.
- **First non-finite value**: the earliest row (step, rank, training order) holding
  NaN/Inf, except (1) with a gradient scaler, inf/NaN in the loss, activation gradients
  and gradients of a step it skipped (and in the scaled loss of a step whose gradients
  were finite): the scaler doing its job; (2) masks: an input holding ±inf (no NaN) that
  at some step did not reach its module's output (or, where outputs are not traced, the
  loss and gradients), such as the ``-inf`` causal mask of ``nn.Transformer``.

Caching: :func:`series` keeps one :class:`Series` per ``Trace`` object (in a weak dictionary); each is computed once.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import weakref

import numpy as np
import pandas as pd

from tracer._trace import STAT_COLUMNS, Trace, TraceLike

OPTIMIZER_KINDS = ("grad", "param", "state", "update", "skipped")
"""The kinds an optimizer's ``step()`` writes: they delimit the losses of a step."""

_NEEDED = ("numel", "norm", "nonfinite")
_CATEGORIES = ("kind", "name", "part", "module_type", "dtype", "optimizer", "hparams")
_UNUSED = ("rule_error", "rule_matches", "global_shape", "shard_offset", "placements")
_SCALER_EXCUSED = ("loss", "activation_grad", "grad", "skipped")


@dataclasses.dataclass(frozen=True)
class NonFinite:
    """The first non-finite value of a trace (the module docstring says what counts); ``index``
    and ``value`` (complex for a complex tensor) locate its first NaN/Inf element, if stored."""

    step: int
    kind: str
    name: str
    call: int
    part: str
    rank: int
    seq: int
    count: int
    numel: int
    module_type: str | None = None
    index: tuple[int, ...] | None = None
    value: float | complex | None = None


_CACHE: weakref.WeakKeyDictionary[Trace, Series] = weakref.WeakKeyDictionary()


def series(trace: TraceLike) -> Series:
    """The shared :class:`Series` of ``trace``, made once per :class:`~tracer.Trace`.

    Example::

        trace = tracer.open("traces/run1")
        series(trace).loss()          # computed here, and kept: pass this Trace around
    """
    opened = Trace.open(trace)
    found = _CACHE.get(opened)
    if found is None:
        found = _CACHE[opened] = Series(opened)
    return found


class Series:
    """The series of one trace; get it with :func:`series`. Each is computed once."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    @functools.cached_property
    def stats(self) -> pd.DataFrame:
        """Every row's statistics (no values), all ranks, by step, rank, training order (as files are read)."""
        stats = self.trace.stats
        missing = [c for c in _NEEDED if c not in stats.columns]
        if missing:
            raise ValueError(
                f"the DataFrame lacks the trace columns {missing}; pass tracer.load(path) with all "
                "columns, or the trace's path"
            )
        stats = stats.assign(**{c: None for c in STAT_COLUMNS if c not in stats.columns})
        stats = stats.drop(columns=[c for c in _UNUSED if c in stats.columns])
        # few distinct values in many rows: categories make every filter below cheap (an Arrow
        # string column is copied by each boolean index; codes are not)
        stats = stats.astype({c: "category" for c in _CATEGORIES if c in stats.columns})
        stats = stats if self.trace.path is not None else stats.sort_values(["step", "rank", "seq"], kind="stable")
        return stats.reset_index(drop=True)

    @functools.cached_property
    def lead(self) -> pd.DataFrame:
        """:attr:`stats` of the lowest rank: what the per-step series are made of."""
        one = self.stats["rank"].nunique(dropna=False) <= 1  # one rank (or none): every row, no copy
        return self.stats if one else self.stats[self.stats["rank"] == self.stats["rank"].min()]

    @functools.cached_property
    def steps(self) -> list[int]:
        """The traced steps, ascending."""
        return sorted(int(s) for s in self.stats["step"].unique())

    @functools.cached_property
    def optimizer_of(self) -> dict[str, str]:
        """``{parameter name: optimizer key}``: the optimizer's index as text (``"0"``),
        or on a DataFrame its class name. Aliases of a shared parameter map too."""
        meta = [p for p in self.trace.meta.parameters if p.optimizer is not None]
        out = {name: str(p.optimizer) for p in meta for name in (p.name, *p.aliases)}
        rows = self.lead[self.lead["kind"].isin(OPTIMIZER_KINDS[:-1])].drop_duplicates("name")
        for name, cls in zip(rows["name"], rows["optimizer"]):
            out.setdefault(name, str(cls))
        return out

    def optimizer_keys(self, rows: pd.DataFrame) -> pd.Series:
        """The optimizer key of each optimizer row (``skipped`` rows are named by class)."""
        classes = [o.cls for o in self.trace.meta.optimizers]
        unique = {cls: str(i) for i, cls in enumerate(classes) if classes.count(cls) == 1}
        names, skipped = rows["name"].astype(object), rows["kind"] == "skipped"
        keys = names.map(self.optimizer_of).astype(object)
        keys[skipped] = names[skipped].map(lambda cls: unique.get(cls, cls))
        return keys

    @functools.cached_property
    def aliases(self) -> dict[str, tuple[str, ...]]:
        """``{parameter name: its other names}`` for shared (tied) parameters."""
        return {p.name: p.aliases for p in self.trace.meta.parameters if p.aliases}

    @functools.cached_property
    def losses(self) -> pd.DataFrame:
        """One row per (step, loss series): ``step``, ``series``, ``loss``, ``calls`` (how
        many losses were summed), in step order."""
        return _losses_per_step(self)

    @property
    def loss_series(self) -> list[str]:
        """The names of the loss series, in order of appearance (``["loss"]`` for one)."""
        return list(dict.fromkeys(self.losses["series"]))

    def loss(self, name: str | None = None) -> pd.Series:
        """The loss per step of one series (the only one by default), indexed by step.

        Raises:
            ValueError: ``name`` omitted on a trace with several loss series, or unknown.
        """
        names = self.loss_series
        if name is None and len(names) > 1:
            raise ValueError(f"the trace has several loss series {names}: pass one of them as name")
        if name is not None and name not in names:
            raise ValueError(f"no loss series {name!r}; the trace has {names}")
        rows = self.losses[self.losses["series"] == (name or (names[0] if names else "loss"))]
        return pd.Series(rows["loss"].to_numpy(dtype=float), index=rows["step"].to_numpy(), name="loss")

    @functools.cached_property
    def norms(self) -> pd.DataFrame:
        """Per (step, parameter): ``grad``, ``param``, ``update`` norms, ``ratio`` (‖Δθ‖/‖θ‖),
        ``grad_nonfinite``, ``numel``, ``ndim``, ``layer`` and ``optimizer`` (key)."""
        return _parameter_norms(self)

    @functools.cached_property
    def layer_grads(self) -> pd.DataFrame:
        """Per (step, optimizer, layer): the L2 ``norm`` of its finite gradients and ``numel``."""
        grads = self.norms[self.norms["grad"].notna() & (self.norms["grad_nonfinite"] == 0)]
        grads = grads.assign(sq=grads["grad"] ** 2)
        out = grads.groupby(["step", "optimizer", "layer"], sort=False)[["sq", "numel"]].sum().reset_index()
        return out.assign(norm=np.sqrt(out["sq"].astype("float64")))[["step", "optimizer", "layer", "norm", "numel"]]

    @functools.cached_property
    def skipped(self) -> dict[int, str]:
        """``{step: "marked" or "inferred"}``: the steps whose optimizer step a gradient
        scaler skipped."""
        stats = self.stats
        marks = stats[(stats["kind"] == "skipped") & (stats["part"] != "exception")]
        out = {int(s): "marked" for s in marks["step"].unique()}
        updates = stats[stats["kind"] == "update"]
        if updates.empty:
            return out
        bad = stats.loc[(stats["kind"] == "grad") & (stats["nonfinite"] > 0), "step"].unique()
        for step in bad:
            at = updates[updates["step"] == step]
            if int(step) not in out and (at.empty or bool((at["norm"] == 0).all())):
                out[int(step)] = "inferred"
        return dict(sorted(out.items()))

    @functools.cached_property
    def nonfinite(self) -> pd.DataFrame:
        """The rows holding NaN/Inf that count (see the module docstring), training order."""
        stats = self.stats
        bad = stats[stats["nonfinite"] > 0]
        if bad.empty:
            return bad
        bad = bad[~_excused_by_scaler(stats, bad, self.skipped)]
        return bad[~_is_mask(stats, bad)]

    @functools.cached_property
    def first_nonfinite(self) -> NonFinite | None:
        """The first non-finite value that counts, located to its element when stored."""
        bad = self.nonfinite
        if bad.empty:
            return None
        row = bad.iloc[0]
        found = NonFinite(
            step=int(row["step"]),
            kind=str(row["kind"]),
            name=str(row["name"]),
            call=int(row["call"]),
            part=str(row["part"] or ""),
            rank=int(row["rank"]),
            seq=int(row["seq"]),
            count=int(row["nonfinite"]),
            numel=int(row["numel"]),
            module_type=row["module_type"] if isinstance(row["module_type"], str) else None,
        )
        located = self._locate(found)
        return found if located is None else dataclasses.replace(found, index=located[0], value=located[1])

    def _locate(self, at: NonFinite) -> tuple[tuple[int, ...], float | complex] | None:
        rows = self.trace.rows(kind=at.kind, step=at.step, columns=["seq", "rank", "name", "call", "shape", "values"])
        if "values" not in rows.columns:
            return None
        rank = rows["rank"] == at.rank if "rank" in rows.columns else True
        same = rows["seq"] == at.seq if "seq" in rows.columns else (rows["name"] == at.name)
        rows = rows[same & rank]
        if rows.empty or rows["values"].iloc[0] is None:
            return None
        values = np.asarray(rows["values"].iloc[0])  # float64, or complex128 for complex rows
        hits = np.flatnonzero(~np.isfinite(values))
        shape = tuple(int(s) for s in rows["shape"].iloc[0])
        if not hits.size:
            return None
        index = tuple(int(i) for i in np.unravel_index(int(hits[0]), shape)) if shape else ()
        return index, complex(values[hits[0]]) if np.iscomplexobj(values) else float(values[hits[0]])


# --------------------------------------------------------------------------- non-finite


def _excused_by_scaler(stats: pd.DataFrame, bad: pd.DataFrame, skipped: dict[int, str]) -> pd.Series:
    """Rows whose inf/NaN is a gradient scaler's business: the backward pass of a step it
    skipped, and the (scaled) loss of a step whose gradients, unscaled, were finite."""
    if not skipped:
        return pd.Series(False, index=bad.index)
    grads = stats[stats["kind"] == "grad"]
    clean = set(grads["step"]) - set(grads.loc[grads["nonfinite"] > 0, "step"])
    backward = bad["kind"].isin(_SCALER_EXCUSED)
    scaled_loss = bad["kind"].isin(["loss", "activation_grad"]) & bad["step"].isin(list(clean))
    return backward & (bad["step"].isin(list(skipped)) | scaled_loss)


def _is_mask(stats: pd.DataFrame, bad: pd.DataFrame) -> pd.Series:
    """Inputs holding ±inf (no NaN) known to be masks: at some step the value did not reach
    the module's output (or, where outputs are not traced, the loss and gradients)."""
    infinite = (bad["kind"] == "input") & bad["min"].notna() & bad["max"].notna()
    if not infinite.any():
        return pd.Series(False, index=bad.index)
    acts = stats[stats["kind"] == "activation"]
    outputs = acts.groupby(["step", "rank", "name", "call"])["nonfinite"].sum().to_dict()
    after = stats[stats["kind"].isin(["loss", "grad"])]
    reached = set(zip(after.loc[after["nonfinite"] > 0, "step"], after.loc[after["nonfinite"] > 0, "rank"]))
    judged = set(zip(after["step"], after["rank"]))
    masks = set()
    for step, rank, name, call, part in bad.loc[infinite, ["step", "rank", "name", "call", "part"]].to_numpy():
        out = outputs.get((step, rank, name, call))
        if out == 0 or (out is None and (step, rank) in judged and (step, rank) not in reached):
            masks.add((name, part))
    keys = pd.Series(list(zip(bad["name"], bad["part"])), index=bad.index)
    return infinite & keys.isin(masks)


# --------------------------------------------------------------------------- loss


def _losses_per_step(s: Series) -> pd.DataFrame:
    """The loss per (step, series): the module docstring says how losses are grouped."""
    lead = s.lead
    training = lead["grad_enabled"].astype("boolean").fillna(True).astype(bool)  # loss rows: null
    loss = lead.loc[((lead["kind"] == "loss") & training).to_numpy(), ["step", "mean"]]
    spans = _optimizer_spans(s)
    groups: dict[tuple[int, str | None], tuple[list[float], list[float]]] = {}
    for step, order, value in zip(loss["step"].tolist(), loss.index.tolist(), loss["mean"].tolist()):
        key, inside = _span_of(spans.get(int(step), []), int(order))
        before, within = groups.setdefault((int(step), key), ([], []))
        (within if inside else before).append(float(value))
    keys = [k for k in dict.fromkeys(k for _, k in groups) if k is not None]
    labels = _labels(s, keys)
    trailing = labels[keys[0]] if len(keys) == 1 else "loss"  # losses no optimizer step follows
    records = [  # a closure evaluated inside step() counts once
        (step, labels.get(key, trailing) if key else trailing, float(sum(values)), len(values))
        for (step, key), (before, within) in groups.items()
        for values in (before or within[:1],)
    ]
    types = {"step": "int64", "series": object, "loss": "float64", "calls": "int64"}
    return pd.DataFrame(records, columns=list(types)).astype(types)


def _optimizer_spans(s: Series) -> dict[int, list[tuple[int, int, str]]]:
    """Per step: ``(first row, last row, optimizer key)`` of each optimizer's ``step()``,
    in training order (row positions in :attr:`Series.stats`)."""
    lead = s.lead
    rows = lead.loc[lead["kind"].isin(OPTIMIZER_KINDS).to_numpy(), ["step", "kind", "name"]]
    frame = pd.DataFrame({"step": rows["step"], "key": s.optimizer_keys(rows), "order": rows.index})
    spans = frame.groupby(["step", "key"], sort=False)["order"].agg(["min", "max"]).reset_index().sort_values("min")
    out: dict[int, list[tuple[int, int, str]]] = {}
    for step, key, lo, hi in zip(*(spans[c].tolist() for c in ("step", "key", "min", "max"))):
        out.setdefault(int(step), []).append((int(lo), int(hi), str(key)))
    return out


def _span_of(spans: list[tuple[int, int, str]], order: int) -> tuple[str | None, bool]:
    """The optimizer whose step a loss at ``order`` leads to, and whether it is inside it."""
    for lo, hi, key in spans:
        if order <= hi:  # before the step (order < lo), or inside it
            return key, lo <= order
    return None, False


def _labels(s: Series, keys: list[str]) -> dict[str, str]:
    """Names of the loss series: ``"loss"`` alone; else the module each optimizer's
    parameters share (``"D"``, ``"G"``), else ``"optimizer 1 (Adam)"``."""
    if len(keys) <= 1:
        return {k: "loss" for k in keys}
    shared = {k: _shared_module([n for n, o in s.optimizer_of.items() if o == k]) for k in keys}
    if all(shared.values()) and len(set(shared.values())) == len(keys):
        return dict(shared)
    classes = [o.cls for o in s.trace.meta.optimizers]
    return {k: f"optimizer {k} ({classes[int(k)]})" if k.isdigit() and int(k) < len(classes) else k for k in keys}


def _shared_module(names: list[str]) -> str:
    """The longest module path that holds every one of ``names`` (``""``: none, or the root)."""
    paths = [layer_of(n).split(".") for n in names if layer_of(n)]
    if not paths or len(paths) < len(names):
        return ""
    return ".".join(parts[0] for parts in itertools.takewhile(lambda parts: len(set(parts)) == 1, zip(*paths)))


def layer_of(name: str) -> str:
    """The module path of a parameter name: ``"fc1.weight"`` → ``"fc1"``, ``"weight"`` → ``""``."""
    return name.rpartition(".")[0]


# --------------------------------------------------------------------------- norms

_NORMED = ["grad", "param", "update"]
_NORM_COLUMNS = ["step", "name", *_NORMED, "ratio", "grad_nonfinite", "numel", "ndim", "layer", "optimizer"]
_TEXT_NORMS: dict[str, object] = {"name": object, "layer": object, "optimizer": object}


def _parameter_norms(s: Series) -> pd.DataFrame:
    """Per (step, parameter), in training order: the norms of its gradient, value and update."""
    lead = s.lead
    rows = lead[lead["kind"].isin(_NORMED) & (lead["call"] == 0)]
    rows = rows.drop_duplicates(["step", "kind", "name"])
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=_TEXT_NORMS.get(c, "float64")) for c in _NORM_COLUMNS})
    wide = rows.pivot(index=["step", "name"], columns="kind", values="norm")
    for kind in _NORMED:
        wide[kind] = wide[kind].astype("float64") if kind in wide.columns else np.nan
    grads = rows[rows["kind"] == "grad"].set_index(["step", "name"])["nonfinite"]
    wide["grad_nonfinite"] = grads.reindex(wide.index).fillna(0).astype("int64")
    wide = wide.reset_index().rename_axis(columns=None)
    first = rows.drop_duplicates("name").set_index("name")
    position = {n: i for i, n in enumerate(first.index)}
    wide = wide.sort_values(["step", "name"], key=lambda c: c.map(position) if c.name == "name" else c)
    wide["numel"] = wide["name"].map(first["numel"]).astype("int64")
    wide["ndim"] = wide["name"].map(first["shape"].map(lambda shape: 0 if shape is None else len(shape)))
    param = wide["param"].where(wide["param"] > 0)
    wide["ratio"] = wide["update"] / param
    wide["layer"] = wide["name"].map(layer_of)
    wide["optimizer"] = wide["name"].map(s.optimizer_of)
    return wide[_NORM_COLUMNS].reset_index(drop=True)
