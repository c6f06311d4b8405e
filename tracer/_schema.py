"""The Arrow schema of a trace: declared once, versioned, never inferred."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    from pathlib import Path

    from tracer._batch import Batch
    from tracer._hparams import DeferredHparams
    from tracer._tensors import Captured

SCHEMA_VERSION = 2
"""Bumped whenever a column is added, removed or changes meaning. Version 2 added
``rule_error``, ``rule_matches``, ``global_shape``, ``shard_offset`` and ``placements``;
version-1 files are read with those columns null."""

V1_COLUMNS = (
    "step", "seq", "kind", "name", "call", "part", "module_type", "shape", "dtype", "numel", "mean",
    "std", "min", "max", "norm", "nonfinite", "values", "rank", "grad_enabled", "optimizer",
    "param_group", "hparams",
)  # fmt: skip
"""The columns every data file has (schema version 1)."""

KINDS = (
    "input", "activation", "op", "activation_grad", "loss", "grad", "param", "update", "state",
    "buffer", "skipped", "metric",
)  # fmt: skip
"""Every kind of row, in the order they happen within a step. ``skipped`` marks an
optimizer step that a GradScaler skipped (inf/NaN gradients): no update happened.
``op`` is the output of a tensor operation inside a module's forward (``capture_ops=True``),
``buffer`` a registered buffer after the step, ``metric`` a user scalar from ``run.log``."""

META_FILE = "_tracer.json"
"""Marks a directory as a trace; starts with ``_`` so Parquet readers skip it."""

SCHEMA = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("call", pa.int64(), nullable=False),
        pa.field("part", pa.string(), nullable=False),
        pa.field("module_type", pa.string()),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("numel", pa.int64(), nullable=False),
        pa.field("mean", pa.float64()),
        pa.field("std", pa.float64()),
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("norm", pa.float64()),
        pa.field("nonfinite", pa.int64()),
        pa.field("values", pa.list_(pa.float64())),
        pa.field("rank", pa.int64(), nullable=False),
        pa.field("grad_enabled", pa.bool_()),
        pa.field("optimizer", pa.string()),
        pa.field("param_group", pa.int64()),
        pa.field("hparams", pa.string()),
        pa.field("rule_error", pa.float64()),
        pa.field("rule_matches", pa.bool_()),
        pa.field("global_shape", pa.list_(pa.int64())),
        pa.field("shard_offset", pa.list_(pa.int64())),
        pa.field("placements", pa.string()),
    ],
    metadata={"tracer.schema_version": str(SCHEMA_VERSION)},
)
"""One row per captured tensor. ``seq`` orders rows in training order within a rank."""

COLUMNS = tuple(SCHEMA.names)
STRING_COLUMNS = tuple(f.name for f in SCHEMA if f.type == pa.string())


class Row(NamedTuple):
    """One row as the recorder makes it: the columns of :data:`SCHEMA` but ``rank`` (the
    writer's), with the tensor still captured (statistics and values are made on a writer
    thread, see :func:`tracer._tensors.finish`)."""

    step: int
    seq: int
    kind: str
    name: str
    call: int
    part: str
    module_type: str | None
    captured: Captured
    grad_enabled: bool | None = None
    optimizer: str | None = None
    param_group: int | None = None
    hparams: str | DeferredHparams | None = None  # text once written (see tracer._hparams.as_text)
    rule_error: float | None = None
    rule_matches: bool | None = None
    global_shape: tuple[int, ...] | None = None
    shard_offset: tuple[int, ...] | None = None
    placements: str | None = None


class Sink(Protocol):
    """Where the recorder puts rows, one by one or staged in batches: the Parquet
    :class:`tracer._store.Writer`, or an in-memory list in tests. ``error`` is the first write failure (None while all is well)."""

    directory: Path
    max_queue_bytes: int
    error: BaseException | None

    def put(self, row: Row) -> None: ...

    def put_batch(self, batch: Batch) -> None:
        """Rows staged together (:mod:`tracer._staging`); ``batch.expand()`` gives them as Rows."""
        ...
