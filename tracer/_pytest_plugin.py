"""pytest plugin of tracer (registered through the ``pytest11`` entry point).

- the ``traced`` fixture: ``with traced(model, optimizer) as run:`` traces into the test's
  ``tmp_path``, with ``verify=True`` unless the test says otherwise;
- ``--tracer-update-golden``: ``tracer.testing.assert_matches_golden`` rewrites golden
  traces instead of failing, and the terminal summary lists what it wrote;
- readable failures: ``assert tracer.diff(a, b) is None`` explains the divergence.

Loaded in every pytest run of an environment with tracer installed, so it imports
neither torch nor tracer until a test asks for them.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_OPTION = "--tracer-update-golden"


class _State:
    """One pytest session's golden settings (pytester nests sessions in one process)."""

    def __init__(self, update: bool) -> None:
        self.update = update
        self.written: list[tuple[str, Path]] = []


_sessions: list[_State] = []
_state_key = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tracer", "tracer golden traces")
    group.addoption(
        _OPTION,
        action="store_true",
        default=False,
        help="rewrite the golden traces of tracer.testing.assert_matches_golden instead of "
        "comparing against them (review and commit the result)",
    )


def pytest_configure(config: pytest.Config) -> None:
    state = _State(bool(config.getoption(_OPTION, default=False)))
    config.stash[_state_key] = state
    _sessions.append(state)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is not None and state in _sessions:
        _sessions.remove(state)


def update_golden() -> bool:
    """Whether the running pytest session was given ``--tracer-update-golden``."""
    return bool(_sessions and _sessions[-1].update)


def golden_written(path: Path, action: str) -> None:
    """Remember a golden trace written in update mode, for the terminal summary."""
    if _sessions:
        _sessions[-1].written.append((action, path))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is None or not state.written:
        return
    terminalreporter.write_sep("-", "tracer golden traces")
    for action, path in state.written:
        terminalreporter.write_line(f"{action} {path}")
    terminalreporter.write_line(f"{len(state.written)} golden trace(s) written: review and commit them")


@pytest.fixture
def traced(tmp_path: Path) -> Callable[..., Any]:
    """``traced(model, optimizer, **options)``: ``tracer.trace`` into the test's ``tmp_path``.

    Takes the keyword arguments of ``tracer.trace``; ``path`` is optional (each call
    gets its own directory under ``tmp_path``), and ``verify`` is on unless the test
    passes ``verify=False``: every update is checked against its optimizer's rule while
    the test trains, whatever the size of its tensors.

    Example::

        def test_step(traced):
            with traced(model, optimizer) as run:
                train_one_step(model, optimizer)
            tracer.testing.assert_grad(run, "fc.weight", [[-10.0, -20.0]])
    """
    import tracer

    count = itertools.count()

    def start(model: Any, optimizer: Any = None, **options: Any) -> Any:
        if options.get("path") is None:
            n = next(count)
            options["path"] = tmp_path / ("trace" if n == 0 else f"trace-{n}")
        options.setdefault("verify", True)
        return tracer.trace(model, optimizer, **options)

    return start


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any) -> list[str] | None:
    """``assert tracer.diff(a, b) is None`` fails with the divergence explained, not a repr."""
    module = sys.modules.get("tracer._diff")
    if module is None:
        return None
    for side in (left, right):
        if isinstance(side, module.Divergence):
            return [f"{_short(left, module)} {op} {_short(right, module)}", *str(side).splitlines()]
    return None


def _short(value: Any, module: Any) -> str:
    if isinstance(value, module.Divergence):
        return f"<Divergence at step {value.step}: {value.kind} {value.name!r}>"
    return repr(value)
