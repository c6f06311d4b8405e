"""tracer: see what really happens inside a PyTorch training loop.

>>> import tracer
>>> with tracer.trace(model, optimizer, path="traces/run1") as run:  # doctest: +SKIP
...     ...  # the training loop, unchanged
>>> tracer.load("traces/run1", kind="grad")  # doctest: +SKIP

Importing ``tracer`` is cheap: each name below is imported from its module the first time
it is used (``tracer.trace`` imports torch, ``tracer.load`` pyarrow and pandas), and the
public modules ``tracer.testing``, ``tracer.export``, ``tracer.plots``, ``tracer.rules``
and ``tracer.integrations`` are importable as attributes, like ``numpy.testing``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_NAMES = {
    "ALL": "tracer._options",
    "DEFAULT_MAX_VALUES": "tracer._options",
    "Divergence": "tracer._diff",
    "Finding": "tracer._diagnose",
    "Findings": "tracer._diagnose",
    "KINDS": "tracer._schema",
    "Report": "tracer._report",
    "Run": "tracer._session",
    "SCHEMA_VERSION": "tracer._schema",
    "Thresholds": "tracer._diagnose",
    "Trace": "tracer._trace",
    "TraceFormatError": "tracer._errors",
    "TraceWriteError": "tracer._errors",
    "TracerError": "tracer._errors",
    "compare": "tracer._compare",
    "diagnose": "tracer._diagnose",
    "diff": "tracer._diff",
    "load": "tracer._load",
    "open": "tracer._trace",
    "report": "tracer._report",
    "trace": "tracer._session",
}
_ALIASES = {"open": "open_trace"}  # tracer.open is _trace.open_trace (no shadowed builtin there)
_MODULES = ("export", "integrations", "plots", "rules", "testing")

__all__ = [
    "ALL",
    "DEFAULT_MAX_VALUES",
    "Divergence",
    "Finding",
    "Findings",
    "KINDS",
    "Report",
    "Run",
    "SCHEMA_VERSION",
    "Thresholds",
    "Trace",
    "TraceFormatError",
    "TraceWriteError",
    "TracerError",
    "__version__",
    "compare",
    "diagnose",
    "diff",
    "load",
    "open",
    "report",
    "trace",
]

if TYPE_CHECKING:
    from tracer._compare import compare
    from tracer._diagnose import Finding, Findings, Thresholds, diagnose
    from tracer._diff import Divergence, diff
    from tracer._errors import TraceFormatError, TracerError, TraceWriteError
    from tracer._load import load
    from tracer._options import ALL, DEFAULT_MAX_VALUES
    from tracer._report import Report, report
    from tracer._schema import KINDS, SCHEMA_VERSION
    from tracer._session import Run, trace
    from tracer._trace import Trace
    from tracer._trace import open_trace as open


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), _ALIASES.get(name, name))
        globals()[name] = value  # once: later lookups do not come here
        return value
    if name in _MODULES:
        return importlib.import_module(f"tracer.{name}")
    raise AttributeError(f"module 'tracer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_MODULES})
