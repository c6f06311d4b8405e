"""The whole step of a small model, worked by hand: forward, loss, chain rule.

Covers a root ``nn.Linear`` or an ``nn.Sequential`` of Linear/ReLU/Sigmoid/Tanh layers on a
batch of one, with an MSE, L1, binary cross-entropy or cross-entropy loss. Every number
shown is recomputed from the traced inputs and parameters and checked against the traced
value (✓ / ✗). The target is not a model input, so it is recovered from the traced
gradient of the loss where the loss allows it (MSE, BCE, cross-entropy). Which steps are
small is told from the statistics, so a large model's values are never read here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tracer.rules._base import arg, num

if TYPE_CHECKING:
    from tracer._trace import ParameterMeta, Trace

_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_ACTIVATIONS = {"ReLU", "Sigmoid", "Tanh"}
_ROOTS = ("Linear", "Sequential")
_KINDS = ("input", "activation", "activation_grad", "loss", "param", "grad")
"""What a walkthrough reads: the forward pass, the loss, the backward pass and the parameters."""
_COLUMNS = ("step", "kind", "name", "part", "call", "module_type", "shape", "values")


def _ok(got: float, traced: float) -> str:
    return "✓" if math.isclose(got, traced, rel_tol=1e-6, abs_tol=1e-9) else f"✗ (traced {num(traced)})"


def _vec(row: Any) -> np.ndarray | None:
    """The row's stored values (None when not stored, or complex: no hand calculation covers those)."""
    v = row["values"] if row is not None else None
    if v is None or np.iscomplexobj(v):
        return None
    return np.asarray(v, dtype=np.float64)


def walkthroughs(trace: Trace, rows: pd.DataFrame, max_elements: int = 16) -> dict[int, list[str]]:
    """``{step: lines}`` for the steps of ``rows`` (statistics) whose model is small enough to
    be worked by hand; only those steps' values are read.

    Example::

        trace = tracer.open("traces/walkthrough")
        walkthroughs(trace, trace.stats)[0][0]   # '**Forward pass.** The input is x₁ = 1, x₂ = 2.'
    """
    steps = walkable_steps(rows, max_elements)
    if not steps:
        return {}
    by_step: dict[int, list[dict[str, Any]]] = {}
    values = trace.rows(kind=_KINDS, step=steps, columns=_COLUMNS)
    columns = [c for c in _COLUMNS if c in values.columns]
    for record in zip(*(values[c].tolist() for c in columns)):
        row = dict(zip(columns, record))
        by_step.setdefault(int(row["step"]), []).append(row)
    out = {}
    for step, records in by_step.items():
        lines = _explain(_Step(records), max_elements)
        if lines:
            out[step] = lines
    return out


def may_walk(parameters: Sequence[ParameterMeta], max_elements: int = 16) -> bool:
    """False when the model is too large for any walkthrough, told from the metadata alone:
    a covered model's parameters are Linear weights and biases whose every side is an input
    or output size, at most ``max_elements``. True when nothing is known (a DataFrame)."""
    return all(all(side <= max_elements for side in p.shape) for p in parameters)


def walkable_steps(rows: pd.DataFrame, max_elements: int = 16) -> list[int]:
    """The steps a walkthrough may cover, told from the statistics alone: one forward and one
    backward pass of a root ``Linear``/``Sequential`` on a batch of one, every input and
    output of at most ``max_elements`` elements."""
    if rows.empty or not {"step", "kind", "name", "call", "part", "module_type", "shape", "numel"} <= set(rows):
        return []
    busy = set(rows.loc[rows["call"] > 0, "step"])  # several passes per step: no single story to tell
    acts = rows[rows["kind"] == "activation"]
    big = set(acts.loc[acts["numel"] > max_elements, "step"])
    roots = set(acts.loc[(acts["name"] == "") & acts["module_type"].isin(_ROOTS), "step"])
    inputs = rows[(rows["kind"] == "input") & (rows["name"] == "") & (rows["part"] == "0")]
    one = inputs["shape"].map(lambda shape: len(shape) > 0 and int(shape[0]) == 1).astype(bool)
    small = set(inputs.loc[one & (inputs["numel"] <= max_elements), "step"])
    return sorted(int(s) for s in (roots & small) - busy - big)


class _Step:
    """The rows of one step, looked up by (kind, name, part)."""

    def __init__(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.records = list(records)
        self.rows = {(r["kind"], r["name"], r["part"]): r for r in self.records}

    def get(self, kind: str, name: str, part: str = "") -> Any:
        return self.rows.get((kind, name, part))


def _explain(step: _Step, max_elements: int) -> list[str] | None:
    """Markdown lines walking through one step, or None when the model is not covered."""
    if not step.records or any(int(r["call"]) > 0 for r in step.records):
        return None  # several passes per step: no single story to tell
    layers = _layers(step.records)
    if layers is None:
        return None
    x = _vec(step.get("input", layers[0][0], "0"))
    loss_row = step.get("loss", "loss")
    out_name = "" if len(layers) == 1 else layers[-1][0]
    y_hat = _vec(step.get("activation", out_name))
    g_out = _vec(step.get("activation_grad", out_name))
    if x is None or y_hat is None or loss_row is None or g_out is None or x.size > max_elements:
        return None
    if step.get("input", layers[0][0], "0")["shape"][0] != 1:
        return None  # a batch of one only: the hand calculation of the tutorial
    simple = len(layers) == 1 and y_hat.size == 1  # the tutorial's ŷ = w₁x₁ + w₂x₂ + b
    lines = ["**Forward pass.** The input is " + _assign("x", x, simple) + "."]
    values = {"x": x}
    a, a_sym = x, "x"
    for name, kind in layers:
        out = _vec(step.get("activation", name if len(layers) > 1 else ""))
        if out is None or out.size > max_elements:
            return None
        if kind == "Linear":
            w = _vec(step.get("param", _pname(name, "weight")))
            b = _vec(step.get("param", _pname(name, "bias")))
            if w is None:
                return None
            w = w.reshape(out.size, a.size)
            lines += _linear_forward(name, a, a_sym, w, b, out, simple)
        else:
            lines += _activation_forward(name, kind, a, out)
        a, a_sym = out, ("ŷ" if simple else _sym(name))
        values[name] = out
    loss_values = _vec(loss_row)
    if loss_values is None:
        return None
    loss = float(loss_values[0])
    loss_lines = _loss(str(loss_row["module_type"]), y_hat, g_out, loss, simple)
    if loss_lines is None:
        return None
    lines += loss_lines
    mse_e = None
    if simple and str(loss_row["module_type"]).startswith("MseLoss"):
        mse_e = float(g_out[0]) / 2  # ∂L/∂ŷ = 2e with N = 1
    lines += _backward(step, layers, x, g_out, simple, mse_e)
    return lines


def _pname(module: str, param: str) -> str:
    return f"{module}.{param}" if module else param


def _sym(name: str) -> str:
    return f"h[{name}]" if name else "ŷ"


def _assign(sym: str, v: np.ndarray, simple: bool) -> str:
    if v.size == 1:
        return f"{sym} = {num(v[0])}"
    if simple:
        return ", ".join(f"{sym}{str(i + 1).translate(_SUB)} = {num(x)}" for i, x in enumerate(v))
    return f"{sym} = [{', '.join(num(x) for x in v)}]"


def _layers(records: list[Mapping[str, Any]]) -> list[tuple[str, str]] | None:
    types = {r["name"]: r["module_type"] for r in records if r["kind"] == "activation"}
    if types.get("") == "Linear":
        return [("", "Linear")]
    if types.get("") != "Sequential":
        return None
    children = [n for n in types if n and "." not in n]
    if not children or not all(n.isdigit() for n in children):
        return None
    layers = [(n, types[n]) for n in sorted(children, key=int)]
    if not all(t == "Linear" or t in _ACTIVATIONS for _, t in layers):
        return None
    return layers


def _linear_forward(name, a, a_sym, w, b, out, simple) -> list[str]:
    lines = []
    for j in range(out.size):
        if simple:
            terms = " + ".join(f"w{str(i + 1).translate(_SUB)}x{str(i + 1).translate(_SUB)}" for i in range(a.size))
            symbolic = f"ŷ = {terms}" + (" + b" if b is not None else "")
        else:
            terms = " + ".join(f"{_pname(name, 'weight')}[{j},{i}]·{a_sym}[{i}]" for i in range(a.size))
            symbolic = f"{_sym(name)}[{j}] = {terms}" + (f" + {_pname(name, 'bias')}[{j}]" if b is not None else "")
        numbers = " + ".join(f"{arg(w[j, i])}·{arg(a[i])}" for i in range(a.size))
        if b is not None:
            numbers += f" + {arg(b[j])}"
        got = float(w[j] @ a + (b[j] if b is not None else 0.0))
        lines.append(f"- {symbolic} = {numbers} = {num(got)} {_ok(got, out[j])}")
    if simple:
        lines.insert(0, "The prediction is the weighted sum of the inputs plus the bias:")
    return lines


def _activation_forward(name, kind, z, out) -> list[str]:
    lines = []
    for j in range(out.size):
        if kind == "ReLU":
            got, text = max(0.0, z[j]), f"max(0, {num(z[j])})"
        elif kind == "Sigmoid":
            got, text = 1 / (1 + math.exp(-z[j])), f"1 / (1 + e^{arg(-z[j])})"
        else:
            got, text = math.tanh(z[j]), f"tanh({num(z[j])})"
        lines.append(f"- {_sym(name)}[{j}] = {kind}: {text} = {num(got)} {_ok(got, out[j])}")
    return lines


def _loss(fn: str, y_hat: np.ndarray, g: np.ndarray, loss: float, simple: bool) -> list[str] | None:
    n = y_hat.size
    if fn.startswith("MseLoss"):
        for reduction, scale in (("mean", n), ("sum", 1)):
            y = y_hat - g * scale / 2
            e = y_hat - y
            got = float(np.sum(e * e) / (n if reduction == "mean" else 1))
            if math.isclose(got, loss, rel_tol=1e-9, abs_tol=1e-12):
                break
        else:
            return None
        lines = [
            (
                f"**Loss.** The target is {_assign('y', y, simple)}"
                " (recovered from the traced gradient: the target is not a model input)."
            ),
            f"The model predicted {num(y_hat[0]) if n == 1 else 'ŷ'}; the error is e = ŷ − y"
            + (f" = {num(y_hat[0])} − {arg(y[0])} = {num(e[0])}." if n == 1 else "."),
        ]
        if n == 1:
            lines.append(
                f"Mean squared error with N = 1: L = (ŷ − y)² = ({num(y_hat[0])} − {arg(y[0])})² = "
                f"{num(got)} {_ok(got, loss)}"
            )
        else:
            lines.append(f"Mean squared error: L = 1/N · Σ (ŷᵢ − yᵢ)² = {num(got)} {_ok(got, loss)}")
        k = "2" if reduction == "sum" else ("2" if n == 1 else f"2/{n}")
        lines.append(f"**Gradients by the chain rule.** ∂L/∂e = {k}·e, ∂e/∂ŷ = 1, so ∂L/∂ŷ = {k}·e:")
        for i in range(n):
            got_g = float(e[i]) * (2 if reduction == "sum" else 2 / n)
            label = "ŷ" if n == 1 else f"ŷ[{i}]"
            lines.append(f"- ∂L/∂{label} = {k}·{arg(e[i])} = {num(got_g)} {_ok(got_g, g[i])}")
        return lines
    if fn.startswith("L1Loss") or (fn.startswith("MeanBackward") and np.allclose(np.abs(g), 1 / n)):
        # F.l1_loss is mean(|ŷ − y|): its gradient is ±1/N everywhere
        return [
            f"**Loss.** Mean absolute error: L = 1/N · Σ |ŷᵢ − yᵢ| = {num(loss)} (traced).",
            "**Gradients by the chain rule.** ∂L/∂ŷᵢ = sign(ŷᵢ − yᵢ)/N: " + ", ".join(num(v) for v in g) + " (traced).",
        ]
    if fn.startswith("BinaryCrossEntropyBackward"):
        y = y_hat - g * y_hat * (1 - y_hat) * n
        with np.errstate(divide="ignore"):
            terms = y * np.log(y_hat) + (1 - y) * np.log(1 - y_hat)
        got = float(-np.mean(terms))
        return [
            f"**Loss.** The target is {_assign('y', np.round(y, 12), simple)} (recovered from the traced gradient).",
            f"Binary cross-entropy: L = −1/N · Σ [y·log ŷ + (1 − y)·log(1 − ŷ)] = {num(got)} {_ok(got, loss)}",
            "**Gradients by the chain rule.** ∂L/∂ŷ = (ŷ − y) / (ŷ(1 − ŷ)·N): "
            + ", ".join(f"{num(v)}" for v in g)
            + ".",
        ]
    if fn.startswith("NllLoss") and g.size == y_hat.size:
        z = y_hat - y_hat.max()
        soft = np.exp(z) / np.exp(z).sum()
        onehot = soft - g
        cls = int(np.argmax(onehot))
        got = float(-np.log(soft[cls]))
        return [
            f"**Loss.** The target class is {cls} (recovered from the traced gradient).",
            f"Cross-entropy: L = −log softmax(ŷ)[{cls}] = −log {num(soft[cls])} = {num(got)} {_ok(got, loss)}",
            "**Gradients by the chain rule.** ∂L/∂ŷ = softmax(ŷ) − onehot(y) = "
            + ", ".join(f"{num(s)} − {int(i == cls)}" for i, s in enumerate(soft))
            + f" = [{', '.join(num(v) for v in g)}] ✓",
        ]
    return None


def _backward(
    step: _Step,
    layers: list[tuple[str, str]],
    x: np.ndarray,
    g_out: np.ndarray,
    simple: bool,
    mse_e: float | None = None,
) -> list[str]:
    lines: list[str] = []
    delta = g_out
    for k in range(len(layers) - 1, -1, -1):
        name, kind = layers[k]
        prev = x if k == 0 else _vec(step.get("activation", layers[k - 1][0]))
        if prev is None:
            return lines
        a_sym = "x" if k == 0 else _sym(layers[k - 1][0])
        if kind == "Linear":
            w_grad = _vec(step.get("grad", _pname(name, "weight")))
            b_grad = _vec(step.get("grad", _pname(name, "bias")))
            if w_grad is None:
                return lines
            w_grad = w_grad.reshape(delta.size, prev.size)
            for j in range(delta.size):
                for i in range(prev.size):
                    got = float(delta[j] * prev[i])
                    if simple and mse_e is not None:  # the tutorial's form: 2e·x₁
                        sub = str(i + 1).translate(_SUB)
                        lines.append(
                            f"- ∂L/∂w{sub} = ∂L/∂e · ∂e/∂ŷ · ∂ŷ/∂w{sub} = 2e·1·x{sub} = 2·{arg(mse_e)}·{arg(prev[i])} = "
                            f"{num(got)} {_ok(got, w_grad[j, i])}"
                        )
                    elif simple:
                        sub = str(i + 1).translate(_SUB)
                        lines.append(
                            f"- ∂L/∂w{sub} = ∂L/∂ŷ · ∂ŷ/∂w{sub} = ∂L/∂ŷ · x{sub} = {arg(delta[j])}·{arg(prev[i])} = "
                            f"{num(got)} {_ok(got, w_grad[j, i])}"
                        )
                    else:
                        lines.append(
                            f"- ∂L/∂{_pname(name, 'weight')}[{j},{i}] = ∂L/∂{_sym(name)}[{j}] · {a_sym}[{i}] = "
                            f"{arg(delta[j])}·{arg(prev[i])} = {num(got)} {_ok(got, w_grad[j, i])}"
                        )
                if b_grad is not None:
                    got = float(delta[j])
                    label = "b" if simple else f"{_pname(name, 'bias')}[{j}]"
                    via = "∂L/∂ŷ · 1" if simple else f"∂L/∂{_sym(name)}[{j}]"
                    if simple and mse_e is not None:
                        via = f"2e = 2·{arg(mse_e)}"
                    lines.append(f"- ∂L/∂{label} = {via} = {num(got)} {_ok(got, b_grad[j])}")
            w = _vec(step.get("param", _pname(name, "weight")))
            if k > 0 and w is not None:
                delta = w.reshape(delta.size, prev.size).T @ delta
                traced = _vec(step.get("activation_grad", layers[k - 1][0]))
                for i, d in enumerate(delta):
                    check = _ok(float(d), traced[i]) if traced is not None else ""
                    lines.append(
                        f"- ∂L/∂{a_sym}[{i}] = Σⱼ {_pname(name, 'weight')}[j,{i}]·∂L/∂{_sym(name)}[j] = {num(d)} {check}"
                    )
        else:
            z = prev
            out = _vec(step.get("activation", name))
            if out is None:
                return lines
            deriv: np.ndarray
            if kind == "ReLU":
                deriv, text = (z > 0).astype(float), "1 if z > 0 else 0"
            elif kind == "Sigmoid":
                deriv, text = out * (1 - out), "σ(z)(1 − σ(z))"
            else:
                deriv, text = 1 - out * out, "1 − tanh²(z)"
            new = delta * deriv
            traced = _vec(step.get("activation_grad", layers[k - 1][0])) if k > 0 else None
            for i in range(new.size):
                check = _ok(float(new[i]), traced[i]) if traced is not None else ""
                lines.append(
                    f"- ∂L/∂{a_sym}[{i}] = ∂L/∂{_sym(name)}[{i}] · ({text}) = {arg(delta[i])}·{num(deriv[i])} = "
                    f"{num(new[i])} {check}"
                )
            delta = new
    return lines
