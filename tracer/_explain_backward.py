"""Stage 3 of a walkthrough, the gradients: each chain-rule factor derived, then the numbers.

The derivatives are derived first (``L = e²  ⇒  ∂L/∂e = 2e``, ``ŷ = w₁x₁ + w₂x₂ + b  ⇒
∂ŷ/∂w₁ = x₁``), multiplied out into each parameter's gradient, and only then filled in with
the step's numbers, each checked against the traced gradient; a closing sentence says what
the signs and sizes mean for the update.

>>> blocks = backward(ctx, layers, x, outs, params, grads, traced, loss)   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from tracer._explain_loss import LossWork
from tracer._explain_math import ACTIVATIONS, Ctx, arg, num, ok, pname, sub, sup
from tracer._render import Block, Heading, Items, Para

_INTRO = ("loss.backward() computes the gradient ∂L/∂θ of the loss with respect to every parameter θ (and "
          "stores it in θ.grad): how much the loss changes when θ changes a little.")  # fmt: skip

Params = dict[str, tuple[np.ndarray, "np.ndarray | None"]]
Grads = dict[str, tuple["np.ndarray | None", "np.ndarray | None"]]


def backward(
    ctx: Ctx, layers, x: np.ndarray, outs, params: Params, grads: Grads, traced, loss: LossWork
) -> list[Block]:
    """The gradient stage's blocks: derivation, numbers, and what they mean."""
    out: list[Block] = [Heading(3, "3. Gradients: loss.backward()")]
    if ctx.simple:
        body, found = _simple(ctx, x, params, grads, loss)
    else:
        body, found = _layered(ctx, layers, x, outs, params, grads, traced, loss)
    return out + body + ([Para(_meaning(found, ctx, x))] if found else [])


def _simple(ctx: Ctx, x: np.ndarray, params: Params, grads: Grads, loss: LossWork):
    ((name, (w, b)),) = params.items()
    w_grad, b_grad = grads[name]
    n_in = w.shape[1]
    mse = loss.e is not None
    s = sup(0, ctx) if ctx.batch == 1 else "⁽ⁿ⁾"
    via = "e and ŷ" if mse else "ŷ"
    chain = "∂L/∂e · ∂e/∂ŷ · ∂ŷ/∂w₁" if mse else "∂L/∂ŷ · ∂ŷ/∂w₁"
    terms = " + ".join(f"w{sub(i)}x{sub(i)}{s}" for i in range(n_in)) + (" + b" if b is not None else "")
    wrt = ", ".join(f"∂ŷ{s}/∂w{sub(i)} = x{sub(i)}{s}" for i in range(n_in)) + (
        f", ∂ŷ{s}/∂b = 1" if b is not None else ""
    )
    derive = (*loss.derive, f"ŷ{s} = {terms}  ⇒  {wrt}   (all but the parameter are constants)")
    labels = [f"w{sub(i)}" for i in range(n_in)] + (["b"] if b is not None else [])
    inputs = [f"x{sub(i)}" for i in range(n_in)] + ([""] if b is not None else [])
    if mse and ctx.batch == 1:
        general = [f"∂L/∂w{sub(i)} = 2e·1·x{sub(i)} = 2ex{sub(i)}" for i in range(n_in)] + (
            ["∂L/∂b = 2e·1·1 = 2e"] if b is not None else []
        )
    else:
        factor = ("2e⁽ⁿ⁾" + ("" if loss.scale == 2 else "/N")) if mse else "∂L/∂ŷ⁽ⁿ⁾"
        if ctx.batch == 1:
            factor = "∂L/∂ŷ"
        total = "Σₙ " if ctx.batch > 1 else ""
        general = [
            f"∂L/∂{lab} = {total}{factor}" + (f" · {inp}{s if ctx.batch > 1 else ''}" if inp else "")
            for lab, inp in zip(labels, inputs)
        ]
    body: list[Block] = [
        Para(f"{_INTRO} L depends on w₁ only through {via}, so by the chain rule:"),
        Items((f"∂L/∂w₁ = {chain}",), code=True),
        Para("Each factor, derived:"),
        Items(derive, code=True),
        Para(
            "Multiplied out, for every parameter"
            + (" (summed over the N examples of the batch):" if ctx.batch > 1 else ":")
        ),
        Items(tuple(general), code=True),
        Para("With the numbers:"),
    ]
    e = loss.e if loss.e is not None else loss.grad  # MSE: the errors; else ∂L/∂ŷ itself
    delta = e * loss.scale if mse else loss.grad
    lines = list(loss.numbers)
    found = []
    for k, lab in enumerate(labels):
        source = w_grad if k < n_in else b_grad
        traced = None if source is None else float(source.reshape(-1)[k if k < n_in else 0])
        xs = [float(x[n, k]) if k < n_in else 1.0 for n in range(ctx.batch)]
        got = float(sum(delta[n, 0] * xs[n] for n in range(ctx.batch)))
        tail = [f"·{arg(xs[n])}" if k < n_in else "" for n in range(ctx.batch)]
        if mse:
            joined = " + ".join(f"2·{arg(e[n, 0])}{tail[n]}" for n in range(ctx.batch))
            shown = f"({joined})/{ctx.batch}" if ctx.batch > 1 and loss.scale != 2 else joined
            head = (f"2ex{sub(k)}" if k < n_in else "2e") if ctx.batch == 1 else ""
        else:
            shown = " + ".join(f"{arg(delta[n, 0])}{tail[n]}" for n in range(ctx.batch))
            head = ""
        check = ok(got, traced) if traced is not None else "(not traced)"
        lines.append(f"∂L/∂{lab} = {head + ' = ' if head else ''}{shown} = {num(got)} {check}")
        found.append((lab, got))
    body.append(Items(tuple(lines), code=True))
    return body, found


def _layered(ctx: Ctx, layers, x, outs, params: Params, grads: Grads, traced, loss: LossWork):
    kinds = {kind for _, kind in layers}
    derive = list(loss.derive)
    if "Linear" in kinds:
        derive.append("h = W·a + b (a Linear layer)  ⇒  ∂h[j]/∂W[j,i] = a[i], ∂h[j]/∂b[j] = 1, ∂h[j]/∂a[i] = W[j,i]")
    derive += [ACTIVATIONS[k][1] for k in ACTIVATIONS if k in kinds]
    summed = " (each summed over the examples of the batch)" if ctx.batch > 1 else ""
    body: list[Block] = [
        Para(
            f"{_INTRO} The chain rule runs backwards from the loss to the first layer, multiplying these "
            f"derivatives{_output(layers)}:"
        ),
        Items(tuple(derive), code=True),
        Para(
            "So, layer by layer from the output: ∂L/∂W[j,i] = ∂L/∂h[j] · a[i], ∂L/∂b[j] = ∂L/∂h[j], "
            f"∂L/∂a[i] = Σⱼ W[j,i] · ∂L/∂h[j]{summed}; through an activation ∂L/∂z = ∂L/∂h · ∂h/∂z. "
            "With the numbers:"
        ),  # fmt: skip
    ]
    lines = list(loss.numbers)
    found: list[tuple[str, float]] = []
    delta = None if loss.e is None and not loss.numbers else traced[layers[-1][0] if len(layers) > 1 else ""]
    if delta is None:
        return body + [Items(tuple(lines), code=True)], found
    for k in range(len(layers) - 1, -1, -1):
        name, kind = layers[k]
        prev = x if k == 0 else outs[layers[k - 1][0]]
        a_sym = "x" if k == 0 else ctx.h(layers[k - 1][0])
        h_sym = ctx.h(name if len(layers) > 1 else "")
        below = traced.get(layers[k - 1][0]) if k > 0 else None
        if kind == "Linear":
            w, _ = params[name]
            w_grad, b_grad = grads[name]
            for j in range(delta.shape[1]):
                for i in range(prev.shape[1]):
                    got = float(delta[:, j] @ prev[:, i])
                    label = f"{pname(name, 'weight')}[{j},{i}]"
                    check = ok(got, w_grad.reshape(w.shape)[j, i]) if w_grad is not None else ""
                    lines.append(f"∂L/∂{label} = {_sum(ctx)}∂L/∂{h_sym}[{j}]{_n(ctx)} · {a_sym}[{i}]{_n(ctx)} = "
                                 f"{_terms(delta[:, j], prev[:, i])} = {num(got)} {check}".rstrip())  # fmt: skip
                    found.append((label, got))
                if b_grad is not None:
                    got = float(delta[:, j].sum())
                    label = f"{pname(name, 'bias')}[{j}]"
                    shown = " + ".join(arg(v) for v in delta[:, j]) + " = " if ctx.batch > 1 else ""
                    lines.append(
                        f"∂L/∂{label} = {_sum(ctx)}∂L/∂{h_sym}[{j}]{_n(ctx)} = {shown}{num(got)} {ok(got, b_grad[j])}"
                    )
                    found.append((label, got))
            if k > 0:
                delta = delta @ w
                for n in range(ctx.batch):
                    for i in range(delta.shape[1]):
                        check = ok(float(delta[n, i]), below[n, i]) if below is not None else ""
                        lines.append(f"∂L/∂{a_sym}[{i}]{sup(n, ctx)} = Σⱼ {pname(name, 'weight')}[j,{i}]·∂L/∂{h_sym}[j]{sup(n, ctx)} = "
                                     f"{num(delta[n, i])} {check}".rstrip())  # fmt: skip
        else:
            h = outs[name]
            deriv = {"ReLU": (prev > 0).astype(float), "Sigmoid": h * (1 - h), "Tanh": 1 - h * h}[kind]
            text = {"ReLU": "1 if z > 0, else 0", "Sigmoid": "h(1 − h)", "Tanh": "1 − h²"}[kind]
            new = delta * deriv
            for n in range(ctx.batch):
                for i in range(new.shape[1]):
                    check = ok(float(new[n, i]), below[n, i]) if below is not None else ""
                    lines.append(f"∂L/∂{a_sym}[{i}]{sup(n, ctx)} = ∂L/∂{h_sym}[{i}]{sup(n, ctx)} · ({text}) = "
                                 f"{arg(delta[n, i])}·{num(deriv[n, i])} = {num(new[n, i])} {check}".rstrip())  # fmt: skip
            delta = new
    body.append(Items(tuple(lines), code=True))
    return body, found


def _output(layers) -> str:
    return f" (ŷ is h[{layers[-1][0]}], the output of the last layer)" if len(layers) > 1 else ""


def _sum(ctx: Ctx) -> str:
    return "Σₙ " if ctx.batch > 1 else ""


def _n(ctx: Ctx) -> str:
    return "⁽ⁿ⁾" if ctx.batch > 1 else ""


def _terms(a: np.ndarray, b: np.ndarray) -> str:
    return " + ".join(f"{arg(p)}·{arg(q)}" for p, q in zip(a, b))


def _meaning(found: list[tuple[str, float]], ctx: Ctx, x: np.ndarray) -> str:
    """What the gradients' signs and sizes say about the update (plain gradient descent)."""
    label, g = found[0]
    size = num(abs(g))
    if g < 0:
        first = (f"∂L/∂{label} = {num(g)} is negative: raising {label} a little lowers the loss, by about {size} times "
                 f"the change, so a descent step raises {label}.")  # fmt: skip
    elif g > 0:
        first = (f"∂L/∂{label} = {num(g)} is positive: raising {label} a little raises the loss, by about {size} times "
                 f"the change, so a descent step lowers {label}.")  # fmt: skip
    else:
        first = (
            f"∂L/∂{label} = 0: to first order the loss does not depend on {label} here, so a descent step leaves it."
        )
    big, g_big = max(found, key=lambda item: abs(item[1]))
    if len(found) == 1 or abs(g_big) == abs(g):
        return f"What the gradients say: {first}"
    why = ""
    if ctx.simple and ctx.batch == 1 and big.startswith("w"):
        i = int(big[1:].translate(str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789"))) - 1
        why = f" (∂ŷ/∂{big} = x{sub(i)} = {num(x[0, i])} is the largest factor)"
    return (f"What the gradients say: {first} The loss reacts most to {big}: |∂L/∂{big}| = {num(abs(g_big))} is the "
            f"largest{why}, so plain gradient descent moves {big} the most.")  # fmt: skip
