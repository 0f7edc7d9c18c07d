"""Users' own training loops: a `TrainFunction` and the `TrialContext` it trains with.

An entrypoint may return a `Workload` (lrtune's loop trains it) or a `TrainFunction`: the
user's loop, which asks the context for what the trial decides (its schedule as a torch
scheduler, its seed and device) and hands back what the trial measures (one `report` per
epoch). Everything around the loop (divergence, cancel, ASHA, checkpoints, SQL, the
recommendation) is the same as for a built-in trial.

    def train(ctx: TrialContext) -> None:
        model = Net().to(ctx.device)
        optimizer = torch.optim.AdamW(ctx.param_groups(model), weight_decay=0.01)
        scheduler = ctx.lr_scheduler(optimizer)
        for epoch in range(1, ctx.epochs + 1):
            for inputs, targets in loader:          # ctx.steps_per_epoch batches
                ...; optimizer.step(); scheduler.step()
            if ctx.report(epoch, train_loss=..., val_loss=..., val_accuracy=...):
                return                               # cancelled or stopped early

    def make(**params) -> TrainFunction:
        return TrainFunction(train, steps_per_epoch=len(loader))
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lrtune.schemas.schedules import ParamGroupRule, ScheduleSpec
from lrtune.schemas.trials import EpochResult, TrialOutcomeStatus
from lrtune.workers.rng import rng_state, set_rng_state
from lrtune.workers.torch_schedule import ScheduleDriver, build_param_groups
from torch.optim.lr_scheduler import LRScheduler


class TrainFunctionError(RuntimeError):
    """A train function used its context wrongly (the message says how to fix it)."""


@dataclass(frozen=True)
class TrainFunction:
    """A user's training loop, `train(ctx)`, with its optimizer steps per epoch.

    `steps_per_epoch` must be known before training: schedules are counted in optimizer steps
    (so it is the number of `optimizer.step()` calls per epoch, after any gradient
    accumulation). `train` must report epochs 1, 2, ... in order and stop when `report`
    returns True.
    """

    train: Callable[[TrialContext], None]
    steps_per_epoch: int

    def __post_init__(self) -> None:
        if not callable(self.train):
            raise TypeError(f"TrainFunction.train must be callable, got {type(self.train)}")
        if isinstance(self.steps_per_epoch, bool) or not isinstance(self.steps_per_epoch, int):
            raise TypeError(
                f"TrainFunction.steps_per_epoch must be an int, got {self.steps_per_epoch!r}"
            )
        if self.steps_per_epoch <= 0:
            raise ValueError(
                f"TrainFunction.steps_per_epoch must be positive, got {self.steps_per_epoch}"
            )


class TrialLRScheduler(LRScheduler):
    """A torch LR scheduler that follows the trial's schedule, warmup included: each param
    group's rate is lr(t) x its "lr_mult" (1 when absent), t the optimizer steps so far.

    Step it after every `optimizer.step()`, as any torch scheduler. Its `state_dict()` is what a
    checkpoint needs (the step; for plateau, the metrics so far).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, driver: ScheduleDriver) -> None:
        self.driver = driver
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        self.driver.t = self.last_epoch  # the driver's step is the scheduler's
        return self.driver.group_rates(self.last_epoch)

    def on_epoch_end(self, metric_value: float) -> None:
        """The epoch's value of the job's metric (plateau's rate follows it)."""
        self.driver.on_epoch_end(metric_value)
        self._last_lr = self.driver.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "driver": self.driver.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Back to the saved step, the optimizer's rates set for it."""
        self.last_epoch = int(state_dict["last_epoch"])
        self.driver.load_state_dict(state_dict["driver"])
        self._last_lr = self.driver.get_last_lr()


@dataclass
class FunctionState:
    """A train function's checkpoint: the user's state after `epoch`, the global RNGs as they
    were when it was saved, and the epochs reported so far."""

    epoch: int
    user: dict[str, Any]
    rng: dict[str, Any]
    history: list[EpochResult]
    elapsed_s: float

    def save(self, path: Path) -> None:
        payload = {**self.__dict__, "history": [r.model_dump() for r in self.history]}
        torch.save({"kind": "function", **payload}, path)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> FunctionState:
        payload = {k: v for k, v in payload.items() if k != "kind"}
        payload["history"] = [EpochResult.model_validate(r) for r in payload["history"]]
        return cls(**payload)


class _StopTrial(Exception):
    """Raised by `report` called again after it said stop: the trial is over."""


@dataclass
class TrialContext:
    """What a train function gets from its trial; see the module's example.

    - `params`: the job's `workload.params`; `seed` (the global RNGs are seeded with it before
      `train` is called); `device` ("cpu" or "cuda"); `epochs`; `steps_per_epoch` (as the
      `TrainFunction` declared it); `metric` and `mode`: the job's.
    - `param_groups(model)`: optimizer param groups carrying the job's rate multipliers.
    - `lr_scheduler(optimizer)`: the trial's schedule as a torch scheduler.
    - `report(epoch, train_loss=, val_loss=, **metrics) -> bool`: True means stop now.
    - `save_checkpoint(state)` just before `report(epoch, ...)`: the state after that epoch;
      `load_checkpoint()`: the latest saved state when the trial resumes, else None.
    """

    params: dict[str, Any]
    seed: int
    device: torch.device
    epochs: int
    steps_per_epoch: int
    metric: str
    mode: str
    schedule: ScheduleSpec
    rules: Sequence[ParamGroupRule]
    divergence_factor: float
    on_epoch: Callable[[EpochResult, FunctionState | None], bool]
    checkpoint_due: Callable[[int], bool] = lambda epoch: False
    resume: FunctionState | None = None
    history: list[EpochResult] = field(default_factory=list)
    status: TrialOutcomeStatus = "completed"
    started: float = field(default_factory=time.perf_counter)
    _schedulers: list[TrialLRScheduler] = field(default_factory=list)
    _pending: tuple[dict[str, Any], dict[str, Any]] | None = None
    _over: bool = False

    def __post_init__(self) -> None:
        if self.resume is not None:
            self.history = list(self.resume.history)
            self.started -= self.resume.elapsed_s

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """`model`'s parameters in groups by the job's `param_groups` rules, each with its
        "lr_mult" (one group at multiplier 1 without rules). Pass them to the optimizer."""
        return build_param_groups(model, self.rules)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> TrialLRScheduler:
        """A scheduler setting `optimizer`'s rates to the trial's schedule from now on."""
        if self.rules and not any("lr_mult" in g for g in optimizer.param_groups):
            raise TrainFunctionError(
                "the job sets param_groups rules, but the optimizer's groups carry no lr_mult: "
                "build the optimizer with ctx.param_groups(model)"
            )
        scheduler = TrialLRScheduler(
            optimizer, ScheduleDriver(optimizer, self.schedule, total_steps=self.total_steps)
        )
        self._schedulers.append(scheduler)
        return scheduler

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Keep `state` (a dict of tensors, numbers, state_dicts) as the trial's state after
        the epoch reported next; it is saved with that report when `checkpoint_due(epoch)`
        (rung epochs and every LRTUNE_CHECKPOINT_EVERY_EPOCHS epochs), dropped otherwise."""
        if not isinstance(state, Mapping):
            raise TrainFunctionError(
                f"ctx.save_checkpoint takes a dict, got {type(state).__name__}"
            )
        steps = self._steps()
        if steps is not None and steps // self.steps_per_epoch <= len(self.history):
            raise TrainFunctionError(
                f"ctx.save_checkpoint: the state is after epoch {steps // self.steps_per_epoch}, "
                "which was reported already; save the state just before report()ing its epoch"
            )
        # A copy: a state_dict() shares the live tensors, which the next steps would move.
        self._pending = (copy.deepcopy(dict(state)), rng_state())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state saved with the last checkpointed epoch when the trial resumes, else None.
        The global RNGs are put back as they were when it was saved, so call it where the
        uninterrupted loop would go on (after building model and optimizer). Training goes on
        with epoch `resumed_epoch + 1`."""
        if self.resume is None:
            return None
        set_rng_state(self.resume.rng)
        return self.resume.user

    @property
    def resumed_epoch(self) -> int | None:
        """The epoch the trial resumes after (None on a fresh start)."""
        return self.resume.epoch if self.resume is not None else None

    def report(self, epoch: int, *, train_loss: float, val_loss: float, **metrics: float) -> bool:
        """The end of `epoch` (1-based): its mean training loss, validation loss and other
        metrics. Returns True when the trial must stop now (cancelled, stopped early, or the
        loss diverged); the function should then return."""
        if self._over:
            raise _StopTrial
        expected = len(self.history) + 1
        if epoch != expected:
            raise TrainFunctionError(f"ctx.report: expected epoch {expected}, got {epoch}")
        if not self._schedulers:
            raise TrainFunctionError(
                "ctx.report: no scheduler drives the rate; create one with "
                "ctx.lr_scheduler(optimizer) and step it after every optimizer.step()"
            )
        steps = self._steps() or 0
        if steps != epoch * self.steps_per_epoch:
            raise TrainFunctionError(
                f"ctx.report: epoch {epoch} ended after {steps} scheduler steps, but the "
                f"TrainFunction declared {self.steps_per_epoch} per epoch "
                f"({epoch * self.steps_per_epoch} by now); step the scheduler once per "
                "optimizer.step()"
            )
        values = {"train_loss": train_loss, "val_loss": val_loss, **metrics}
        floats = {}
        for name, value in values.items():
            try:
                floats[name] = float(value)
            except (TypeError, ValueError):
                raise TrainFunctionError(
                    f"ctx.report: {name} must be a number, got {type(value).__name__}"
                ) from None
        if self.metric not in floats:
            raise TrainFunctionError(
                f"the job's metric {self.metric!r} was not reported: ctx.report got "
                f"{sorted(floats)}"
            )
        metric_value = floats[self.metric]
        result = EpochResult(
            epoch=epoch,
            step=steps,
            lr=self._schedulers[0].driver.rate(max(steps - 1, 0)),
            train_loss=floats.pop("train_loss"),
            val_loss=floats.pop("val_loss"),
            metrics=floats,
            elapsed_s=time.perf_counter() - self.started,
        )
        self.history.append(result)
        for scheduler in self._schedulers:
            scheduler.on_epoch_end(metric_value)
        state = None
        if self._pending is not None and self.checkpoint_due(epoch):
            user, rng = self._pending
            state = FunctionState(
                epoch=epoch,
                user=user,
                rng=rng,
                history=list(self.history),
                elapsed_s=result.elapsed_s,
            )
        self._pending = None
        stop = bool(self.on_epoch(result, state))
        if self._diverged(result):
            self.status = "diverged"
            stop = True
        elif stop:
            self.status = "stopped" if epoch < self.epochs else "completed"
        self._over = stop or epoch == self.epochs
        return stop

    def _steps(self) -> int | None:
        return self._schedulers[0].last_epoch if self._schedulers else None

    def _diverged(self, result: EpochResult) -> bool:
        """NaN/inf losses, or a training loss above `divergence_factor` x the first epoch's:
        the epoch-level form of the built-in loop's per-step test."""
        if not (math.isfinite(result.train_loss) and math.isfinite(result.val_loss)):
            return True
        first = self.history[0].train_loss
        return result.epoch > 1 and result.train_loss > self.divergence_factor * first > 0


def run_train_function(
    function: TrainFunction,
    context: TrialContext,
) -> TrialContext:
    """Call the user's loop; afterwards `context.status` and `context.history` say how the
    trial went. A function that returns before its last epoch without being told to stop
    fails the trial (TrainFunctionError), as do its own exceptions (they propagate)."""
    with contextlib.suppress(_StopTrial):
        function.train(context)
    if not context._over:
        raise TrainFunctionError(
            f"the train function returned after reporting {len(context.history)} of "
            f"{context.epochs} epochs without being told to stop"
        )
    return context
