"""``tracer summary``: what a trace holds, at a glance (read without the values column).

The loss per step, the norms and the first non-finite value are those of
:mod:`tracer._series`: ``tracer diagnose`` reads the same ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tracer._reader import data_files
from tracer._render import escape_text
from tracer._schema import KINDS
from tracer._series import NonFinite, Series, series
from tracer._trace import Trace, TraceLike

_MAX_NAMES = 12
_MAX_STEPS = 20


def summarize(trace: TraceLike) -> dict[str, Any]:
    """The summary of a trace as plain data (what ``tracer summary --json`` prints).

    Example::

        summarize("traces/run1")["loss"]   # [{"step": 0, "loss": 25.0, "calls": 1}, ...]
    """
    opened = Trace.open(trace)
    s = series(opened)
    rows, meta = s.stats, opened.meta
    files = data_files(opened.path) if opened.path is not None else []
    on_disk = [f for f in opened.path.rglob("*") if f.is_file()] if opened.path is not None else []
    present = set(rows["kind"].unique())
    kinds = [k for k in KINDS if k in present]
    return {
        "path": opened.source,
        "model": meta.model,
        "optimizers": [o.cls for o in meta.optimizers],
        "complete": meta.complete,
        "steps": s.steps,
        "ranks": sorted(int(r) for r in rows["rank"].unique()),
        "rows": len(rows),
        "files": len(files),  # data files (part-*.parquet); bytes: everything in the directory
        "bytes": sum(f.stat().st_size for f in on_disk),
        "kinds": {k: int((rows["kind"] == k).sum()) for k in kinds},
        "names": {k: [str(n) for n in rows.loc[rows["kind"] == k, "name"].unique()] for k in kinds},
        "loss": _loss(s),
        "parameters": _norms(s),
        "metrics": _metrics(s),
        "first_nonfinite": _nonfinite(s.first_nonfinite),
        "nonfinite_not_counted": int((rows["nonfinite"] > 0).sum()) - len(s.nonfinite),
        "skipped_steps": sorted(s.skipped),
    }


def _loss(s: Series) -> list[dict[str, Any]]:
    """Per step (and loss series, when there are several): the loss and how many were summed."""
    several = len(s.loss_series) > 1
    return [
        {"step": int(step), "loss": float(loss), "calls": int(calls), **({"series": name} if several else {})}
        for step, name, loss, calls in s.losses[["step", "series", "loss", "calls"]].itertuples(index=False)
    ]


def _norms(s: Series) -> list[dict[str, Any]]:
    """Per parameter: gradient and update L2 norm at the first and last step, and the largest."""
    out: dict[str, dict[str, Any]] = {}
    norms = s.norms
    for kind in ("grad", "update"):
        for name, group in norms[norms[kind].notna()].groupby("name", sort=False):
            values = group[kind].to_numpy(dtype=np.float64)
            steps = group["step"].to_numpy()
            finite = ~np.isnan(values)
            i = int(np.nanargmax(values)) if finite.any() else None
            out.setdefault(str(name), {"name": str(name)})[kind] = {
                "first": float(values[0]),
                "last": float(values[-1]),
                "max": math.nan if i is None else float(values[i]),
                "max_step": None if i is None else int(steps[i]),
                "steps": len(values),
            }
    return list(out.values())


def _metrics(s: Series) -> list[dict[str, Any]]:
    """Per name logged with ``run.log``: how many steps, the first and last value, the smallest and largest."""
    lead = s.lead
    rows = lead[lead["kind"] == "metric"].drop_duplicates(["step", "name"], keep="last")
    out = []
    for name, group in rows.groupby("name", sort=False):
        values = group["mean"].to_numpy(dtype=np.float64)
        steps = group["step"].to_numpy()
        finite = np.isfinite(values)
        low = int(np.nanargmin(values)) if finite.any() else None
        high = int(np.nanargmax(values)) if finite.any() else None
        out.append({
            "name": str(name), "steps": len(values), "first": float(values[0]), "last": float(values[-1]),
            "min": math.nan if low is None else float(values[low]), "min_step": None if low is None else int(steps[low]),
            "max": math.nan if high is None else float(values[high]), "max_step": None if high is None else int(steps[high]),
        })  # fmt: skip
    return out


def _nonfinite(found: NonFinite | None) -> dict[str, Any] | None:
    if found is None:
        return None
    value = found.value
    return {
        "step": found.step,
        "kind": found.kind,
        "name": found.name,
        "call": found.call,
        "part": found.part,
        "count": found.count,
        "numel": found.numel,
        "index": None if found.index is None else list(found.index),
        "value": [value.real, value.imag] if isinstance(value, complex) else value,
    }


# --------------------------------------------------------------------------- text


def format_summary(s: dict[str, Any]) -> str:
    """The summary as aligned text."""
    steps = s["steps"]
    incomplete = "  (incomplete: still running, or it crashed)" if s["complete"] is False else ""
    lines = [f"trace      {escape_text(s['path'])}{incomplete}"]
    if s["model"]:
        opts = ", ".join(map(escape_text, s["optimizers"])) or "none"
        lines.append(f"model      {escape_text(s['model'])}, optimizer {opts}")
    step_text = f"{len(steps)}" + (f" ({_steps_range(steps)})" if steps else "")
    if len(s["ranks"]) > 1:
        step_text += f", ranks {', '.join(map(str, s['ranks']))} (norms and loss: rank {s['ranks'][0]})"
    lines.append(f"steps      {step_text}")
    files = f"{s['files']} data file" + ("" if s["files"] == 1 else "s")
    on_disk = f"; {files}, {_bytes(s['bytes'])} on disk" if s["path"] != "DataFrame" else ""
    lines.append(f"rows       {s['rows']}{on_disk}")
    lines.append("kinds      " + (", ".join(f"{k} {n}" for k, n in s["kinds"].items()) or "none"))
    if s["names"]:
        lines.append("names")
        width = max(len(k) for k in s["names"])
        for kind, names in s["names"].items():
            shown = ", ".join(_name(n) for n in names[:_MAX_NAMES])
            if len(names) > _MAX_NAMES:
                shown += f", ... ({len(names) - _MAX_NAMES} more)"
            lines.append(f"  {kind:<{width}}  {shown}")
    lines.append(
        "non-finite " + _nonfinite_text(s["first_nonfinite"]) + _not_counted(s.get("nonfinite_not_counted", 0))
    )
    if s.get("skipped_steps"):
        shown = ", ".join(map(str, s["skipped_steps"]))
        lines.append(f"skipped    steps {shown}: the GradScaler skipped optimizer.step() (inf/NaN gradients)")
    if s["loss"]:
        lines += _loss_lines(s["loss"])
    if s["parameters"]:
        lines += ["", "norms per parameter (L2; first step / last step / largest at step)"]
        rows = []
        for p in s["parameters"]:
            rows.append([_name(p["name"]), _norm_text(p.get("grad")), _norm_text(p.get("update"))])
        lines += _table(["parameter", "grad norm", "update norm"], rows)
    if s.get("metrics"):
        lines += ["", "logged metrics (run.log; first / last / smallest at step / largest at step)"]
        table = [
            [_name(m["name"]), m["steps"], f"{_num(m['first'])} / {_num(m['last'])}", _at(m["min"], m["min_step"]),
             _at(m["max"], m["max_step"])]
            for m in s["metrics"]
        ]  # fmt: skip
        lines += _table(["name", "steps", "first / last", "smallest", "largest"], table)
    return "\n".join(lines)


def _at(value: float, step: int | None) -> str:
    return _num(value) + ("" if step is None else f" (step {step})")


def _loss_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The loss table: one column per loss series; ``calls`` where micro-batches were summed."""
    names = list(dict.fromkeys(e.get("series", "loss") for e in entries))
    by_step: dict[int, dict[str, dict[str, Any]]] = {}
    for e in entries:
        by_step.setdefault(e["step"], {})[e.get("series", "loss")] = e
    summed = any(e["calls"] > 1 for e in entries)
    header = ["step"] + (["loss"] if len(names) == 1 else [f"loss {escape_text(n)}" for n in names])
    if summed:
        header += ["calls"] if len(names) == 1 else [f"calls {escape_text(n)}" for n in names]
    rows: list[Any] = []
    for step, at in by_step.items():
        cells = [_num(at[n]["loss"]) if n in at else "-" for n in names]
        calls = [str(at[n]["calls"]) if n in at else "-" for n in names] if summed else []
        rows.append([step, *cells, *calls])
    title = "loss per step" + (" (the sum of its micro-batch losses)" if summed else "")
    return ["", title, *_table(header, _elide(rows))]


def _elide(rows: list[Any]) -> list[Any]:
    if len(rows) <= _MAX_STEPS:
        return rows
    half = _MAX_STEPS // 2
    return [*rows[:half], None, *rows[-half:]]


def _table(header: list[str], rows: list[Any]) -> list[str]:
    cells = [[str(c) for c in row[: len(header)]] if row is not None else None for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells if r is not None]) for i, h in enumerate(header)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row in cells:
        if row is None:
            out.append("  ...")
        else:
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return out


def _norm_text(n: dict[str, Any] | None) -> str:
    if n is None:
        return "-"
    at = f" (step {n['max_step']})" if n["max_step"] is not None else ""
    return f"{_num(n['first'])} / {_num(n['last'])} / {_num(n['max'])}{at}"


def _nonfinite_text(found: dict[str, Any] | None) -> str:
    if found is None:
        return "none"
    text = (
        f"first at step {found['step']}: {_row(found['kind'], found['name'])} call {found['call']}"
        + (f" part {found['part']!r}" if found["part"] else "")
        + f", {found['count']} of {found['numel']} elements"
    )
    if found["index"] is not None:
        value = found["value"]
        text += f", first at index {tuple(found['index'])} = {complex(*value) if isinstance(value, list) else value!r}"
    return text


def _not_counted(rows: int) -> str:
    if not rows:
        return ""
    return f" ({rows} row(s) with ±inf masks or a gradient scaler's skipped values are not counted)"


def _row(kind: str, name: str) -> str:
    return "loss" if (kind, name) == ("loss", "loss") else f"{kind} {_name(name)}"


def _name(name: str) -> str:
    """A name as printed: quoted when empty or padded with spaces, its control characters escaped."""
    return repr(name) if name == "" or name != name.strip() else escape_text(name)


def _num(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def _steps_range(steps: list[int]) -> str:
    if len(steps) == steps[-1] - steps[0] + 1:  # sorted and distinct: no gaps
        return f"{steps[0]} to {steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    return f"{steps[0]} to {steps[-1]}, with gaps"


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"
