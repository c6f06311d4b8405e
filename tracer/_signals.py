"""SIGTERM finalizes a trace the way Ctrl-C does.

SLURM, Kubernetes and torchrun send SIGTERM before they kill a job. While a block runs in
the main thread, tracer's handler writes every buffered row and the final metadata, then
hands the signal on: to the handler it replaced, or, where that was the default, by
re-raising it with the default action (the process ends as it would have untraced). When
the replaced handler returns (it only set a flag, say), recording goes on. The previous
handler is put back when the block ends; one that was ignored is left alone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class SigtermGuard:
    """Installs the handler on :meth:`install`, restores the replaced one on :meth:`restore`."""

    def __init__(self, finalize: Callable[[], None], resume: Callable[[], None]) -> None:
        self._finalize = finalize
        self._resume = resume  # the replaced handler returned: the process goes on
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set signal handlers
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN:
            return  # SIGTERM does nothing to this process: nothing to finalize for
        self._previous = previous
        signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def restore(self) -> None:
        if not self._installed:
            return
        self._installed = False
        if signal.getsignal(signal.SIGTERM) == self._handle:  # someone set theirs on top: keep it
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        try:
            self._finalize()
        except Exception:
            pass
        previous = self._previous
        self.restore()
        if callable(previous):
            previous(signum, frame)  # may raise (SystemExit, KeyboardInterrupt): the block ends
            try:
                self._resume()
            except Exception:
                pass
            self.install()  # the next SIGTERM is finalized too
            return
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
