"""Drive a torch optimizer from a schedule spec, with per-parameter-group rate multipliers.

The rates come from `schedule_math`, so a trial trains on exactly the curve the preview shows
(for plateau: the preview given the same metric after each epoch).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from lrtune.schemas.schedules import ParamGroupRule, ScheduleSpec
from lrtune.workers.schedule_math import (
    learning_rate,
    learning_rates,
    plateau_rates,
    plateau_watched,
)

__all__ = ["ParamGroups", "ScheduleDriver", "build_param_groups"]


class ParamGroups(Protocol):
    """What the driver sets rates on: a torch optimizer, or a population member's groups."""

    param_groups: list[dict[str, Any]]


def build_param_groups(
    model: torch.nn.Module, rules: Sequence[ParamGroupRule]
) -> list[dict[str, Any]]:
    """Optimizer param groups, one per rule in order, then the unmatched parameters (lr_mult 1).

    A parameter belongs to the FIRST rule whose `match` is a prefix of its name or an fnmatch
    glob matching it (case-sensitive). Groups that end up empty are dropped, because torch
    optimizers refuse an empty parameter list.
    """
    grouped: list[list[torch.nn.Parameter]] = [[] for _ in rules]
    unmatched: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        for index, rule in enumerate(rules):
            if name.startswith(rule.match) or fnmatch.fnmatchcase(name, rule.match):
                grouped[index].append(parameter)
                break
        else:
            unmatched.append(parameter)

    groups = [
        {"params": params, "lr_mult": rule.lr_mult}
        for rule, params in zip(rules, grouped, strict=True)
        if params
    ]
    if unmatched:
        groups.append({"params": unmatched, "lr_mult": 1.0})
    return groups


class ScheduleDriver:
    """Sets every param group's lr to lr(t) * group["lr_mult"] (1 when absent), one step at a time.

    PyTorch convention: construction sets lr(0), used by the first `optimizer.step()`; each
    `step()` after an `optimizer.step()` advances t by one. With `total_steps` the whole curve
    (t = 0 .. total_steps) is computed once up front; steps past it are evaluated one by one.

    `on_epoch_end(value)`, after each epoch's evaluation, hands the driver the monitored metric:
    plateau's rate follows it from the next step on, exactly as torch's ReduceLROnPlateau on
    these param groups (each group its own, from lr * lr_mult, its floor min_lr * lr_mult);
    every other policy ignores it.
    """

    def __init__(
        self,
        optimizer: ParamGroups,
        spec: ScheduleSpec,
        total_steps: int | None = None,
    ) -> None:
        if total_steps is not None and total_steps < 0:
            raise ValueError(f"total_steps must be non-negative, got {total_steps}")
        self.optimizer = optimizer
        self.spec = spec
        self.t = 0
        self._curve = (
            None if total_steps is None else learning_rates(spec, np.arange(total_steps + 1))
        )
        # plateau: every metric handed over, the step it came at, and each group's rate now.
        self.metrics: list[float] = []
        self.epoch_ends: list[int] = []
        self._plateau_now: list[float] = []
        self.last_lr: list[float] = []
        self._follow_metrics()
        self._apply()

    def step(self) -> None:
        """Advance to the next optimizer update and set its rates."""
        self.t += 1
        self._apply()

    def on_epoch_end(self, metric_value: float) -> None:
        """After an epoch's evaluation: its value of the monitored metric (plateau reads it)."""
        if self.spec.policy != "plateau":
            return
        self.metrics.append(float(metric_value))
        self.epoch_ends.append(self.t)
        self._follow_metrics()
        self._apply()

    def rate(self, t: int) -> float:
        """The schedule's rate at step t (multiplier 1), given the metrics handed over so far."""
        if self.spec.policy == "plateau":
            return learning_rate(self.spec, t, metrics=self.metrics, epoch_ends=self.epoch_ends)
        if self._curve is not None and t < len(self._curve):
            return float(self._curve[t])
        return learning_rate(self.spec, t)

    def get_last_lr(self) -> list[float]:
        """The rates just set, one per param group (the torch LRScheduler spelling)."""
        return list(self.last_lr)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the schedule: the step index (and plateau's
        metrics with the steps they came at)."""
        return {"t": self.t, "metrics": list(self.metrics), "epoch_ends": list(self.epoch_ends)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.metrics = [float(m) for m in state.get("metrics", [])]
        self.epoch_ends = [int(end) for end in state.get("epoch_ends", [])]
        self._follow_metrics()
        self._apply()

    def _follow_metrics(self) -> None:
        if self.spec.policy != "plateau":
            return
        watched, _ = plateau_watched(self.spec, self.metrics, self.epoch_ends)
        self._plateau_now = [
            plateau_rates(self.spec, watched, lr_mult=group.get("lr_mult", 1.0))[-1]
            for group in self.optimizer.param_groups
        ]

    def group_rates(self, t: int) -> list[float]:
        """Each param group's rate at step t, multiplier included (plateau: as of now)."""
        if self.spec.policy == "plateau" and t >= self.spec.warmup_steps:
            # Past the warmup each group follows its own ReduceLROnPlateau (see the class doc).
            return list(self._plateau_now)
        rate = self.rate(t)
        return [rate * group.get("lr_mult", 1.0) for group in self.optimizer.param_groups]

    def _apply(self) -> None:
        for group, rate in zip(self.optimizer.param_groups, self.group_rates(self.t), strict=True):
            group["lr"] = rate
        self.last_lr = [group["lr"] for group in self.optimizer.param_groups]
