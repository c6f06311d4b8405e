"""Assertions for tests and CI: pin what a training step does, and check it stays so.

Every function takes a trace as a path, the ``run`` of ``tracer.trace``, a DataFrame from
``tracer.load`` or a ``tracer.Trace``, and raises ``AssertionError`` with a message in the
style of ``torch.testing.assert_close``. Tolerances default to ``assert_close``'s for the
traced dtype (for an ``update``, the parameter's dtype); :func:`assert_updates_follow_rule`
judges by the report's own policy, so the two always agree.

Example::

    import tracer.testing as tt

    with tracer.trace(model, optimizer, path=tmp_path / "t") as run:
        train_one_step(model, optimizer)
    tt.assert_loss(run, 25.0)
    tt.assert_grad(run, "weight", [[-10.0, -20.0]])
    tt.assert_updates_follow_rule(run)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tracer._golden import assert_matches_golden
from tracer._testing_rows import At, assert_tensor, label
from tracer._trace import NameFilter, StepFilter, Trace, TraceLike

__all__ = [
    "assert_activation",
    "assert_activation_grad",
    "assert_grad",
    "assert_input",
    "assert_loss",
    "assert_matches_golden",
    "assert_param",
    "assert_state",
    "assert_traces_close",
    "assert_update",
    "assert_updates_follow_rule",
]

# --------------------------------------------------------------------------- one tensor


def assert_activation(
    trace: TraceLike,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "",
    rank: int = 0,
    evaluation: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the output of module ``name`` (``""`` = the root module) equals ``expected``.

    Example::

        assert_activation(run, "fc", [[3.0]])          # fc's output at step 0, first call
        assert_activation(run, "lstm", h, part="1.0")  # a tensor inside a returned tuple
        assert_activation(run, "fc", [[2.5]], evaluation=True)  # under torch.no_grad()

    Args:
        trace: a trace path, a ``run``, a DataFrame from ``tracer.load``, or a Trace.
        name: the module path, as in ``model.named_modules()``.
        expected: anything ``torch.as_tensor`` takes, of the traced shape (complex for a
            complex tensor).
        step, call, part, rank: which row (see the trace columns).
        evaluation: assert on the forward passes run without gradients (``torch.no_grad()``,
            ``inference_mode``: ``grad_enabled`` false), which count their calls apart from
            the training ones. By default the training rows; a trace with no training rows of
            this module (inference only) uses its evaluation rows.
        rtol, atol: as in ``torch.testing.assert_close`` (default: its defaults for the dtype).

    Raises:
        AssertionError: the values differ, the shapes differ, the row is not in the trace,
            or its values were not stored.
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "activation", name, expected, At(step, call, part, rank, evaluation), rtol, atol)


def assert_input(
    trace: TraceLike,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "0",
    rank: int = 0,
    evaluation: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert an input of module ``name`` equals ``expected`` (``part``: ``"0"`` = first positional).

    ``evaluation`` chooses the forward passes run without gradients, as in :func:`assert_activation`.

    Example::

        assert_input(run, "", [[1.0, 2.0]])
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "input", name, expected, At(step, call, part, rank, evaluation), rtol, atol)


def assert_activation_grad(
    trace: TraceLike,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "",
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the gradient of the loss w.r.t. module ``name``'s output equals ``expected``.

    Example::

        assert_activation_grad(run, "", [[-10.0]])
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "activation_grad", name, expected, At(step, call, part, rank), rtol, atol)


def assert_loss(
    trace: TraceLike,
    expected: Any,
    *,
    step: int = 0,
    call: int = 0,
    part: str = "",
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the loss (the tensor ``.backward()`` was called on) equals ``expected``.

    Example::

        assert_loss(run, 25.0)
        assert_loss(run, 19.36, step=1)
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "loss", "loss", expected, At(step, call, part, rank), rtol, atol)


def assert_grad(
    trace: TraceLike,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert ``p.grad`` of parameter ``name``, as the optimizer consumed it, equals ``expected``.

    Example::

        assert_grad(run, "fc.weight", [[-10.0, -20.0]])
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "grad", name, expected, At(step, 0, "", rank), rtol, atol)


def assert_param(
    trace: TraceLike,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert parameter ``name`` just before the update of ``step`` equals ``expected``.

    Example::

        assert_param(run, "fc.bias", [0.1], step=1)
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "param", name, expected, At(step, 0, "", rank), rtol, atol)


def assert_update(
    trace: TraceLike,
    name: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the change ``step`` made to parameter ``name`` (after minus before) equals ``expected``.

    The default tolerances are those of the parameter's dtype.

    Example::

        assert_update(run, "fc.weight", [[0.1, 0.2]])
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "update", name, expected, At(step, 0, "", rank), rtol, atol)


def assert_state(
    trace: TraceLike,
    name: str,
    key: str,
    expected: Any,
    *,
    step: int = 0,
    rank: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert the optimizer state ``key`` of parameter ``name`` before the update equals ``expected``.

    Example::

        assert_state(run, "fc.weight", "momentum_buffer", [[-10.0, -20.0]], step=1)
    """
    __tracebackhide__ = True
    assert_tensor(Trace.open(trace), "state", name, expected, At(step, 0, key, rank), rtol, atol)


# --------------------------------------------------------------------------- whole traces


def assert_traces_close(
    a: TraceLike,
    b: TraceLike,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    kinds: str | Iterable[str] | None = None,
) -> None:
    """Assert two traces agree row by row (``tracer.diff(a, b)`` is None).

    Example::

        assert_traces_close("traces/before", run, kinds=["loss", "grad", "update"])

    Raises:
        AssertionError: the first divergence in training order, and how many rows follow it.
    """
    __tracebackhide__ = True
    from tracer._diff import diff

    found = diff(a, b, rtol=rtol, atol=atol, kinds=kinds)  # diff opens each trace itself
    if found is not None:
        first, second = label(Trace.open(a)), label(Trace.open(b))
        raise AssertionError(f"traces are not close!\n\na: {first}\nb: {second}\n{found}")


def assert_updates_follow_rule(
    trace: TraceLike,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    optimizers: Iterable[type] | None = None,
    step: StepFilter = None,
    name: NameFilter = None,
) -> None:
    """Assert every traced update is what its optimizer's rule gives from the traced inputs.

    An update that nothing could check (no rule, and no replay possible) fails too, so
    a pass always means "checked". The verdict on each update is the report's
    (``matches``): both come from one check with one tolerance policy,
    ``tracer._checks.Tolerance``; ``rtol`` and ``atol`` replace its defaults for the
    parameter's dtype (16 machine epsilons relative to the parameter, the smallest normal
    number absolute), and its allowance relative to the step itself stays.

    Example::

        assert_updates_follow_rule(run)
        assert_updates_follow_rule(run, optimizers=[MyOptimizer])  # replay a custom class
        assert_updates_follow_rule(run, atol=1e-6)                 # also allow 1e-6 absolute

    Args:
        trace: a trace path, a ``run``, a DataFrame from ``tracer.load``, or a Trace.
        rtol, atol: tolerances on the new parameter values.
        optimizers: optimizer classes a replay may rebuild (not in ``torch.optim``).
        step, name: check only these steps / the parameters matching these globs.

    Raises:
        AssertionError: an update differs from its rule, or could not be checked (each is
            named, with the first differing element), or no optimizer's update was traced.
    """
    __tracebackhide__ = True
    from tracer._checks import Tolerance, check_updates
    from tracer._testing_updates import failures

    opened = Trace.open(trace)
    tolerance = Tolerance(rtol=rtol, atol=atol)
    checks = check_updates(opened, optimizers=tuple(optimizers or ()), tolerance=tolerance, step=step, name=name)
    message = failures(checks, tolerance, label(opened))
    if message is not None:
        raise AssertionError(message)
