"""``tracer summary``: what a trace holds, at a glance (read without the values column)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tracer._render import escape_text
from tracer._schema import KINDS

_COLUMNS = ["step", "seq", "rank", "kind", "name", "call", "part", "numel", "mean", "norm", "nonfinite"]
_MAX_NAMES = 12
_MAX_STEPS = 20


def summarize(path: Path) -> dict[str, Any]:
    """The summary of the trace at ``path`` as plain data (what ``tracer summary --json`` prints)."""
    from tracer._load import load
    from tracer._reader import read_meta

    rows = load(path, columns=_COLUMNS)
    meta = read_meta(path)
    files = [f for f in path.rglob("*") if f.is_file()]
    steps = sorted({int(s) for s in rows["step"]})
    kinds = [k for k in KINDS if k in set(rows["kind"])]
    lead = rows[rows["rank"] == rows["rank"].min()] if len(rows) else rows
    return {
        "path": str(path),
        "model": meta.get("model"),
        "optimizers": [o["class"] for o in meta.get("optimizers", [])],
        "complete": meta.get("complete"),
        "steps": steps,
        "ranks": sorted({int(r) for r in rows["rank"]}),
        "rows": len(rows),
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "kinds": {k: int((rows["kind"] == k).sum()) for k in kinds},
        "names": {k: list(dict.fromkeys(rows.loc[rows["kind"] == k, "name"])) for k in kinds},
        "loss": _loss(lead),
        "parameters": _norms(lead),
        "first_nonfinite": _first_nonfinite(path, rows),
        "skipped_steps": sorted({int(x) for x in rows.loc[rows["kind"] == "skipped", "step"]}),
    }


def _loss(rows: Any) -> list[dict[str, Any]]:
    loss = rows[rows["kind"] == "loss"]
    out = []
    for step, group in loss.groupby("step", sort=True):
        out.append({"step": int(step), "loss": float(group["mean"].mean()), "calls": len(group)})
    return out


def _norms(rows: Any) -> list[dict[str, Any]]:
    """Per parameter: gradient and update L2 norm at the first and last step, and the largest."""
    out: dict[str, dict[str, Any]] = {}
    for kind in ("grad", "update"):
        part = rows[rows["kind"] == kind]
        for name, group in part.groupby("name", sort=False):
            norms = group["norm"].to_numpy(dtype=np.float64, na_value=np.nan)
            steps = group["step"].to_numpy()
            entry = out.setdefault(name, {"name": name})
            if np.isnan(norms).all():
                largest = math.nan
                at = None
            else:
                i = int(np.nanargmax(norms))
                largest, at = float(norms[i]), int(steps[i])
            entry[kind] = {
                "first": float(norms[0]),
                "last": float(norms[-1]),
                "max": largest,
                "max_step": at,
                "steps": len(norms),
            }
    return list(out.values())


def _first_nonfinite(path: Path, rows: Any) -> dict[str, Any] | None:
    counts = rows["nonfinite"].to_numpy(dtype=np.float64, na_value=0.0)
    hits = np.flatnonzero(counts > 0)
    if not hits.size:
        return None
    row = rows.iloc[int(hits[0])]
    found: dict[str, Any] = {
        "step": int(row["step"]),
        "kind": row["kind"],
        "name": row["name"],
        "call": int(row["call"]),
        "part": row["part"],
        "count": int(row["nonfinite"]),
        "numel": int(row["numel"]),
        "index": None,
        "value": None,
    }
    from tracer._load import load

    full = load(path, kind=row["kind"], step=int(row["step"]), columns=["seq", "rank", "name", "shape", "values"])
    full = full[(full["seq"] == row["seq"]) & (full["rank"] == row["rank"])]
    if len(full) and full["values"].iloc[0] is not None:
        values = np.asarray(full["values"].iloc[0])  # float64, or complex128 for complex rows
        flat = int(np.flatnonzero(~np.isfinite(values))[0])
        shape = tuple(int(s) for s in full["shape"].iloc[0])
        found["index"] = list(np.unravel_index(flat, shape)) if shape else []
        found["index"] = [int(i) for i in found["index"]]
        value = values[flat]
        found["value"] = [float(value.real), float(value.imag)] if np.iscomplexobj(value) else float(value)
    return found


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
    lines.append(f"rows       {s['rows']}; {s['files']} file(s), {_bytes(s['bytes'])} on disk")
    lines.append("kinds      " + (", ".join(f"{k} {n}" for k, n in s["kinds"].items()) or "none"))
    if s["names"]:
        lines.append("names")
        width = max(len(k) for k in s["names"])
        for kind, names in s["names"].items():
            shown = ", ".join(_name(n) for n in names[:_MAX_NAMES])
            if len(names) > _MAX_NAMES:
                shown += f", ... ({len(names) - _MAX_NAMES} more)"
            lines.append(f"  {kind:<{width}}  {shown}")
    lines.append("non-finite " + _nonfinite_text(s["first_nonfinite"]))
    if s.get("skipped_steps"):
        shown = ", ".join(map(str, s["skipped_steps"]))
        lines.append(f"skipped    steps {shown}: the GradScaler skipped optimizer.step() (inf/NaN gradients)")
    if s["loss"]:
        lines += ["", "loss per step"]
        lines += _table(
            ["step", "loss"] + (["calls"] if any(r["calls"] > 1 for r in s["loss"]) else []),
            [None if r is None else [r["step"], _num(r["loss"]), r["calls"]] for r in _elide(s["loss"])],
        )
    if s["parameters"]:
        lines += ["", "norms per parameter (L2; first step / last step / largest at step)"]
        rows = []
        for p in s["parameters"]:
            rows.append([_name(p["name"]), _norm_text(p.get("grad")), _norm_text(p.get("update"))])
        lines += _table(["parameter", "grad norm", "update norm"], rows)
    return "\n".join(lines)


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
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
