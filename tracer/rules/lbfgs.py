"""Rule for `torch.optim.LBFGS` (limited-memory BFGS, two-loop recursion).

LBFGS treats all its parameters as one flat vector and keeps its whole state
(``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``,
``prev_flat_grad``, ``n_iter``, ...) on the first parameter. predict replays
one ``step()`` with ``max_iter=1`` and no line search, for an optimizer over a
single parameter tensor: the first step (fresh state, d = −g, t =
min(1, 1/‖g‖₁)·γ) and every later step, from the history in the state (traced
as parts ``old_dirs.0``, ``old_dirs.1``, …, which `assemble` puts back into
lists). Every other LBFGS step (several tensors, ``max_iter`` > 1, a line
search) is checked by replaying ``torch.optim.LBFGS`` on the recorded closure
evaluations (`tracer._lbfgs_replay`).

An empty state is ambiguous: the first step, or a parameter other than the
first (which never holds state). So predict needs ``hparams["params"]`` (the
group's parameters, or their names, or their count) to equal one before it
predicts from an empty state; with a history in the state, the size of ``d``
shows whether the optimizer holds other parameters. History lists
(``old_dirs``, ``old_stps``, ``ro``) may be lists of tensors or stacked into
one tensor, a row per entry.

Its lines are declared like every rule's, but it has no elementwise compute:
the direction d comes from dot products over the whole flat vector, so
predict and explain are its own (`_LBFGSRule`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._base import MINUS, CannotPredict, Line, Rule, arg, item, no_grad_line, num
from ._shared import value

HISTORY_KEYS = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad")

LINES = (
    Line(
        "d ← −g at the first iteration; later, with sᵢ = t·dᵢ and yᵢ = gᵢ₊₁ − gᵢ from the last m steps:",
        r"d \leftarrow -g \text{ at the first iteration; later, with } s_i = t d_i,\; y_i = g_{i+1} - g_i"
        r" \text{ from the last } m \text{ steps:}",
    ),
    Line(
        "q ← −g;  for i newest→oldest: aᵢ ← ρᵢ·sᵢ·q, q ← q − aᵢ·yᵢ   (ρᵢ = 1/(yᵢ·sᵢ))",
        r"q \leftarrow -g; \; \text{for } i \text{ newest} \to \text{oldest}: \;"
        r" a_i \leftarrow \rho_i s_i^\top q, \; q \leftarrow q - a_i y_i \quad (\rho_i = 1 / y_i^\top s_i)",
    ),
    Line(
        "d ← H·q, H = (y·s)/(y·y) of the newest pair;  for i oldest→newest: d ← d + sᵢ·(aᵢ − ρᵢ·yᵢ·d)",
        r"d \leftarrow H q, \; H = \frac{y^\top s}{y^\top y}; \; \text{for } i \text{ oldest} \to \text{newest}: \;"
        r" d \leftarrow d + s_i (a_i - \rho_i y_i^\top d)",
    ),
    Line(
        "t ← min(1, 1/‖g‖₁)·γ at the first iteration, else γ",
        r"t \leftarrow \min(1, 1/\lVert g \rVert_1) \gamma \text{ at the first iteration, else } \gamma",
    ),
    Line(
        "t ← strong-Wolfe line search from that t",
        r"t \leftarrow \text{strong-Wolfe line search from } t",
        when="line_search_fn",
    ),
    Line("θ ← θ + t·d", r"\theta \leftarrow \theta + t d"),
)


def _rows(x: Tensor | Sequence | None) -> list[Tensor]:
    """A history list from the state: a list of tensors, or one tensor stacked by rows."""
    if x is None:
        return []
    if not isinstance(x, Tensor):
        return [torch.as_tensor(v, dtype=torch.float64) for v in x]
    if x.numel() == 0:
        return []
    if x.dim() == 0:
        return [x]
    return list(x.reshape(x.shape[0], -1))


LISTS = ("old_dirs", "old_stps", "ro", "al")
"""The state keys that hold lists: traced as parts ``old_dirs.0``, ``old_dirs.1``, …"""


def assemble(state: dict) -> dict:
    """State as traced (parts ``old_dirs.0``, ``old_dirs.1``, …) back into torch's lists.

    An empty list writes no part, so a history key missing after the first step is empty.

    >>> sorted(assemble({"n_iter": torch.tensor(2), "old_dirs.1": torch.ones(2), "old_dirs.0": torch.zeros(2)}))
    ['n_iter', 'old_dirs', 'old_stps', 'ro']
    """
    lists: dict[str, dict[int, Tensor]] = {}
    out: dict = {}
    for key, v in state.items():
        head, _, index = str(key).rpartition(".")
        if head in LISTS and index.isdigit():
            lists.setdefault(head, {})[int(index)] = v
        else:
            out[key] = v
    for head, items in lists.items():
        out[head] = [items[i] for i in sorted(items)]
    if item(out.get("n_iter", 0.0)) > 0:
        for key in LISTS[:3]:
            out.setdefault(key, [])
    return out


def _param_count(hparams: dict) -> int | None:
    """How many parameter tensors the group holds, when the caller says (``hparams["params"]``)."""
    params = hparams.get("params")
    if params is None:
        return None
    return int(params) if isinstance(params, (int, float)) else len(params)


def _check(param: Tensor, state: dict, hparams: dict) -> None:
    """Raise CannotPredict where one max_iter=1 step over one tensor is not what ran."""
    if int(hparams.get("max_iter", 20)) != 1:
        raise CannotPredict(
            f"LBFGS with max_iter={hparams.get('max_iter')} re-evaluates the closure inside one step; the rule "
            "takes one evaluation (the step is checked by replaying the recorded closure evaluations)"
        )
    if hparams.get("line_search_fn") is not None:
        raise CannotPredict(
            f"LBFGS's line search ({hparams['line_search_fn']}) re-evaluates the closure inside one step; the rule "
            "takes one evaluation (the step is checked by replaying the recorded closure evaluations)"
        )
    count = _param_count(hparams)
    if count is not None and count != 1:
        raise CannotPredict(
            f"LBFGS couples its {count} parameters into one vector; the rule takes one (the step is checked by "
            "replaying it over all of them)"
        )
    if item(state.get("n_iter", 0.0)) == 0:
        if count is None:
            raise CannotPredict(
                "LBFGS keeps its state on its first parameter and sizes its first step by ‖g‖₁ over all "
                "parameters; pass hparams['params'] to show the optimizer holds a single parameter tensor"
            )
        return
    missing = [key for key in HISTORY_KEYS if key not in state]
    if missing:
        raise CannotPredict(f"LBFGS history is not in the state (missing {', '.join(missing)})")
    if state["d"].numel() != param.numel():
        raise CannotPredict(
            f"LBFGS's direction has {state['d'].numel()} entries but this parameter {param.numel()}: "
            "the optimizer holds several parameters"
        )


def _direction(flat_grad: Tensor, state: dict, hparams: dict) -> tuple[Tensor, float | Tensor]:
    """The search direction d and step t of the next iteration, as `LBFGS.step` computes them."""
    lr = value(hparams, "lr")
    if item(state.get("n_iter", 0.0)) == 0:
        # as torch's LBFGS: a tensor in the gradient's dtype (or 1.0), not a Python float
        return flat_grad.neg(), min(1.0, 1.0 / flat_grad.abs().sum()) * lr  # type: ignore[operator]
    history_size = int(hparams.get("history_size", 100))
    old_dirs, old_stps = _rows(state["old_dirs"]), _rows(state["old_stps"])
    ro = [r.reshape(()) for r in _rows(state["ro"])]
    h_diag = state["H_diag"]
    y = flat_grad.sub(state["prev_flat_grad"].reshape(-1))
    s = state["d"].reshape(-1).mul(item(state["t"]))
    ys = y.dot(s)
    if ys > 1e-10:
        if len(old_dirs) == history_size:
            del old_dirs[0], old_stps[0], ro[0]
        old_dirs.append(y)
        old_stps.append(s)
        ro.append(1.0 / ys)
        h_diag = ys / y.dot(y)
    al: list[Tensor] = [flat_grad.new_zeros(())] * len(old_dirs)  # placeholders, each set below
    q = flat_grad.neg()
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])  # type: ignore[arg-type]  # torch's own LBFGS passes a tensor
    d = r = torch.mul(q, h_diag)
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - be_i)  # type: ignore[arg-type]
    return d, lr


class _LBFGSRule(Rule):
    """LBFGS's rule: predict and explain work on the whole flat vector, not element by element."""

    def text(self, hparams: dict) -> str:
        """The L-BFGS rule in plain text; more than one iteration per step is said last."""
        text = super().text(hparams)
        if int(hparams.get("max_iter", 1)) > 1:
            text += f"\n(repeated up to {int(hparams['max_iter'])} times per step)"
        return text

    def predict(self, param: Tensor, grad: Tensor | None, state: dict[str, Tensor], hparams: dict) -> Tensor:
        """The parameter after one LBFGS step with max_iter=1 (see the module note)."""
        state = assemble(state)
        _check(param, state, hparams)
        flat_grad = torch.zeros(param.numel(), dtype=torch.float64) if grad is None else grad.reshape(-1)
        if flat_grad.abs().max() <= value(hparams, "tolerance_grad"):
            return param.clone()
        d, t = _direction(flat_grad, state, hparams)
        if flat_grad.dot(d) > -value(hparams, "tolerance_change"):
            return param.clone()
        return param.add(d.view_as(param), alpha=item(t))

    def explain(
        self, label: str, param: float, grad: float | None, state: dict[str, float], hparams: dict
    ) -> list[str]:
        """One element's share of an L-BFGS step; t and d come from the whole flat vector."""
        if grad is None:
            return no_grad_line(label, param)
        if item(state.get("n_iter", 0.0)) == 0:
            lr = value(hparams, "lr")
            return [
                f"d: {MINUS}{arg(grad)} = {num(-grad)}",
                f"t: min(1, 1/‖g‖₁) · {arg(lr)}   (‖g‖₁ over every parameter)",
                f"{label}: {arg(param)} + t · {arg(-grad)}",
            ]
        return [
            "d: two-loop recursion over the history (dot products over every parameter)",
            f"t: {arg(value(hparams, 'lr'))}",
            f"{label}: {arg(param)} + t · d",
        ]


RULE = _LBFGSRule(
    optimizer="LBFGS",
    lines=LINES,
    compute=None,
    symbols={
        "lr": "γ",
        "max_iter": "max_iter",
        "history_size": "m",
        "tolerance_grad": "tol_g",
        "tolerance_change": "tol_Δ",
    },
    note=(
        "The rule predicts max_iter=1 without a line search over a single parameter tensor; every other step "
        "(several tensors coupled through one flat vector, max_iter > 1, a strong-Wolfe line search) is checked "
        "by replaying torch.optim.LBFGS on the closure evaluations the trace recorded (gradients and loss of "
        "each, and the parameters each was evaluated at)."
    ),
)
