"""The `Rule` and `Line` records, the `CannotPredict` error, and how a rule renders and runs.

A rule is data plus one compute function, in the shape of ``torch/optim``:

- ``lines``: the algorithm, one `Line` per assignment, each stated once: the
  condition on the param group under which it applies, its plain text, its
  LaTeX and the template of its per-element explanation;
- ``compute(param, grad, state, hparams) -> parts``: torch's
  ``_single_tensor_*`` step replayed on float64 tensors; ``parts["param"]`` is
  the new parameter, the other entries are the intermediates the templates
  name. By convention a state value is stored under its torch key as read
  (a fresh one filled in), and new values under the rule's own names; a part
  only explain reads may be a function, so predict does not pay for it;
- ``result``: the template of the last explain line, ``label: ... = new``.

`Rule.text` and `Rule.latex` render the lines the flags select; `Rule.predict`
runs ``compute``; `Rule.explain` runs the same ``compute`` on one element
(0-d tensors) and fills the templates in, so its last number is predict's
value for that element.

Conditions are flags of the param group joined by ``and``, each optionally
negated with ``not``: ``"momentum and not nesterov"``. A flag is on when the
group's value is true or nonzero (absent and None read as off). A condition
that is not a flag (Muon's ``adjust_lr_fn``) may be a function of hparams.

Explain templates are `str.format` strings over `Values`: ``{x}`` is the
number as an operand (negative ones in parentheses), ``{x!n}`` the number as
it is (a result), ``{1-x}`` is 1 − x.

A rule that does not fit overrides a method in a small subclass in its own
module: LBFGS (no elementwise step), Adafactor (explain needs the whole tensor)
and SparseAdam (a zero gradient means absent). The lines and compute steps
several optimizers share are in `_shared`.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

MINUS = "\u2212"

Compute = Callable[[Tensor, Tensor, "dict[str, Tensor]", dict], "dict[str, Any]"]
Condition = str | Callable[[Mapping], bool]
Templates = str | tuple[str, ...] | None
Explain = Templates | Callable[["Values"], Templates]


class CannotPredict(Exception):
    """A rule cannot reproduce this update from one parameter's values and state."""


# -- numbers -----------------------------------------------------------------


def num(x: float) -> str:
    """Format a number with up to 6 significant digits and a Unicode minus."""
    x = float(x)
    if x == 0:
        return "0"
    return format(x, ".6g").replace("-", MINUS)


def arg(x: float) -> str:
    """Format a number as an operand: negative numbers are parenthesised."""
    text = num(x)
    return f"({text})" if text.startswith(MINUS) else text


def item(t: Tensor | float) -> float:
    """A 0-d tensor or a float as a Python float."""
    return float(t.item()) if isinstance(t, Tensor) else float(t)


# -- conditions --------------------------------------------------------------


def flag(hparams: Mapping, key: str) -> bool:
    """Whether a flag of the param group is on: true or nonzero; absent or None is off."""
    got = hparams.get(key)
    if got is None or isinstance(got, (bool, str)):
        return bool(got)
    return item(got) != 0


def holds(when: Condition, hparams: Mapping) -> bool:
    """Whether a condition (``"weight_decay and not decoupled_weight_decay"``) holds."""
    if callable(when):
        return bool(when(hparams))
    return all(flag(hparams, name) != negated for negated, name in _terms(when))


def _terms(when: str) -> list[tuple[bool, str]]:
    """``"a and not b"`` -> ``[(False, "a"), (True, "b")]``."""
    if not when:
        return []
    terms = [term.strip() for term in when.split(" and ")]
    return [(True, term[4:].strip()) if term.startswith("not ") else (False, term) for term in terms]


@dataclasses.dataclass(frozen=True)
class Pick:
    """A piece of a line that depends on a flag: ``yes`` when ``when`` holds, else ``no``."""

    when: str
    yes: str
    no: str = ""


Pieces = str | tuple[str | Pick, ...] | None


def _render(pieces: Pieces, hparams: Mapping) -> str:
    if isinstance(pieces, str):
        return pieces
    return "".join(p if isinstance(p, str) else (p.yes if holds(p.when, hparams) else p.no) for p in pieces or ())


@dataclasses.dataclass(frozen=True)
class Line:
    """One line of a rule's algorithm, stated once.

    Args:
        text: the line in plain Unicode text (a string, or pieces with `Pick`s);
            None where the text shows this step within another line.
        latex: the same line in LaTeX, torch.optim doc symbols; None likewise.
        when: the condition on hparams under which the line applies ("" always).
        explain: the template(s) of the element's arithmetic for this line, or
            a function of `Values` returning them (None: nothing to show).
    """

    text: Pieces
    latex: Pieces
    when: Condition = ""
    explain: Explain = None

    def flags(self) -> set[str]:
        """The hparam names the line's conditions read (function conditions excluded)."""
        picks = [p for pieces in (self.text, self.latex) if isinstance(pieces, tuple) for p in pieces]
        conditions = [self.when, *(p.when for p in picks if isinstance(p, Pick))]
        return {name for c in conditions if isinstance(c, str) for _, name in _terms(c)}


# -- explain -----------------------------------------------------------------


class Values(Mapping[str, Any]):
    """What explain templates read: the element's inputs, the compute's parts, its state, the hparams.

    ``label``, ``param`` and ``grad`` are the element's inputs and ``new`` is
    ``parts["param"]``; other names are looked up in the parts, then in the
    element's state, then in the hparams.
    """

    def __init__(self, label: str, param: float, grad: float, state: Mapping, hparams: Mapping, parts: Mapping):
        self.inputs = {"label": label, "param": param, "grad": grad}
        self.state, self.hparams, self.parts = state, hparams, parts

    def __getitem__(self, key: str) -> Any:
        if key.startswith("1-"):
            return 1 - self[key[2:]]
        if key == "new":
            return _plain(self.parts["param"])
        for source in (self.inputs, self.parts, self.state):
            if key in source:
                return _plain(source[key])
        if key in self.hparams:  # a JSON int (dampening=0) prints as a number, like a float
            got = self.hparams[key]
            return float(got) if isinstance(got, int) and not isinstance(got, bool) else _plain(got)
        raise KeyError(f"an explain template names {key!r}, which is no input, part, state key or hparam")

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self.inputs, "new", *self.parts, *self.state, *self.hparams]))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def on(self, when: Condition) -> bool:
        """Whether a condition on the hparams holds."""
        return holds(when, self.hparams)

    def fresh(self, key: str) -> bool:
        """Whether the state held no ``key`` before this step."""
        return self.state.get(key) is None


def _plain(x: Any) -> Any:
    x = x() if callable(x) else x  # a part only explain reads may be computed on demand
    return x.item() if isinstance(x, Tensor) else x


class _Formatter(string.Formatter):
    """``{x}`` formats a number as an operand (`arg`), ``{x!n}`` as it is (`num`)."""

    def get_value(self, key: Any, args: Any, kwargs: Any) -> Any:
        return kwargs[key]

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "n":
            return num(value)
        if conversion is None and isinstance(value, float):
            return arg(value)
        return super().convert_field(value, conversion)


_FORMAT = _Formatter()


def _templates(spec: Explain, values: Values) -> tuple[str, ...]:
    got = spec(values) if callable(spec) else spec
    if got is None:
        return ()
    return (got,) if isinstance(got, str) else tuple(got)


def ema(name: str, beta: str, old: str, x: str, new: str, square: bool = False) -> str:
    """The template of ``name ← β·old + (1 − β)·x``: ``m: 0.9 · 0 + 0.1 · (−20) = −2``."""
    return f"{name}: {{{beta}}} · {{{old}}} + {{1-{beta}}} · {{{x}}}{'²' if square else ''} = {{{new}!n}}"


def no_grad_line(label: str, param: float) -> list[str]:
    """What explain says for a parameter the optimizer skipped."""
    return [f"{label}: no gradient, the optimizer skips it = {num(param)}"]


def scalars(param: float, grad: float, state: Mapping[str, float]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One element's values as 0-d float64 tensors, ready for a rule's ``compute``."""

    def as_t(x: float) -> Tensor:
        return torch.tensor(float(x), dtype=torch.float64)

    return as_t(param), as_t(grad), {key: as_t(v) for key, v in state.items() if v is not None}


# -- the rule ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: rules hold functions
class Rule:
    """The update rule of one torch.optim optimizer: its lines, one compute, and what they render.

    Args:
        optimizer: the torch.optim class name the rule is for, e.g. ``"SGD"``.
        lines: the algorithm, one `Line` per assignment.
        compute: ``(param, grad, state, hparams) -> parts`` (float64), with
            ``parts["param"]`` the new parameter.
        result: the template of the last explain line (or a function of `Values`).
        symbols: hparam key -> the symbol the rule uses for it.
        note: a sentence on the rule's limits, or "".
        local: the part of ``compute`` one element can do alone, where the rest
            needs the whole tensor (Muon); None: explain runs ``compute``.
    """

    optimizer: str
    lines: tuple[Line, ...]
    compute: Compute | None
    result: Explain = None
    symbols: dict[str, str] = dataclasses.field(default_factory=dict)
    note: str = ""
    local: Compute | None = None

    def text(self, hparams: dict) -> str:
        """The rule in plain text: only the lines the flags select, one assignment per line."""
        return "\n".join(_render(line.text, hparams) for line in self._lines(hparams) if line.text is not None)

    def latex(self, hparams: dict) -> str:
        """The same rule in LaTeX; several lines become an ``aligned`` block."""
        lines = [_render(line.latex, hparams) for line in self._lines(hparams) if line.latex is not None]
        if len(lines) == 1:
            return lines[0]
        body = r" \\ ".join(f"&{line}" for line in lines)
        return rf"\begin{{aligned}}{body}\end{{aligned}}"

    def predict(self, param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
        """The parameter after one step (float64); a parameter without gradient is skipped."""
        if grad is None or self.compute is None:
            return param.clone()
        return self.compute(param, grad, state, hparams)["param"]

    def explain(
        self, label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict
    ) -> list[str]:
        """One element's step as hand arithmetic: a line per step the flags select, the result last."""
        if grad is None:
            return no_grad_line(label, param)
        compute = self.local or self.compute
        if compute is None:
            return []
        p, g, s = scalars(param, grad, state)
        values = Values(label, param, grad, state, hparams, compute(p, g, s, hparams))
        templates = [t for line in self._lines(hparams) for t in _templates(line.explain, values)]
        return [_FORMAT.vformat(t, (), values) for t in (*templates, *_templates(self.result, values))]

    def flags(self) -> list[str]:
        """The hparam names the lines' conditions read."""
        return sorted(set().union(*(line.flags() for line in self.lines)))

    def _lines(self, hparams: Mapping) -> list[Line]:
        return [line for line in self.lines if holds(line.when, hparams)]
