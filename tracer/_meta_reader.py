"""A trace's metadata file, ``_tracer.json``, read and checked: every key a reader uses has
its documented type (the data files: :mod:`tracer._reader`).

>>> read_meta(Path("traces/run1"))["model"]  # doctest: +SKIP
'Sequential'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracer._errors import TraceFormatError
from tracer._row_checks import _parse_json, _type_name
from tracer._schema import META_FILE, SCHEMA_VERSION


def read_meta(path: Path) -> dict[str, Any]:
    """The trace's metadata, checked: every key a reader uses has its documented type.

    ``{}`` for a trace without a metadata file. Raises TraceFormatError naming the file
    and the key that is wrong.
    """
    file = path / META_FILE
    if not file.is_file():
        return {}
    meta = _parse_json(file.read_bytes, f"{_quoted(file)} is not valid trace metadata")
    problem = _mismatch(meta, _META_SPEC, "")
    if problem is not None:
        raise TraceFormatError(f"{_quoted(file)} is not valid trace metadata: {problem}")
    _check_version(meta.get("schema_version", SCHEMA_VERSION), file)
    return meta


def _quoted(file: Path) -> str:
    return repr(str(file))


# --------------------------------------------------------------------------- metadata types


class _Required:
    """Marks a key of a :data:`_META_SPEC` object that must be present."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec


_STRINGS = [str]
_OPTIONAL_STRINGS = (_STRINGS, None)

_META_SPEC: dict[str, Any] = {
    "format": str,
    "schema_version": int,
    "model": (str, None),
    "complete": (bool, None),
    "steps": (int, [int], None),  # a count in a recorded trace, the list of steps in a golden one
    "optimizers": [{"class": _Required(str), "qualname": str, "bases": _STRINGS, "adopted": bool}],
    "files": _STRINGS,  # the data files the trace wrote
    "parameters": [
        {
            "name": _Required(str),
            "shape": [int],
            "dtype": str,
            "requires_grad": bool,
            "optimizer": (int, None),
            "param_group": (int, None),
            "aliases": _STRINGS,  # other names of a shared (tied) parameter
        }
    ],
    "options": {
        "capture": _STRINGS,
        "max_values": (int, None),
        "every": int,
        "include": _OPTIONAL_STRINGS,
        "exclude": _OPTIONAL_STRINGS,
        "verify": bool,
        "capture_ops": bool,
    },
    "golden": (dict, None),
}
"""What each metadata key holds: a type, ``None`` (JSON null), a tuple of choices, ``[spec]``
(a list of such), or ``{key: spec}`` (an object; other keys are allowed, for newer writers)."""


def _mismatch(value: Any, spec: Any, where: str) -> str | None:
    """None when ``value`` fits ``spec``, else what is wrong, naming the key (``optimizers[0].class``)."""
    if isinstance(spec, tuple):
        if any(_mismatch(value, choice, where) is None for choice in spec):
            return None
        return f"{where or 'the file'} must be {_spec_name(spec)} (got {_type_name(value)})"
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{where or 'the file'} must be {_spec_name(spec)} (got {_type_name(value)})"
        problems = (_mismatch(item, spec[0], f"{where}[{i}]") for i, item in enumerate(value))
        return next((p for p in problems if p is not None), None)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where or 'the file'} must be {_spec_name(spec)} (got {_type_name(value)})"
        for key, sub in spec.items():
            name = f"{where}.{key}" if where else key
            required = isinstance(sub, _Required)
            if key not in value:
                if required:
                    return f"{name} is missing"
                continue
            problem = _mismatch(value[key], sub.spec if required else sub, name)
            if problem is not None:
                return problem
        return None
    if _fits(value, spec):
        return None
    return f"{where} must be {_spec_name(spec)} (got {_type_name(value)})"


def _fits(value: Any, spec: Any) -> bool:
    if spec is None:
        return value is None
    if spec is int:  # JSON true/false are not counts
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, spec)


def _spec_name(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_spec_name(s) for s in spec)
    if isinstance(spec, list):
        return f"a list of {_spec_name(spec[0]).removeprefix('a ').removeprefix('an ')}s"
    if isinstance(spec, dict):
        return "an object"
    return _JSON_NAMES[spec]


_JSON_NAMES = {None: "null", str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


def _check_version(version: Any, where: Path) -> None:
    try:
        version = int(version)
    except (TypeError, ValueError, OverflowError):
        raise TraceFormatError(f"{_quoted(where)} has an unreadable schema version {version!r}") from None
    if version > SCHEMA_VERSION:
        raise TraceFormatError(
            f"{_quoted(where)} was written with trace schema v{version}, newer than this tracer "
            f"reads (v{SCHEMA_VERSION}); upgrade: pip install -U torch-tracer"
        )
