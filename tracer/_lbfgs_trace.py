"""LBFGS steps of a trace, checked by replay (:func:`tracer._lbfgs_replay.replay_lbfgs`).

An LBFGS step is recorded as (see README, "What is checked"):

- ``param`` rows, call 0: each parameter before the step; ``state`` rows (call 0) of the
  first parameter only (LBFGS keeps its whole state there), lists as parts ``old_dirs.0``…;
- ``grad`` rows, call k: the gradients closure evaluation k left (k = 0, 1, …);
- ``param`` rows, call k ≥ 1: the parameters evaluation k was evaluated at;
- ``loss`` rows: the loss of each evaluation, the last ones of the step by call;
- ``update`` rows, call 0: the whole step.

:func:`lbfgs_checks` rebuilds each step of each LBFGS optimizer from those rows, replays it
over all its parameters (in the optimizer's order) and gives, per update, the predicted new
values or why there are none.

>>> found = lbfgs_checks(trace.updates(), trace.rows(kind="loss"), bases)   # doctest: +SKIP
>>> found[(3, "fc.weight")].predicted                                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from tracer._lbfgs_replay import Diverged, Evaluation, replay_lbfgs
from tracer._row_checks import parse_hparams
from tracer.rules.lbfgs import assemble


@dataclasses.dataclass
class LBFGSCheck:
    """One update of an LBFGS step: its predicted new values (flat float64, a complex
    parameter's real view), or the reason there are none. ``diverged``: the replay
    evaluated the closure elsewhere (or more or fewer times) than the traced step, so the
    update does not follow the rule whatever ``predicted`` says."""

    predicted: np.ndarray | None = None
    reason: str | None = None
    diverged: bool = False


def is_lbfgs(optimizer: Any, bases: Mapping[str, Sequence[str]]) -> bool:
    """Whether the class named ``optimizer`` is torch's LBFGS or a subclass of it."""
    return isinstance(optimizer, str) and (optimizer == "LBFGS" or "LBFGS" in bases.get(optimizer, ()))


def lbfgs_checks(
    updates: pd.DataFrame, losses: pd.DataFrame, bases: Mapping[str, Sequence[str]]
) -> dict[tuple[int, str], LBFGSCheck]:
    """``{(step, name): LBFGSCheck}`` for every update of an LBFGS optimizer in ``updates``
    (grad, param, update and state rows with values); ``losses``: the trace's loss rows."""
    if not len(updates) or "optimizer" not in updates:
        return {}
    mine = updates[[is_lbfgs(o, bases) for o in updates["optimizer"].tolist()]]
    loss_by_step = _losses(losses)
    found: dict[tuple[int, str], LBFGSCheck] = {}
    for (step, _), rows in mine.groupby(["step", "optimizer"], sort=False):
        names = rows[rows["kind"] == "update"]["name"].tolist()
        check = _check_step(rows, loss_by_step.get(int(step), []))
        for i, name in enumerate(names):
            found[(int(step), str(name))] = check[i] if isinstance(check, list) else LBFGSCheck(reason=check)
    return found


def _losses(losses: pd.DataFrame) -> dict[int, list[float]]:
    if not len(losses):
        return {}
    out: dict[int, list[tuple[int, float]]] = {}
    for step, call, values in zip(losses["step"].tolist(), losses["call"].tolist(), losses["values"].tolist()):
        if values is not None and not isinstance(values, float) and len(values) == 1:
            out.setdefault(int(step), []).append((int(call), float(values[0])))
    return {s: [v for _, v in sorted(pairs)] for s, pairs in out.items()}


def _tensor(row: Mapping[str, Any]) -> torch.Tensor | None:
    """The row's tensor in its own dtype and shape (None: values not stored)."""
    values = row.get("values")
    if values is None or isinstance(values, float):
        return None
    shape = tuple(int(s) for s in row["shape"])
    dtype = getattr(torch, str(row["dtype"]), torch.float64)
    array = values if type(values) is np.ndarray else np.asarray(values)
    if array.dtype.kind == "c":  # read back as complex numbers
        return torch.from_numpy(np.array(array, dtype=np.complex128)).reshape(shape).to(dtype)
    tensor = torch.from_numpy(np.array(array, dtype=np.float64))
    if dtype.is_complex:  # interleaved real and imaginary parts
        return torch.view_as_complex(tensor.reshape(*shape, 2)).to(dtype)
    return tensor.reshape(shape).to(dtype)


def _state_value(key: str, t: torch.Tensor) -> Any:
    """Python numbers where torch's LBFGS keeps them (counters, H_diag = 1, prev_loss)."""
    if t.dim() == 0 and t.dtype == torch.int64:
        return int(t.item())
    if key == "prev_loss" and t.dim() == 0:
        return float(t.item())
    return t


def _check_step(rows: pd.DataFrame, losses: list[float]) -> list[LBFGSCheck] | str:
    """The checks of one LBFGS step's updates, in their order; a reason shared by all of them."""
    records = rows.to_dict("records")
    params = [r for r in records if r["kind"] == "param" and int(r["call"]) == 0]
    updates = [r for r in records if r["kind"] == "update"]
    names = [str(r["name"]) for r in params]
    if [str(r["name"]) for r in updates] != names:
        return "the trace lacks the param rows of some of this LBFGS step's parameters, which it moves as one vector"
    grads: dict[int, dict[str, torch.Tensor | None]] = {}
    points: dict[int, dict[str, torch.Tensor | None]] = {}
    state: dict[str, torch.Tensor | None] = {}
    for r in records:
        if r["kind"] == "grad":
            grads.setdefault(int(r["call"]), {})[str(r["name"])] = _tensor(r)
        elif r["kind"] == "param" and int(r["call"]) > 0:
            points.setdefault(int(r["call"]), {})[str(r["name"])] = _tensor(r)
        elif r["kind"] == "state" and str(r["name"]) == names[0]:
            state[str(r["part"])] = _tensor(r)
    before = [_tensor(r) for r in params]
    n = max(grads) + 1 if grads else 0
    stored = [*before, *state.values(), *(g for k in grads.values() for g in k.values()),
              *(p for k in points.values() for p in k.values())]  # fmt: skip
    if any(t is None for t in stored):
        return (
            "the values of this LBFGS step (its parameters, state and every closure evaluation's gradients) were "
            "not all stored (more than max_values elements); trace with max_values=None, or with verify=True to "
            "check it while training"
        )
    if n == 0 or sorted(grads) != list(range(n)) or sorted(points) != list(range(1, n)):
        return "the trace does not hold every closure evaluation of this LBFGS step (grad rows call 0, 1, …)"
    if len(losses) < n:
        return f"the trace holds {len(losses)} loss rows at this LBFGS step for its {n} closure evaluations"
    known = cast("dict[int, dict[str, torch.Tensor]]", points)
    start = cast("list[torch.Tensor]", before)
    evaluations = [
        Evaluation(loss, [grads[k].get(name) for name in names], start if k == 0 else [known[k][n] for n in names])
        for k, loss in enumerate(losses[-n:])
    ]
    hparams = parse_hparams(str(params[0]["hparams"]), "the hparams of an LBFGS step")
    torch_state = {k: _state_value(k, v) if isinstance(v, torch.Tensor) else v for k, v in assemble(state).items()}
    try:
        replayed = replay_lbfgs(hparams, start, torch_state, evaluations)
    except Diverged as exc:
        return [LBFGSCheck(np.full(_size(t), math.nan), f"{exc}: it does not follow LBFGS", True) for t in start]
    except Exception as exc:
        return f"replaying torch.optim.LBFGS on the recorded closure evaluations failed ({type(exc).__name__}: {exc})"
    return _judged(replayed.params, replayed.points, evaluations, [str(r["dtype"]) for r in params])


def _size(t: torch.Tensor) -> int:
    return t.numel() * (2 if t.is_complex() else 1)


def _judged(final: list[torch.Tensor], points: list[list[torch.Tensor]], evaluations: list[Evaluation],
            dtypes: list[str]) -> list[LBFGSCheck]:  # fmt: skip
    """The predictions, each marked diverged where a replayed evaluation point is not the traced one."""
    from tracer._verify import Prediction, verdict, wide

    checks = []
    for i, new in enumerate(final):
        check = LBFGSCheck(wide(new).reshape(-1).numpy())
        for k in range(1, len(points)):
            error, matches = verdict(Prediction(wide(points[k][i]), dtypes[i]), evaluations[0].params[i],
                                     evaluations[k].params[i])  # fmt: skip
            if not matches:
                check.reason = (
                    f"the replayed LBFGS step evaluated the closure at other parameters than the traced one "
                    f"(evaluation {k}, by up to {error:.3g})"
                )
                check.diverged = True
                break
        checks.append(check)
    return checks
