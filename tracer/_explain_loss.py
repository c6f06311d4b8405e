"""Stage 2 of a walkthrough, the loss: its formula, the numbers, and its derivative.

The target is not a model input, so it is recovered from the traced gradient of the loss
(MSE, binary cross-entropy, cross-entropy); the mean or sum reduction is the one that gives
the traced loss. :func:`explain_loss` returns the blocks of the stage and what the chain
rule (stage 3) starts from: ∂L/∂ŷ derived, and its numbers checked.

>>> work = explain_loss("MseLossBackward0", np.array([[3.0]]), np.array([[-10.0]]), 25.0, ctx)  # doctest: +SKIP
>>> work.predicted                                                                          # doctest: +SKIP
'The model predicted 3, but the target is 8.'
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tracer._explain_math import Ctx, arg, num, ok, sup
from tracer._render import Block, Heading, Items, Para

_HEADING = "2. Loss: loss = loss_fn(pred, y)"


@dataclasses.dataclass(frozen=True)
class LossWork:
    """The loss stage, and what the chain rule starts from.

    ``derive``: the derivation of ∂L/∂ŷ, one ``f  ⇒  ∂f`` line each; ``numbers``: ∂L/∂ŷ with
    the numbers, checked; ``e`` and ``scale`` (MSE only): the errors and ∂L/∂e = scale·e.
    """

    blocks: tuple[Block, ...]
    predicted: str
    derive: tuple[str, ...]
    numbers: tuple[str, ...]
    grad: np.ndarray  # ∂L/∂ŷ as traced, (batch, outputs)
    e: np.ndarray | None = None
    scale: float = 0.0


def explain_loss(fn: str, y_hat: np.ndarray, g: np.ndarray, loss: float, ctx: Ctx) -> LossWork | str:
    """The loss stage for ``fn`` (the loss's grad_fn name), or why it cannot be worked."""
    if fn.startswith("MseLoss"):
        return _mse(y_hat, g, loss, ctx)
    if fn.startswith("L1Loss") or (fn.startswith("MeanBackward") and np.allclose(np.abs(g), 1 / g.size)):
        return _l1(y_hat, g, loss, ctx)  # F.l1_loss is mean(|ŷ − y|): its gradient is ±1/N everywhere
    if fn.startswith("BinaryCrossEntropyBackward"):
        return _bce(y_hat, g, loss, ctx)
    if fn.startswith("NllLoss"):
        return _cross_entropy(y_hat, g, loss, ctx)
    shown = fn.removesuffix("Backward0") or "unknown"
    return f"the loss ({shown}) is not worked by hand; a walkthrough covers MSE, L1, binary cross-entropy and cross-entropy"


def _label(sym: str, n: int, j: int, ctx: Ctx, width: int) -> str:
    return f"{sym}{'' if width == 1 else f'[{j}]'}{sup(n, ctx)}"


def _reduction(loss: float, options: dict[str, float]) -> str | None:
    for name, got in options.items():
        if math.isclose(got, loss, rel_tol=1e-6, abs_tol=1e-9):
            return name
    return None


def _mse(y_hat: np.ndarray, g: np.ndarray, loss: float, ctx: Ctx) -> LossWork | str:
    n = y_hat.size
    targets = {"mean": y_hat - g * n / 2, "sum": y_hat - g / 2}
    values = {k: float(np.sum((y_hat - y) ** 2)) / (n if k == "mean" else 1) for k, y in targets.items()}
    reduction = _reduction(loss, values)
    if reduction is None:
        return "the traced loss is neither the mean nor the sum of the squared errors its gradient implies"
    y, mean = targets[reduction], reduction == "mean"
    e = y_hat - y
    width = y_hat.shape[1]
    label = lambda sym, b, j: _label(sym, b, j, ctx, width)  # noqa: E731
    cells = [(b, j) for b in range(ctx.batch) for j in range(width)]
    one = n == 1
    formula = "L = 1/N · Σᵢ (ŷᵢ − yᵢ)²" if mean else "L = Σᵢ (ŷᵢ − yᵢ)²"
    blocks: list[Block] = [
        Heading(3, _HEADING),
        Para("The error is how far the prediction is from the target:"),
        Items(("e = ŷ − y",), code=True),
        Para(
            (
                "The mean squared error averages the squared errors over the N outputs: one number that says how "
                "wrong the model is, which training lowers:"
            )
            if mean
            else "The summed squared error (reduction='sum') adds the squared errors of the outputs:"
        ),  # fmt: skip
        Items((formula,), code=True),
        Para("With the numbers" + ("" if one or not mean else f" (N = {n})") + ":"),
    ]
    lines = [f"{label('e', b, j)} = {num(y_hat[b, j])} − {arg(y[b, j])} = {num(e[b, j])}" for b, j in cells]
    if one:
        lines.append(
            f"N = 1, so L = (ŷ − y)² = ({num(y_hat[0, 0])} − {arg(y[0, 0])})² = {num(values[reduction])} {ok(values[reduction], loss)}"
        )
    else:
        squares = " + ".join(f"{arg(e[b, j])}²" for b, j in cells)
        shown = f"({squares})/{n}" if mean else squares
        lines.append(f"L = {shown} = {num(values[reduction])} {ok(values[reduction], loss)}")
    blocks.append(Items(tuple(lines), code=True))
    scale = 2 / n if mean else 2.0
    k = "2e" if scale == 2 else f"2e/{n}"
    if one:
        derive = ("L = e²  ⇒  ∂L/∂e = 2e", "e = ŷ − y  ⇒  ∂e/∂ŷ = 1   (y is a constant)",
                  "so ∂L/∂ŷ = ∂L/∂e · ∂e/∂ŷ = 2e = 2(ŷ − y)")  # fmt: skip
    else:
        sq = "L = 1/N · Σᵢ eᵢ²" if mean else "L = Σᵢ eᵢ²"
        derive = (f"{sq}  ⇒  ∂L/∂eᵢ = {'2eᵢ/N' if mean else '2eᵢ'}   (the other terms do not hold eᵢ)",
                  "eᵢ = ŷᵢ − yᵢ  ⇒  ∂eᵢ/∂ŷᵢ = 1   (yᵢ is a constant)",
                  f"so ∂L/∂ŷᵢ = {'2(ŷᵢ − yᵢ)/N' if mean else '2(ŷᵢ − yᵢ)'}")  # fmt: skip
    numbers = []
    for b, j in cells:
        got = float(e[b, j]) * scale
        how = f"2·{arg(e[b, j])}" + ("" if scale == 2 else f"/{n}")
        numbers.append(
            f"∂L/∂{label('ŷ', b, j)} = {k.replace('e', label('e', b, j)) if not one else '2e'} = {how} = {num(got)} {ok(got, g[b, j])}"
        )
    predicted = _predicted(y_hat, y, ctx)
    return LossWork(tuple(blocks), predicted, derive, tuple(numbers), g, e=e, scale=scale)


def _predicted(y_hat: np.ndarray, y: np.ndarray, ctx: Ctx) -> str:
    target = "recovered from the traced gradient of the loss: the target is not a model input"
    if y_hat.size == 1:
        return (f"The model predicted {num(y_hat[0, 0])}, but the target is {num(y[0, 0])} ({target}), "
                "so the prediction is off.")  # fmt: skip
    shown = lambda a: ", ".join(num(v) for v in a.reshape(-1))  # noqa: E731
    return f"The model predicted [{shown(y_hat)}]; the target is [{shown(y)}] ({target})."


def _l1(y_hat: np.ndarray, g: np.ndarray, loss: float, ctx: Ctx) -> LossWork:
    n = y_hat.size
    mean = np.allclose(np.abs(g), 1 / n) and n > 1 or n == 1
    blocks: tuple[Block, ...] = (
        Heading(3, _HEADING),
        Para("Mean absolute error (L1): the mean of how far each prediction is from its target:"),
        Items(("L = 1/N · Σᵢ |ŷᵢ − yᵢ|",), code=True),
        Para(
            f"Its traced value is L = {num(loss)} (the target cannot be recovered: the gradient only holds the "
            "sign of each error)."
        ),  # fmt: skip
    )
    derive = (
        "L = 1/N · Σᵢ |ŷᵢ − yᵢ|  ⇒  ∂L/∂ŷᵢ = sign(ŷᵢ − yᵢ)/N"
        if mean
        else "L = Σᵢ |ŷᵢ − yᵢ|  ⇒  ∂L/∂ŷᵢ = sign(ŷᵢ − yᵢ)",
    )
    width = y_hat.shape[1]
    numbers = tuple(
        f"∂L/∂{_label('ŷ', b, j, ctx, width)} = {'+' if g[b, j] > 0 else '−'}1{'' if not mean or n == 1 else f'/{n}'} = "
        f"{num(g[b, j])} (traced)"
        for b in range(ctx.batch)
        for j in range(width)
    )
    predicted = "The model predicted " + ", ".join(num(v) for v in y_hat.reshape(-1)) + "."
    return LossWork(blocks, predicted, derive, numbers, g)


def _bce(y_hat: np.ndarray, g: np.ndarray, loss: float, ctx: Ctx) -> LossWork | str:
    n = y_hat.size
    with np.errstate(divide="ignore", invalid="ignore"):
        targets = {"mean": y_hat - g * y_hat * (1 - y_hat) * n, "sum": y_hat - g * y_hat * (1 - y_hat)}
        values = {k: float(-np.sum(y * np.log(y_hat) + (1 - y) * np.log(1 - y_hat))) / (n if k == "mean" else 1)
                  for k, y in targets.items()}  # fmt: skip
    reduction = _reduction(loss, values)
    if reduction is None:
        return "the traced loss is not the binary cross-entropy its gradient implies"
    y, mean = np.round(targets[reduction], 12), reduction == "mean"
    width = y_hat.shape[1]
    cells = [(b, j) for b in range(ctx.batch) for j in range(width)]
    formula = (
        "L = −1/N · Σᵢ [yᵢ·log ŷᵢ + (1 − yᵢ)·log(1 − ŷᵢ)]" if mean else "L = −Σᵢ [yᵢ·log ŷᵢ + (1 − yᵢ)·log(1 − ŷᵢ)]"
    )
    blocks: tuple[Block, ...] = (
        Heading(3, _HEADING),
        Para("Binary cross-entropy: small when ŷ (a probability) is close to the target 0 or 1:"),
        Items((formula,), code=True),
        Para("With the numbers:"),
        Items((f"L = {num(values[reduction])} {ok(values[reduction], loss)}",), code=True),
    )
    per = "N" if mean else ""
    derive = (f"{formula}  ⇒  ∂L/∂ŷᵢ = (ŷᵢ − yᵢ) / (ŷᵢ(1 − ŷᵢ){'·N' if per else ''})",)
    numbers = []
    for b, j in cells:
        p = float(y_hat[b, j])
        got = (p - float(y[b, j])) / (p * (1 - p) * (n if mean else 1))
        tail = f"·{n}" if mean else ""
        numbers.append(f"∂L/∂{_label('ŷ', b, j, ctx, width)} = ({num(p)} − {arg(y[b, j])}) / ({num(p)}·{arg(1 - p)}{tail}) = "
                       f"{num(got)} {ok(got, g[b, j])}")  # fmt: skip
    return LossWork(blocks, _predicted(y_hat, y, ctx), derive, tuple(numbers), g)


def _cross_entropy(y_hat: np.ndarray, g: np.ndarray, loss: float, ctx: Ctx) -> LossWork | str:
    z = y_hat - y_hat.max(axis=1, keepdims=True)
    soft = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    found = None
    for reduction, scale in (("mean", ctx.batch), ("sum", 1)):
        onehot = soft - g * scale
        classes = onehot.argmax(axis=1)
        got = float(-np.log(soft[np.arange(ctx.batch), classes]).sum()) / (scale if reduction == "mean" else 1)
        if np.allclose(onehot, np.eye(y_hat.shape[1])[classes], atol=1e-6) and math.isclose(
            got, loss, rel_tol=1e-6, abs_tol=1e-9
        ):
            found = reduction, scale, classes, got
            break
    if found is None:
        return "the traced loss is not the cross-entropy of softmax(ŷ) its gradient implies"
    reduction, scale, classes, got = found
    mean = reduction == "mean" and ctx.batch > 1
    blocks: list[Block] = [
        Heading(3, _HEADING),
        Para(
            "Cross-entropy: softmax turns the outputs into probabilities; the loss is minus the log of the "
            "probability of the target class c:"
        ),  # fmt: skip
        Items(
            ("L = −log softmax(ŷ)[c] = −ŷ[c] + log Σⱼ e^ŷ[j]" + ("   (averaged over the N examples)" if mean else ""),),
            code=True,
        ),
        Para("With the numbers:"),
    ]
    lines = [f"c{sup(b, ctx)} = {int(classes[b])}: −log {num(soft[b, classes[b]])} = {num(-math.log(soft[b, classes[b]]))}"
             for b in range(ctx.batch)]  # fmt: skip
    if ctx.batch > 1:
        lines.append(f"L = {'mean' if mean else 'sum'} over the batch = {num(got)} {ok(got, loss)}")
    else:
        lines[0] += f" {ok(got, loss)}"
    blocks.append(Items(tuple(lines), code=True))
    derive = (
        "L = −ŷ[c] + log Σⱼ e^ŷ[j]  ⇒  ∂L/∂ŷ[j] = softmax(ŷ)[j] − (1 if j = c else 0)" + ("  (÷ N)" if mean else ""),
    )
    numbers = []
    for b in range(ctx.batch):
        for j in range(y_hat.shape[1]):
            value = (soft[b, j] - (j == classes[b])) / (scale if mean else 1)
            shown = f"{num(soft[b, j])} − {int(j == classes[b])}" + (f" ÷ {scale}" if mean else "")
            numbers.append(f"∂L/∂ŷ[{j}]{sup(b, ctx)} = {shown} = {num(value)} {ok(value, g[b, j])}")
    classes_text = ", ".join(str(int(c)) for c in classes)
    predicted = (
        f"The target class is {classes_text} (recovered from the traced gradient: the target is not a model input)."
    )
    return LossWork(tuple(blocks), predicted, derive, tuple(numbers), g)
