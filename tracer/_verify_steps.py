"""The recorder's part for ``verify=True`` and for steps that evaluate their closure many times.

:class:`VerifySteps` is a base class of :class:`tracer._optimizer_steps.OptimizerSteps`
(itself a part of :class:`tracer._hooks.Recorder`): the rule's prediction of each update
before its step (:mod:`tracer._verify`), the verdict after it, an LBFGS step replayed from
its closure evaluations (:mod:`tracer._lbfgs_replay`), and the rows of every closure
evaluation inside one LBFGS ``step()``: grads with call 0, 1, …, params with call 1, 2, ….

A failure to verify never reaches training: the update gets null verdicts and one warning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from tracer._dispatch import _warn
from tracer._errors import TraceWriteError
from tracer._hparams import hparams_json
from tracer._tensors import Captured

if TYPE_CHECKING:
    from tracer._lbfgs_replay import LiveLBFGS
    from tracer._optimizer_steps import _Inflight
    from tracer._schema import Sink
    from tracer._selection import ParamInfo
    from tracer._verify import Prediction


class VerifySteps:
    """verify and closure evaluations; the attributes below are the Recorder's."""

    kinds: frozenset[str]
    params: dict[torch.Tensor, ParamInfo]
    step: int
    verify: bool
    writer: Sink
    _seq: Iterator[int]
    _warned: set[tuple[str, str]]
    _capture: Callable[[torch.Tensor], Captured]
    emit: Callable[..., None]
    cannot_record: Callable[[str, str, BaseException], None]

    def _recording_evaluations(
        self, opt: torch.optim.Optimizer, entry: _Inflight, closure: Callable[[], Any]
    ) -> Callable[[], Any]:
        def closure_then_record() -> Any:
            result = closure()  # outside any guard: its errors are the user's
            call, entry.evaluations = entry.evaluations, entry.evaluations + 1
            try:
                with torch.no_grad():
                    self._record_evaluation(opt, entry, call, result)
            except TraceWriteError:
                raise
            except Exception as exc:
                self.cannot_record("grad", type(opt).__name__, exc)
            return result

        return closure_then_record

    def _record_evaluation(self, opt: torch.optim.Optimizer, entry: _Inflight, call: int, loss: Any) -> None:
        """Rows of closure evaluation ``call`` inside ``step()``: its gradients (call ``call``)
        and, from the second on, the parameters it was evaluated at (the first's are the
        param rows of the step)."""
        if entry.lbfgs is not None:
            entry.lbfgs.evaluated(loss)
        cls = type(opt).__name__
        for gi, group in enumerate(opt.param_groups):
            hp = hparams_json(group)
            for p in group["params"]:
                info = self.params.get(p)
                if info is None or not info.selected or not p.requires_grad:
                    continue
                common = dict(optimizer=cls, group=gi, hparams=hp, step=entry.step)
                if p.grad is not None and "grad" in self.kinds:
                    self.emit("grad", info.name, call, "", info.module_type, p.grad, **common)
                if call and "param" in self.kinds:
                    self.emit("param", info.name, call, "", info.module_type, p, **common)

    def _verdict(
        self, prediction: Prediction, before: torch.Tensor, p: torch.Tensor, info: ParamInfo
    ) -> tuple[float, bool] | None:
        """``(rule_error, rule_matches)`` of ``p``'s update (before ``before`` is reused)."""
        try:
            from tracer._sharded import local_of
            from tracer._verify import verdict

            return verdict(prediction, before, local_of(p).detach())  # a DTensor: this rank's shard
        except Exception as exc:
            self.could_not_verify(info.name, exc)
            return None

    def _lbfgs_verdicts(self, live: LiveLBFGS) -> dict[torch.Tensor, tuple[float, bool]]:
        try:
            return live.verdicts()
        except Exception as exc:
            self.could_not_verify("LBFGS", exc)
            return {}

    def could_not_verify(self, name: str, exc: BaseException) -> None:
        """One warning per kind of failure of verify (the updates it could not check get nulls)."""
        key = ("verify", type(exc).__name__)
        if key in self._warned:
            return
        self._warned.add(key)
        _warn(f"tracer could not verify the updates of {name!r} ({type(exc).__name__}: {exc}); their "
              "rule_error and rule_matches are null (and of any other update that fails so); training goes on")  # fmt: skip

    def _predict(
        self, opt: torch.optim.Optimizer, hp: str, p: torch.Tensor, state: dict[str, torch.Tensor], info: ParamInfo
    ) -> Prediction | None:
        """verify: the rule's new value of ``p``, from copies of its live value, grad and state."""
        try:
            from tracer._verify import predict

            return predict(opt, hp, p, state)
        except Exception as exc:
            self.could_not_verify(info.name, exc)
            return None

    def _live_lbfgs(self, opt: torch.optim.Optimizer) -> LiveLBFGS | None:
        """verify of an LBFGS step: copies of what a replay of it starts from."""
        try:
            from tracer._lbfgs_replay import LiveLBFGS

            return LiveLBFGS(opt)
        except Exception as exc:
            self.could_not_verify(type(opt).__name__, exc)
            return None
