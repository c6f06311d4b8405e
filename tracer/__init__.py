"""tracer: see what really happens inside a PyTorch training loop.

>>> import tracer
>>> with tracer.trace(model, optimizer, path="traces/run1") as run:  # doctest: +SKIP
...     ...  # the training loop, unchanged
>>> tracer.load("traces/run1", kind="grad")  # doctest: +SKIP
"""

from tracer._diff import Divergence, diff
from tracer.diagnose import Finding, Findings, Thresholds, diagnose
from tracer._errors import TraceFormatError, TracerError, TraceWriteError
from tracer._load import load
from tracer._schema import KINDS, SCHEMA_VERSION
from tracer._session import ALL, DEFAULT_MAX_VALUES, Run, trace
from tracer.report import Report, report

__version__ = "0.1.0"

__all__ = [
    "ALL",
    "DEFAULT_MAX_VALUES",
    "Divergence",
    "Finding",
    "Findings",
    "KINDS",
    "SCHEMA_VERSION",
    "Report",
    "Run",
    "Thresholds",
    "TraceFormatError",
    "TraceWriteError",
    "TracerError",
    "__version__",
    "diagnose",
    "diff",
    "load",
    "report",
    "trace",
]
