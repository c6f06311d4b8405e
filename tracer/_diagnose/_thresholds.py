"""The thresholds of :func:`tracer.diagnose`: every number a diagnostic compares against."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The thresholds of :func:`diagnose`: all relative, all overridable.

    Example::

        tracer.diagnose(path, thresholds=tracer.Thresholds(update_ratio_high=0.3))

    Attributes:
        min_steps: diagnostics about a trend over steps (loss, gradient growth, update
            ratio) need at least this many traced steps; a single step shows no trend,
            so the one-step reference example raises nothing.
        window: the early and late windows compared by the trend diagnostics, as a
            fraction of the traced steps (at least 2 steps each); medians over a window
            keep a noisy mini-batch loss from raising alarms.
        loss_diverge_factor: ``loss-diverging`` (error) when the median loss of the late
            window exceeds this factor times the starting loss: the smaller of the first
            step's loss and the early window's median, so a blow-up inside the early
            window (loss 7.6 → 2,574 in one step) still counts. The loss diagnostics read
            the loss per step (the sum of its micro-batch losses) and run only on a trace
            with one loss series (a GAN's two players' losses are a game, not a trend) and
            no gradient-scaler (AMP) skips (the traced loss is then the scaled loss).
        loss_flat_rel: ``loss-flat`` (warning) when the late window's median loss is not
            at least this fraction below the early window's.
        loss_flat_atol: a loss whose early median is at most this is already converged
            and never "flat".
        exploding_growth: ``exploding-grad`` when a layer's gradient norm at some step
            exceeds this multiple of its median over the first ``window`` of steps.
        vanishing_ratio: ``vanishing-grad`` when a layer's gradient (root mean square per
            element) is below this fraction of the largest layer's among the parameters of
            the same optimizer (a generator is not compared with its discriminator) at most
            of the traced steps before convergence (see ``converged_ratio``).
        update_ratio_high: ``update-ratio`` when a weight's median ‖update‖/‖param‖ over
            steps is above this (the usual value is about 1e-3: a step this large rewrites
            the weights every few steps). Only parameters of 2 or more dimensions (weight
            matrices, kernels) are judged: a bias or norm gain starts at 0 or 1, where the
            ratio says little.
        update_ratio_low: ``update-ratio`` when that median is below this (the parameter
            barely learns: a learning rate too small, or updates lost to rounding).
        converged_ratio: a step whose total gradient norm (all parameters) is below this
            fraction of its median over the early window counts as converged:
            ``update-ratio`` and ``vanishing-grad`` leave such steps out, since a model
            with nothing left to learn has tiny updates and gradients whose ratios are
            rounding noise.
        dead_fraction: ``dead-relu`` when at least this fraction of a ReLU-family layer's
            units output zero for the whole batch in each of the last ``dead_steps``
            traced steps (an error when every unit is dead).
        dead_steps: how many consecutive traced steps, up to the last, a unit must be
            dead for.
        relu_types: module classes whose zero outputs mean dead units.
        amp_skip_fraction: ``amp-skipped`` is a warning (not info) when more than this
            fraction of the traced steps were skipped, or the last traced step was.
        never_changes_steps: ``never-changes`` when a parameter's update is exactly zero
            in at least this many traced steps and never non-zero.
        rule_check_steps: the rule check (``rule-mismatch``) replays the optimizer on at
            most this many traced steps, evenly spread, first and last included (a rule
            that is wrong is wrong at every step); None checks every step.
    """

    @classmethod
    def parse(cls, items: Iterable[str]) -> Thresholds:
        """Thresholds from ``"name=value"`` strings (the command line's ``--threshold``).

        Example::

            Thresholds.parse(["update_ratio_high=0.3", "relu_types=ReLU,GELU"])

        Raises:
            ValueError: an unknown name, or a value of the wrong type.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for item in items:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in fields:
                raise ValueError(f"threshold must be NAME=VALUE with NAME one of {sorted(fields)} (got {item!r})")
            default = getattr(cls(), name)
            try:
                if name == "relu_types":
                    value: Any = tuple(t.strip() for t in text.split(",") if t.strip())
                elif text.strip().lower() == "none" and name == "rule_check_steps":
                    value = None
                elif isinstance(default, int):
                    value = int(text)
                else:
                    value = float(text)
            except ValueError:
                raise ValueError(f"threshold {name} must be a number (got {text!r})") from None
            changes[name] = value
        return cls(**changes)

    min_steps: int = 5
    window: float = 0.2
    loss_diverge_factor: float = 2.0
    loss_flat_rel: float = 0.01
    loss_flat_atol: float = 1e-8
    exploding_growth: float = 100.0
    vanishing_ratio: float = 1e-3
    update_ratio_high: float = 0.1
    update_ratio_low: float = 1e-6
    converged_ratio: float = 1e-3
    dead_fraction: float = 0.5
    dead_steps: int = 5
    relu_types: tuple[str, ...] = ("ReLU", "ReLU6")
    amp_skip_fraction: float = 0.1
    never_changes_steps: int = 2
    rule_check_steps: int | None = 10


def coerce_thresholds(value: Thresholds | Mapping[str, Any] | None) -> Thresholds:
    """``diagnose``'s ``thresholds=``: a Thresholds, a dict of the ones to change, or None.

    Raises:
        ValueError: an unknown threshold name (the message lists the valid ones).
        TypeError: anything else.
    """
    if value is None:
        return Thresholds()
    if isinstance(value, Thresholds):
        return value
    if isinstance(value, Mapping):
        valid = [f.name for f in dataclasses.fields(Thresholds)]
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; valid thresholds are {valid}")
        return Thresholds(**value)
    raise TypeError(f"thresholds must be a tracer.Thresholds, a dict or None (got {type(value).__name__})")


def window_steps(n: int, t: Thresholds) -> int:
    """Steps in each of the early and late windows of an ``n``-step trend (at least 2)."""
    return max(2, math.ceil(t.window * n))
