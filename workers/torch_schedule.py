"""Drive a torch optimizer from a schedule spec, with per-parameter-group rate multipliers.

The rates come from `schedule_math`, so a trial trains on exactly the curve the preview shows.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lrtune.schemas.schedules import ParamGroupRule, ScheduleSpec
from lrtune.workers.schedule_math import learning_rate, learning_rates

__all__ = ["ScheduleDriver", "build_param_groups"]


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
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
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
        self.last_lr: list[float] = []
        self._apply()

    def step(self) -> None:
        """Advance to the next optimizer update and set its rates."""
        self.t += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The rates just set, one per param group (the torch LRScheduler spelling)."""
        return list(self.last_lr)

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint needs to resume the schedule: the step index."""
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.t = int(state["t"])
        self._apply()

    def _rate(self) -> float:
        if self._curve is not None and self.t < len(self._curve):
            return float(self._curve[self.t])
        return learning_rate(self.spec, self.t)

    def _apply(self) -> None:
        rate = self._rate()
        for group in self.optimizer.param_groups:
            group["lr"] = rate * group.get("lr_mult", 1.0)
        self.last_lr = [group["lr"] for group in self.optimizer.param_groups]
