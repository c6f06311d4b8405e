"""The warning at a block's end for a trace that is probably not what was meant (no
gradient rows where gradients were expected), with the likely reason."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracer._hooks import Recorder
    from tracer._session import Run


def warn_if_surprising(run: Run, recorder: Recorder) -> None:
    """A trace that probably is not what was meant says so when the block ends."""
    if "grad" not in run._kinds or recorder.grad_rows or recorder.stopped or run._every > recorder.step + 1:
        return
    if recorder.backward_passes == 0 and recorder.step == 0:
        return  # nothing trained
    if recorder.backward_passes == 0 and not run._optimizers:
        return  # forward passes only: no gradients were meant
    own = {id(p) for p in run._model.parameters()}
    if run._optimizers and not any(id(p) in own for o in run._optimizers for g in o.param_groups for p in g["params"]):
        why = "the optimizer holds none of the model's parameters"
    elif run._include is not None or run._exclude:
        why = "include/exclude selected no parameter that received a gradient"
    else:
        why = "no parameter of the model received a gradient"
    warnings.warn(
        f"tracer recorded no gradient rows in {str(run.path)!r}: {why}. Pass the optimizer "
        "that trains this model (tracer.trace(model, optimizer)), or check that the loss "
        "depends on the model's parameters",
        RuntimeWarning,
        stacklevel=3,
    )
