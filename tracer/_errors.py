"""The one error class of tracer, and its few specialisations."""

from __future__ import annotations


class TracerError(Exception):
    """Base class of every error tracer raises on purpose."""


class TraceFormatError(TracerError, ValueError):
    """A path is not a readable trace: missing, not a trace, corrupt, or too new."""


class TraceWriteError(TracerError, OSError):
    """The background writer could not write the trace (disk full, permissions, ...)."""


def write_error(path: object, error: BaseException) -> TraceWriteError:
    """The error a trace that cannot be written raises, saying what to do."""
    return TraceWriteError(
        f"tracer could not write to {str(path)!r}: {error}; free space or choose another path "
        "(on_error='warn' lets training go on untraced)"
    )
