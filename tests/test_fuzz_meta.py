"""A damaged ``_tracer.json``: ``tracer.load`` raises one clear TraceFormatError, and every
command of ``tracer --help`` exits 2 with one ``tracer: error:`` line, never a traceback.

The types a reader relies on are written down here a second time, on purpose: the fuzz
test checks the reader against this table, not against its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _reference import trace_reference
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_cli import assert_one_error_line, command_line, subcommands

import tracer


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(v):
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _object(fields, required=()):
    """An object whose listed keys (if present) hold what ``fields`` allows; others may be anything."""

    def fits(v):
        if not isinstance(v, dict) or any(k not in v for k in required):
            return False
        return all(ok(v[k]) for k, ok in fields.items() if k in v)

    return fits


def _list_of(item):
    return lambda v: isinstance(v, list) and all(item(x) for x in v)


OPTIMIZER = {
    "class": lambda v: isinstance(v, str),
    "qualname": lambda v: isinstance(v, str),
    "bases": _strings,
    "adopted": lambda v: isinstance(v, bool),
}
PARAMETER = {
    "name": lambda v: isinstance(v, str),
    "shape": _list_of(_is_int),
    "dtype": lambda v: isinstance(v, str),
    "requires_grad": lambda v: isinstance(v, bool),
    "optimizer": lambda v: v is None or _is_int(v),
    "param_group": lambda v: v is None or _is_int(v),
}
OPTIONS = {
    "capture": _strings,
    "max_values": lambda v: v is None or _is_int(v),
    "every": _is_int,
    "include": lambda v: v is None or _strings(v),
    "exclude": lambda v: v is None or _strings(v),
    "verify": lambda v: isinstance(v, bool),
    "capture_ops": lambda v: isinstance(v, bool),
}

# a key of the metadata (as a path into it) -> what it may hold
ALLOWED = {
    ("schema_version",): lambda v: _is_int(v) and v <= tracer.SCHEMA_VERSION,
    ("format",): lambda v: isinstance(v, str),
    ("model",): lambda v: v is None or isinstance(v, str),
    ("complete",): lambda v: v is None or isinstance(v, bool),
    ("steps",): lambda v: v is None or _is_int(v) or _list_of(_is_int)(v),
    ("golden",): lambda v: v is None or isinstance(v, dict),
    ("files",): _strings,
    ("optimizers",): _list_of(_object(OPTIMIZER, required=["class"])),
    ("optimizers", 0): _object(OPTIMIZER, required=["class"]),
    **{("optimizers", 0, key): ok for key, ok in OPTIMIZER.items()},
    ("options",): _object(OPTIONS),
    **{("options", key): ok for key, ok in OPTIONS.items()},
    ("options", "capture", 0): lambda v: isinstance(v, str),
    ("parameters",): _list_of(_object(PARAMETER, required=["name"])),
    ("parameters", 0): _object(PARAMETER, required=["name"]),
    **{("parameters", 0, key): ok for key, ok in PARAMETER.items()},
    ("parameters", 0, "shape", 0): _is_int,
}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small trace (two SGD steps of the reference example) and its metadata text."""
    return trace_reference(tmp_path_factory.mktemp("meta") / "good", steps=2)


def _damaged(good: Path, where: Path, meta: bytes) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(good, where)
    (where / "_tracer.json").write_bytes(meta)
    return where


def _set(meta: dict, path: tuple, value):
    holder = meta
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return meta


def _assert_bad_everywhere(trace: Path, good: Path, scratch: Path, says: str) -> None:
    with pytest.raises(tracer.TraceFormatError) as info:
        tracer.load(trace)
    assert "_tracer.json" in str(info.value) and says in str(info.value)
    for words in subcommands():
        assert_one_error_line(command_line(words, trace, good, scratch), "_tracer.json", says)


# --------------------------------------------------------------------------- the cases that crashed


def _case(edit, says, id):
    return pytest.param(edit, says, id=id)


@pytest.mark.parametrize(
    "edit, says",
    [
        _case(
            lambda t: t.replace(f'"schema_version": {tracer.SCHEMA_VERSION}', '"schema_version": 1e999'),
            "schema_version must be an integer",
            "1e999",
        ),
        _case(lambda t: DEEP, "nested too deeply", "deep"),
        _case(lambda t: t.replace('"every": 1', f'"every": {DEEP}'), "nested too deeply", "deep option"),
        _case(
            lambda t: t.replace('"class": "SGD"', '"class": ["SGD"]'), "optimizers[0].class must be a string", "class"
        ),
        _case(lambda t: t.replace('"class": "SGD",', ""), "optimizers[0].class is missing", "no class"),
        _case(
            lambda t: t.replace('"bases": []', '"bases": "Optimizer"'),
            "optimizers[0].bases must be a list of strings",
            "bases",
        ),
        _case(
            lambda t: t.replace('"max_values": 1024', '"max_values": "1024"'),
            "options.max_values must be an integer or null",
            "max_values",
        ),
        _case(
            lambda t: t.replace('"include": null', '"include": "fc*"'),
            "options.include must be a list of strings or null",
            "include",
        ),
        _case(
            lambda t: t.replace('"requires_grad": true', '"requires_grad": 1'),
            "parameters[0].requires_grad must be true or false",
            "requires_grad",
        ),
        _case(lambda t: t.replace('"model": "Linear"', '"model": 3'), "model must be a string or null", "model"),
        _case(lambda t: "[]", "the file must be an object (got a list)", "list"),
        _case(lambda t: t[: len(t) // 2], "not valid trace metadata", "cut"),
    ],
)
def test_damaged_metadata_is_one_clear_line(good, tmp_path, edit, says):
    text = (good / "_tracer.json").read_text()
    damaged = edit(text)
    assert damaged != text
    trace = _damaged(good, tmp_path / "bad", damaged.encode())
    _assert_bad_everywhere(trace, good, tmp_path, says)


def test_metadata_that_is_not_utf8(good, tmp_path):
    trace = _damaged(good, tmp_path / "bad", b'{"model": "\xff"}')
    _assert_bad_everywhere(trace, good, tmp_path, "utf-8")


def test_a_newer_or_unknown_key_is_no_error(good, tmp_path):
    meta = json.loads((good / "_tracer.json").read_text())
    meta["written_by_a_newer_tracer"] = {"anything": [1, "x"]}
    meta["options"]["a_new_option"] = "x"
    trace = _damaged(good, tmp_path / "newer", json.dumps(meta).encode())
    assert 20 == len(tracer.load(trace))


# --------------------------------------------------------------------------- fuzz


# derandomized: the same examples in every run, so CI never fails by chance
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(where=st.sampled_from(sorted(ALLOWED, key=str)), value=JSON)
def test_fuzz_a_wrong_type_anywhere_in_the_metadata(good, tmp_path_factory, where, value):
    assume(not ALLOWED[where](value))  # a value that fits is the reader's to accept
    meta = json.loads((good / "_tracer.json").read_text())
    scratch = tmp_path_factory.mktemp("fuzz")
    trace = _damaged(good, scratch / "bad", json.dumps(_set(meta, where, value)).encode())
    _assert_bad_everywhere(trace, good, scratch, where[0].split("_")[0])  # "optimizers[0].class must be ..."


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(min_value=0), noise=st.binary(min_size=1, max_size=8), how=st.sampled_from(["cut", "noise"]))
def test_fuzz_mangled_metadata_bytes(good, tmp_path_factory, cut, noise, how):
    text = (good / "_tracer.json").read_bytes()
    i = cut % len(text)
    damaged = text[:i] if how == "cut" else text[:i] + noise + text[i + len(noise) :]
    try:
        meta = json.loads(damaged)
    except ValueError:
        meta = None  # the common case: not JSON any more
    scratch = tmp_path_factory.mktemp("bytes")
    trace = _damaged(good, scratch / "bad", damaged)
    if meta is not None:  # still JSON: it loads, or it is refused as any other metadata
        try:
            tracer.load(trace)
        except tracer.TraceFormatError as exc:
            assert "_tracer.json" in str(exc)
        return
    _assert_bad_everywhere(trace, good, scratch, "not valid trace metadata")
