"""The report's blocks for updates: one parameter's update by its rule, a step's tables, and
stage 4 of a walkthrough (``optimizer.step()``), the rule given before the numbers.

>>> blocks = update_blocks(check, max_elements=16)          # doctest: +SKIP
>>> stage = update_stage(checks, 16, {"weight[0,0]": "w₁"})  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tracer._checks import UpdateCheck
from tracer._render import Block, Cell, Formula, Heading, Items, Para, Table
from tracer.rules._base import MINUS, num

WORDS = {
    "lr": "the learning rate",
    "momentum": "the momentum",
    "dampening": "the dampening",
    "weight_decay": "the weight decay",
    "betas": "the decay rates of the moment estimates",
    "eps": "a small constant that keeps the division finite",
    "alpha": "the smoothing constant",
    "rho": "the decay rate of the running averages",
    "lr_decay": "the learning-rate decay",
    "momentum_decay": "the momentum decay",
    "lambd": "the decay term",
    "etas": "the step-size factors",
    "step_sizes": "the step-size bounds",
}
"""What a hyper-parameter is, in words, for the walkthrough's glossary."""


def status(c: UpdateCheck) -> str:
    if c.matches is True:
        how = "its rule" if c.check == "rule" else "a replay of the optimizer"
        return f"✓ matches the traced update (checked by {how}, max error {num(c.max_abs_error or 0.0)})"
    if c.matches is False:
        how = "rule" if c.check == "rule" else "replay"
        return f"✗ differs from the traced update (by the {how}: max error {num(c.max_abs_error or math.inf)})"
    return "– not checked"


def mark(c: UpdateCheck) -> str:
    return {True: "✓", False: "✗", None: "–"}[c.matches]


def show_hparam(symbol: str, key: str, value: Any) -> str:
    """``γ = 0.01 (lr)``; a pair such as betas: ``β₁ = 0.9, β₂ = 0.999 (betas)``."""
    symbols = [part.strip() for part in symbol.split(",")]
    if isinstance(value, (list, tuple)) and len(value) == len(symbols) > 1:
        return ", ".join(f"{s} = {hparam(v)}" for s, v in zip(symbols, value)) + f" ({key})"
    return f"{symbol} = {hparam(value)} ({key})"


def hparam(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return num(value)


def shown_hparams(c: UpdateCheck) -> list[tuple[str, str]]:
    """``[(key, "γ = 0.01 (lr)")]`` of the hyper-parameters the rule's text names."""
    rule = c.rule_object
    if rule is None or c.rule is None:
        return []
    return [
        (k, show_hparam(sym, k, c.hparams[k]))
        for k, sym in rule.symbols.items()
        if k in c.hparams and any(part.strip() in c.rule for part in sym.split(","))
    ]


def group(c: UpdateCheck) -> str:
    return f", param group {c.param_group}" if c.param_group else ""


def label(name: str, shape: tuple[int, ...], flat: int) -> str:
    if not shape:
        return name
    return f"{name}[{','.join(str(i) for i in np.unravel_index(flat, shape))}]"


def _alias(text: str, aliases: Mapping[str, str]) -> str:
    return f"{aliases[text]} ({text})" if text in aliases else text


def update_blocks(
    c: UpdateCheck, max_elements: int, aliases: Mapping[str, str] | None = None, level: int = 3
) -> list[Block]:
    """One parameter's update: its status, the rule, its hyper-parameters, the arithmetic."""
    out: list[Block] = [Heading(level, f"{c.name} ({c.optimizer or 'no optimizer'}{group(c)}): {status(c)}")]
    rule = c.rule_object
    if c.rule is not None and rule is not None:
        via = f" (the rule of {c.rule_class}, its base class)" if c.rule_class != c.optimizer else ""
        out.append(Formula(c.rule, c.latex or ""))
        shown = [text for _, text in shown_hparams(c)]
        if shown or via:
            out.append(Para("with " + ", ".join(shown) + via if shown else via.strip()))
        if rule.note:
            out.append(Para(rule.note))
    if c.reason and c.matches is None:
        out.append(Para(f"Not checked: {c.reason}."))
    elif c.reason:
        out.append(Para(c.reason))
    numel = int(np.prod(c.shape)) if c.shape else 1
    if c.param is not None and rule is not None and numel <= max_elements:
        lines = element_lines(c, rule, aliases or {})
        if lines:
            out.append(Items(tuple(lines), code=True))
    else:
        out.append(Para(norms(c)))
    return out


def norms(c: UpdateCheck) -> str:
    return (
        f"‖g‖ = {num(c.norms.get('grad', math.nan))}, ‖Δθ‖ = {num(c.norms.get('update', math.nan))}, "
        f"‖θ‖ = {num(c.norms.get('param', math.nan))}, ‖Δθ‖/‖θ‖ = {ratio(c.update_ratio)}"
        + (f", max |predicted − observed| = {num(c.max_abs_error)}" if c.max_abs_error is not None else "")
    )


def element_lines(c: UpdateCheck, rule: Any, aliases: Mapping[str, str]) -> list[str]:
    """The rule's arithmetic for each element (``weight[0,1]: 1 − 0.01 · (−20) = 1.2``)."""
    if c.param is None:
        return []
    param = c.param.reshape(-1)
    grad = None if c.grad is None else c.grad.reshape(-1)
    lines = []
    for i in range(param.size):
        state = {}
        for key, value in c.state.items():
            flat = value.reshape(-1)
            if flat.size == param.size:
                state[key] = float(flat[i])
            elif flat.size == 1:
                state[key] = float(flat[0])
        try:
            lines += rule.explain(
                _alias(label(c.name, c.shape, i), aliases), float(param[i]),
                None if grad is None else float(grad[i]), state, c.rule_hparams,
            )  # fmt: skip
        except Exception:
            return []
    return lines


def summary_table(
    checks: list[UpdateCheck], max_elements: int, aliases: Mapping[str, str] | None = None
) -> Table | None:
    """ "parameter | old value | gradient | new value" of the small parameters, or None."""
    rows = []
    for c in checks:
        if c.param is None or c.param.size > max_elements or c.observed is None:
            continue
        param = c.param.reshape(-1)
        grad = c.grad.reshape(-1) if c.grad is not None else None
        new = np.asarray(c.observed)
        for i in range(param.size):
            rows.append((_alias(label(c.name, c.shape, i), aliases or {}), num(param[i]),
                         "–" if grad is None else num(grad[i]), num(new[i])))  # fmt: skip
    if not rows:
        return None
    return Table(("parameter", "old value", "gradient", "new value"), tuple(rows))


def step_table(checks: list[UpdateCheck]) -> Table:
    """One row per update of a step; a long reason is the check cell's note, never cut."""
    return step_tables({0: checks})[0]


def step_tables(by_step: Mapping[int, list[UpdateCheck]]) -> dict[int, Table]:
    """:func:`step_table` of every step at once: the numbers of all of them formatted in one call
    (a 10,000-step trace has 160,000)."""
    checks = [c for members in by_step.values() for c in members]
    flat: list[Any] = []
    for c in checks:
        norms = c.norms
        flat += (c.max_abs_error, norms.get("grad", math.nan), norms.get("update", math.nan), c.update_ratio)
    texts = nums([math.nan if v is None else v for v in flat])
    out, at = {}, 0
    for step, members in by_step.items():
        rows = []
        for c in members:
            shown, reason = _MARKS[c.matches], c.reason
            check: str | Cell = f"{shown} {c.check or reason or ''}".strip()
            if reason and (c.check or len(reason) > 60):
                check = Cell(f"{shown} {c.check or ''}".strip(), note=reason)
            error = "–" if c.max_abs_error is None else texts[at]
            shown_ratio = texts[at + 3] if math.isfinite(flat[at + 3]) else "—"
            rows.append((c.name, check, error, texts[at + 1], texts[at + 2], shown_ratio))
            at += 4
        out[step] = Table(_STEP_HEADER, tuple(rows))
    return out


_MARKS = {True: "✓", False: "✗", None: "–"}
_STEP_HEADER = ("parameter", "check", "max error", "‖g‖", "‖Δθ‖", "‖Δθ‖/‖θ‖")


def nums(values: list[float]) -> list[str]:
    """``[_num(v) for v in values]`` in one formatting call (−0 is ``"0"``, as in :func:`num`)."""
    if not values:
        return []
    shown = [0.0 if v == 0 else float(v) for v in values]
    return ("{:.6g}\0" * len(shown)).format(*shown).replace("-", MINUS).split("\0")[:-1]


def ratio(value: float | None) -> str:
    """‖Δθ‖/‖θ‖, or "—" where it has no value (a zero parameter: ‖θ‖ = 0)."""
    return "—" if value is None or not math.isfinite(value) else _num(value)


def _num(value: float) -> str:
    """:func:`~tracer.rules._base.num`, inlined: the step tables of a long trace call it for every update."""
    return "0" if value == 0 else format(float(value), ".6g").replace("-", MINUS)


def glossary(c: UpdateCheck) -> str | None:
    """The rule's symbols in words: θ the parameter, g = ∂L/∂θ, γ the learning rate, …"""
    rule = c.rule_object
    if rule is None or c.rule is None:
        return None
    words = ["θ is the parameter", "g = ∂L/∂θ is its gradient (θ.grad, from loss.backward())"]
    for key, text in shown_hparams(c):
        value = text.rsplit(" (", 1)[0]
        what = WORDS.get(key, f"the {key}")
        words.append(
            f"{value} {'are' if ',' in value else 'is'} {what} ({key}{'; η in many tutorials' if key == 'lr' else ''})"
        )
    return "Here " + ", ".join(words[:-1]) + " and " + words[-1] + "."


def update_stage(checks: list[UpdateCheck], max_elements: int, aliases: Mapping[str, str]) -> list[Block]:
    """Stage 4 of a walkthrough: what ``optimizer.step()`` does, the rule before the numbers."""
    out: list[Block] = [
        Heading(3, "4. Update: optimizer.step()"),
        Para(
            "optimizer.step() changes every parameter by its optimizer's update rule, using the gradient "
            "loss.backward() left in θ.grad; the rule first, then the numbers."
        ),  # fmt: skip
    ]
    if not checks:
        return [out[0], Para("optimizer.step() updated no parameter at this step.")]
    said: set[str] = set()
    for c in checks:
        blocks = update_blocks(c, max_elements, aliases, level=4)
        text = glossary(c)
        if text is not None and text not in said:  # the rule's symbols in words, in place of "with γ = …"
            said.add(text)
            at = next((i for i, b in enumerate(blocks) if isinstance(b, Para)), len(blocks))
            first = blocks[at] if at < len(blocks) else None
            with_line = isinstance(first, Para) and first.text.startswith("with ") and "base class" not in first.text
            blocks[at : at + with_line] = [Para(text)]
        out += blocks
    table = summary_table(checks, max_elements, aliases)
    if table is not None:
        out += [Para("Summary of the step:"), table]
    plain = ("momentum", "weight_decay", "maximize")
    if checks and all(c.optimizer == "SGD" and not any(c.hparams.get(k) for k in plain) for c in checks):
        out.append(Para("Each parameter moved against its gradient, the direction in which the loss falls; "
                        "the next step starts from these values."))  # fmt: skip
    return out
