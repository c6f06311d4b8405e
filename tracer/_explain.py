"""The whole step of a small model, worked by hand, in the order the loop runs it.

Covers a root ``nn.Linear`` or an ``nn.Sequential`` of Linear/ReLU/Sigmoid/Tanh layers, on
one unbatched example (``x`` of shape ``(features,)``) or a batch of up to
:data:`MAX_BATCH` examples, with an MSE, L1, binary cross-entropy or cross-entropy loss
(mean or sum). Every number shown is recomputed from the traced inputs and parameters and
checked against the traced value (✓ / ✗). The target is not a model input, so it is
recovered from the traced gradient of the loss. Which steps are small is told from the
statistics, so a large model's values are never read here; a step that cannot be worked
by hand gets a one-sentence reason instead.

>>> trace = tracer.open("traces/walkthrough")            # doctest: +SKIP
>>> walk = walkthroughs(trace, trace.stats)[0]            # doctest: +SKIP
>>> walk.aliases["weight[0,0]"]                           # doctest: +SKIP
'w₁'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tracer._explain_backward import backward
from tracer._explain_loss import explain_loss
from tracer._explain_math import ACTIVATIONS, Ctx, arg, num, ok, pname, sub, sup
from tracer._render import Block, Heading, Items, Para

if TYPE_CHECKING:
    from tracer._trace import ParameterMeta, Trace

MAX_BATCH = 4
"""The most examples of a batch a walkthrough works by hand."""
_ROOTS = ("Linear", "Sequential")
_KINDS = ("input", "activation", "activation_grad", "loss", "param", "grad")
"""What a walkthrough reads: the forward pass, the loss, the backward pass and the parameters."""
_COLUMNS = ("step", "kind", "name", "part", "call", "module_type", "shape", "values")
COVERED = "an nn.Linear, or an nn.Sequential of Linear, ReLU, Sigmoid and Tanh layers"


@dataclasses.dataclass(frozen=True)
class Walk:
    """One step worked by hand: the forward pass, the loss and the gradients as blocks, and
    the tutorial's names of the parameters' elements (``{"weight[0,0]": "w₁"}``)."""

    blocks: tuple[Block, ...]
    aliases: Mapping[str, str]


def walkthroughs(trace: Trace, rows: pd.DataFrame, max_elements: int = 16) -> dict[int, Walk | str]:
    """``{step: Walk}`` for the steps of ``rows`` (statistics) whose model is small enough to
    be worked by hand, ``{step: reason}`` (one sentence) for the others; only the small
    steps' values are read."""
    steps, reasons = screen(rows, max_elements)
    out: dict[int, Walk | str] = dict(reasons)
    if not steps:
        return out
    by_step: dict[int, list[dict[str, Any]]] = {}
    values = trace.rows(kind=_KINDS, step=steps, columns=_COLUMNS)
    columns = [c for c in _COLUMNS if c in values.columns]
    for record in zip(*(values[c].tolist() for c in columns)):
        row = dict(zip(columns, record))
        by_step.setdefault(int(row["step"]), []).append(row)
    for step in steps:
        try:
            out[step] = explain_step(_Step(by_step.get(step, [])), max_elements)
        except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as exc:  # a report never fails on one
            out[step] = f"the step could not be worked by hand ({type(exc).__name__}: {exc})"
    return out


def may_walk(parameters: Sequence[ParameterMeta], max_elements: int = 16) -> bool:
    """False when the model is too large for any walkthrough, told from the metadata alone:
    a covered model's parameters are Linear weights and biases whose every side is an input
    or output size, at most ``max_elements``. True when nothing is known (a DataFrame)."""
    return all(all(side <= max_elements for side in p.shape) for p in parameters)


def too_large(max_elements: int) -> str:
    """The reason given when :func:`may_walk` is False."""
    return (f"the model is too large to work by hand (a walkthrough needs every tensor side to be at most "
            f"max_elements={max_elements})")  # fmt: skip


def screen(rows: pd.DataFrame, max_elements: int = 16) -> tuple[list[int], dict[int, str]]:
    """The steps a walkthrough may cover, and why each other step is not, told from the
    statistics alone (one pass per step, a covered model, small tensors, a small batch)."""
    need = {"step", "kind", "name", "call", "part", "module_type", "shape", "numel"}
    if rows.empty or not need <= set(rows):
        return [], {}
    all_steps = {int(s) for s in rows["step"]}
    acts = rows[rows["kind"] == "activation"]
    inputs = rows[(rows["kind"] == "input") & (rows["part"] == "0")]
    losses = set(rows.loc[rows["kind"] == "loss", "step"])
    busy = set(rows.loc[rows["call"] > 0, "step"])
    big = set(acts.loc[acts["numel"] > max_elements, "step"]) | set(inputs.loc[inputs["numel"] > max_elements, "step"])
    root = acts[acts["name"] == ""]
    root_type = dict(zip(root["step"], root["module_type"]))
    with_acts = set(acts["step"])
    reasons: dict[int, str] = {}
    walkable = []
    for step in sorted(all_steps):
        if step not in root_type and step in with_acts:
            reasons[step] = (
                f"the loop called a submodule, not the model; a walkthrough covers {COVERED} called as a whole"
            )
        elif step not in root_type:
            reasons[step] = "the forward pass was not traced (capture= left out activations)"
        elif step not in losses:
            reasons[step] = "no loss was traced"
        elif step in busy:
            reasons[step] = ("the model ran more than once in a step (several forward or backward passes); "
                             "a walkthrough follows one of each")  # fmt: skip
        elif root_type[step] not in _ROOTS:
            reasons[step] = f"the model is a {root_type[step]}; a walkthrough covers {COVERED}"
        elif step in big:
            reasons[step] = f"a tensor has more than max_elements={max_elements} elements"
        else:
            walkable.append(step)
    return walkable, reasons


class _Step:
    """The rows of one step, looked up by (kind, name, part)."""

    def __init__(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.records = list(records)
        self.rows = {(r["kind"], r["name"], r["part"]): r for r in self.records}

    def get(self, kind: str, name: str, part: str = "") -> Any:
        return self.rows.get((kind, name, part))

    def array(self, kind: str, name: str, part: str = "", batch: int | None = None) -> np.ndarray | None:
        """The row's values as float64 (``batch`` rows when given), or None: not stored,
        complex, or not of that many rows."""
        row = self.get(kind, name, part)
        v = row["values"] if row is not None else None
        if v is None or np.iscomplexobj(v) or len(v) != int(np.prod(row["shape"] if row["shape"] is not None else ())):
            return None
        out = np.asarray(v, dtype=np.float64)
        if batch is None:
            return out
        return out.reshape(batch, -1) if out.size % batch == 0 else None


def layers_of(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]] | str:
    """``[(name, type)]`` of the model's layers in order, or why it is not covered."""
    types = {r["name"]: r["module_type"] for r in records if r["kind"] == "activation"}
    if types.get("") == "Linear":
        return [("", "Linear")]
    children = [n for n in types if n and "." not in n]
    if types.get("") != "Sequential" or not children or not all(n.isdigit() for n in children):
        return f"the model is not {COVERED}"
    layers = [(n, types[n]) for n in sorted(children, key=int)]
    other = sorted({t for _, t in layers if t != "Linear" and t not in ACTIVATIONS})
    if other:
        return f"{', '.join(other)} {'is' if len(other) == 1 else 'are'} not worked by hand (a walkthrough covers {COVERED})"
    return layers


def explain_step(step: _Step, max_elements: int) -> Walk | str:
    """The walkthrough of one step, or the one-sentence reason it cannot be given."""
    layers = layers_of(step.records)
    if isinstance(layers, str):
        return layers
    first = step.get("input", layers[0][0], "0")
    if first is None or first["shape"] is None:
        return "the model's input was not traced (capture= left out inputs)"
    shape = tuple(int(s) for s in first["shape"])
    if len(shape) not in (1, 2):
        return f"the input has shape {list(shape)}; a walkthrough covers an input of shape (features,) or (batch, features)"
    batch = 1 if len(shape) == 1 else shape[0]
    if batch > MAX_BATCH:
        return f"the batch holds {batch} examples; a walkthrough works at most {MAX_BATCH} by hand"
    x = step.array("input", layers[0][0], "0", batch)
    loss_row = step.get("loss", "loss")
    out_name = "" if len(layers) == 1 else layers[-1][0]
    y_hat, g_out = step.array("activation", out_name, "", batch), step.array("activation_grad", out_name, "", batch)
    loss_value = step.array("loss", "loss")
    if x is None or y_hat is None or g_out is None or loss_row is None or loss_value is None:
        return "the values of this step's input, output, loss or output gradient were not stored (max_values)"
    if not all(np.isfinite(v).all() for v in (x, y_hat, g_out, loss_value)):
        return "a value of this step is NaN or infinite (tracer diagnose finds where it started)"
    ctx = Ctx(batch=batch, unbatched=len(shape) == 1, simple=len(layers) == 1 and y_hat.shape[1] == 1)
    outs = {}
    for name, _ in layers:
        out = step.array("activation", name if len(layers) > 1 else "", "", batch)
        if out is None:
            return f"the output of {f'layer {name}' if name else 'the model'} was not stored (max_values)"
        outs[name] = out
    params: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    a = x
    for name, kind in layers:
        if kind == "Linear":
            w = step.array("param", pname(name, "weight"))
            if step.get("param", pname(name, "weight")) is None:
                return "no parameter was traced at this step (the optimizer did not step, or capture= left out params)"
            if w is None or w.size != outs[name].shape[1] * a.shape[1]:
                return f"the values of {pname(name, 'weight')} were not stored (max_values)"
            params[name] = (w.reshape(outs[name].shape[1], a.shape[1]), step.array("param", pname(name, "bias")))
        a = outs[name]
    loss = explain_loss(str(loss_row["module_type"]), y_hat, g_out, float(loss_value[0]), ctx)
    if isinstance(loss, str):
        return loss
    blocks: list[Block] = [Para(_intro(ctx, params))]
    blocks += _forward(ctx, layers, x, outs, params, loss.predicted)
    blocks += loss.blocks
    grads = {
        name: (step.array("grad", pname(name, "weight")), step.array("grad", pname(name, "bias"))) for name in params
    }
    traced_deltas = {name: step.array("activation_grad", name, "", batch) for name, _ in layers}
    blocks += backward(ctx, layers, x, outs, params, grads, traced_deltas, loss)
    aliases = _aliases(ctx, params) if ctx.simple else {}
    return Walk(tuple(blocks), aliases)


def _intro(ctx: Ctx, params: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> str:
    lead = ("The step worked by hand, in the order the loop runs it; each ✓ marks a number recomputed "
            "here that equals the traced one.")  # fmt: skip
    if not ctx.simple:
        return lead
    ((w, b),) = params.values()
    names = [f"w{sub(i)} = weight[0,{i}] = {num(v)} (the weight of x{sub(i)})" for i, v in enumerate(w[0])]
    if b is not None:
        names.append(f"b = bias[0] = {num(b[0])}")
    count = len(names)
    listed = ", ".join(names[:-1]) + " and " + names[-1] if count > 1 else names[0]
    return f"{lead} The model has {count} parameter{'s' if count > 1 else ''}: {listed}."


def _aliases(ctx: Ctx, params: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, str]:
    ((name, (w, b)),) = params.items()
    out = {f"{pname(name, 'weight')}[0,{i}]": f"w{sub(i)}" for i in range(w.shape[1])}
    if b is not None:
        out[f"{pname(name, 'bias')}[0]"] = "b"
    return out


def _forward(ctx, layers, x, outs, params, predicted: str) -> list[Block]:
    out: list[Block] = [Heading(3, "1. Forward pass: pred = model(x)")]
    if ctx.simple:
        ((w, b),) = params.values()
        terms = " + ".join(f"w{sub(i)}x{sub(i)}" for i in range(w.shape[1])) + (" + b" if b is not None else "")
        out += [
            Para("The model predicts the weighted sum of the inputs plus the bias:"),
            Items((f"ŷ = {terms}",), code=True),
        ]
        lines = []
        for n in range(ctx.batch):
            numbers = " + ".join(f"{arg(w[0, i])}·{arg(x[n, i])}" for i in range(w.shape[1]))
            numbers += f" + {arg(b[0])}" if b is not None else ""
            got = float(w[0] @ x[n] + (b[0] if b is not None else 0.0))
            lines.append(f"ŷ{sup(n, ctx)} = {numbers} = {num(got)} {ok(got, outs[''][n, 0])}")
        inputs = ctx.each(lambda n: ", ".join(f"x{sub(i)}{sup(n, ctx)} = {num(v)}" for i, v in enumerate(x[n])))
        out += [
            Para(f"The input is {inputs}; substituting the values:"),
            Items(tuple(lines), code=True),
            Para(predicted),
        ]
        return out
    out.append(Para("Each layer computes its outputs from the previous layer's; h[k] is the output of layer k:"))
    a, a_sym = x, "x"
    for name, kind in layers:
        lines = []
        for n in range(ctx.batch):
            for j in range(outs[name].shape[1]):
                lines.append(_unit(ctx, name, kind, a, a_sym, params.get(name), outs[name], n, j))
        formula = (f"h[{name}] = {pname(name, 'weight')}·{a_sym}" + (f" + {pname(name, 'bias')}" if params[name][1] is not None else "")
                   if kind == "Linear" else f"h[{name}] = {ACTIVATIONS[kind][0]}({a_sym})")  # fmt: skip
        out += [
            Para(f"Layer {name} ({kind}): {formula}" if name else f"The model ({kind}): {formula}"),
            Items(tuple(lines), code=True),
        ]
        a, a_sym = outs[name], ctx.h(name)
    out.append(Para(predicted))
    return out


def _unit(ctx: Ctx, name, kind, a, a_sym, wb, out, n: int, j: int) -> str:
    label = f"{ctx.h(name)}[{j}]{sup(n, ctx)}"
    if kind == "Linear":
        w, b = wb
        numbers = " + ".join(f"{arg(w[j, i])}·{arg(a[n, i])}" for i in range(a.shape[1]))
        numbers += f" + {arg(b[j])}" if b is not None else ""
        got = float(w[j] @ a[n] + (b[j] if b is not None else 0.0))
        return f"{label} = {numbers} = {num(got)} {ok(got, out[n, j])}"
    z = float(a[n, j])
    got = {"ReLU": max(0.0, z), "Sigmoid": 1 / (1 + np.exp(-z)), "Tanh": float(np.tanh(z))}[kind]
    shown = {"ReLU": f"max(0, {num(z)})", "Sigmoid": f"1 / (1 + e^{arg(-z)})", "Tanh": f"tanh({num(z)})"}[kind]
    return f"{label} = {kind}: {shown} = {num(got)} {ok(got, out[n, j])}"
