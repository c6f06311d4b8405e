"""Staged rows that repeat every step, stated once: a :class:`Template` and its :data:`Block`.

An optimizer's ``step()`` makes the same rows every step (the same parameters, state
tensors, shapes and names); only the step, the sequence numbers, the hyper-parameters of
each param group and the buffers the values sit in change. A :class:`Template` holds the
fixed columns of such a run of rows, made once from the first step's rows; each later
step stages one :data:`Block` (the template and what changed) instead of one tuple per
row, and the writer thread expands it into columns (:meth:`Template.add_to`).

>>> rows = [(0, 7, "grad", "fc.weight", 0, "", "Linear", (2, 2), "float32", 4, True,
...          None, "SGD", 0, "lr=0.1", 0, 0)]                 # staged rows (FIELDS)
>>> template = Template(rows)
>>> cols = {name: [] for name in FIELDS if name not in ("group", "slot")}
>>> template.add_to(cols, step=3, seqs=[40], hparams=["lr=0.05"])
>>> cols["step"], cols["seq"], cols["name"], cols["hparams"]
([3], [40], ['fc.weight'], ['lr=0.05'])
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa

from tracer._schema import SCHEMA

# the fields of a staged row, in this order (a plain tuple: a NamedTuple costs 10× to make)
FIELDS = (
    "step", "seq", "kind", "name", "call", "part", "module_type", "shape", "dtype", "numel", "keep",
    "grad_enabled", "optimizer", "param_group", "hparams", "group", "slot",
)  # fmt: skip

_VARYING = ("step", "seq", "hparams", "group", "slot")

Block = tuple  # (Template, step, seqs: list[int], hparams by param group, the group of each key)


class Template:
    """The fixed columns of staged rows that repeat: every :data:`FIELDS` column but the
    step, the sequence number, the hyper-parameters (given per step for each param group)
    and the group (given per step for each *key*: the rows' ``group`` field, when the
    template is made, numbers the buffers of one step, which are new every step)."""

    __slots__ = ("n", "fixed", "param_group", "keys", "slots", "numels", "sizes", "keep", "grads", "_arrow")

    def __init__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.n = len(rows)
        columns = {name: list(map(itemgetter(i), rows)) for i, name in enumerate(FIELDS)}
        self.fixed = {name: values for name, values in columns.items() if name not in _VARYING}
        self.param_group: list[int] = columns["param_group"]
        self.keys = np.asarray(columns["group"], dtype=np.int64)
        self.slots = np.asarray(columns["slot"], dtype=np.int64)
        self.numels: list[int] = columns["numel"]
        self.sizes = np.asarray(self.numels, dtype=np.int64)
        self.keep = np.asarray(columns["keep"], dtype=bool)
        self.grads = columns["kind"].count("grad")  # the recorder counts gradient rows
        self._arrow: dict[str, pa.Array] | None = None

    def arrow(self) -> dict[str, pa.Array]:
        """The fixed columns as Arrow arrays of the trace's schema (made once, by the writer)."""
        if self._arrow is None:
            types = {field.name: field.type for field in SCHEMA}
            self._arrow = {name: pa.array(values, types[name]) for name, values in self.fixed.items() if name != "keep"}
        return self._arrow

    @property
    def group_index(self) -> pa.Array:
        """Each row's param group, to take its hyper-parameters' text with."""
        return self.arrow()["param_group"]

    def add_to(self, columns: dict[str, list[Any]], *, step: int, seqs: list[int], hparams: Sequence[Any]) -> None:
        """Append this template's rows to ``columns`` (lists by field; not group and slot)."""
        for name, values in self.fixed.items():
            columns[name].extend(values)
        columns["step"].extend(itertools.repeat(step, self.n))
        columns["seq"].extend(seqs)
        columns["hparams"].extend(map(hparams.__getitem__, self.param_group))

    def groups(self, gids: Sequence[int]) -> np.ndarray:
        """The group of each row, given the group of each key."""
        return np.asarray(gids, dtype=np.int64)[self.keys]


def take_seqs(counter: Any, n: int) -> list[int]:
    """The next ``n`` numbers of the recorder's sequence counter, taken at once (one C loop,
    which no other thread interleaves with)."""
    return list(itertools.islice(counter, n))
