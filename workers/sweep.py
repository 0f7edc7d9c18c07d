"""Training-length sweeps: one WSD trunk, cooled down to every horizon of a job's `horizons`.

A WSD schedule holds its peak rate until its decay starts, and nothing before that depends on
the training length. So the trials of one configuration (warmup, rate, optimizer, seed) at
several lengths are one and the same run up to each one's decay start. The trunk, the longest
horizon, trains once as an ordinary trial; at each shorter horizon's fork step (the first step
where its rate differs from the trunk's: its decay start) a copy of the trunk's state, mid-epoch
or not, is resumed as that horizon's own trial (`run_trial(..., resume=state)`), which trains
its decay to its own length, on the batches the unshared trial would see from there, and is
evaluated at the same epoch ends. A branch is thus exactly (number for number, on a CPU) the
trial that would have run alone, for the cost of its decay.

Branches run in the trunk's process while the trunk waits, and are handed over (`on_branch`)
before the trunk reports the epoch they forked in; that epoch's checkpoint covers them, so a
trunk resumed after a lost worker forks only the horizons after it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lrtune.schemas.schedules import ScheduleSpec, WsdSchedule, parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig, TrialOutcome, TrialOutcomeStatus
from lrtune.workers.rng import rng_state, set_rng_state
from lrtune.workers.schedule_math import learning_rates
from lrtune.workers.train_function import FunctionState
from lrtune.workers.trial import Checkpointing, Forking, Report, TrialState, run_trial
from pydantic import ValidationError


@dataclass(frozen=True)
class Horizon:
    """One length of a sweep shorter than the trunk: its trial's key and schedule (or why the
    sampled point makes no valid schedule at this length)."""

    epochs: int
    trial_key: str
    schedule: ScheduleSpec | None
    schedule_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "trial_key": self.trial_key,
            "schedule": self.schedule.model_dump(mode="json") if self.schedule else None,
            "schedule_error": self.schedule_error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Horizon:
        schedule = data.get("schedule")
        return cls(
            epochs=int(data["epochs"]),
            trial_key=str(data["trial_key"]),
            schedule=parse_schedule(schedule) if schedule is not None else None,
            schedule_error=data.get("schedule_error"),
        )


@dataclass(frozen=True)
class Branch:
    """A horizon's finished run: every epoch of its curve (the trunk's before the fork, then its
    own), how it ended, and the trunk's step it forked at (None: it never forked)."""

    horizon: Horizon
    status: TrialOutcomeStatus
    history: list[EpochResult]
    fork_step: int | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon.to_json(),
            "status": self.status,
            # Python floats, not JSON: a diverged epoch's NaN must come back a NaN.
            "history": [result.model_dump() for result in self.history],
            "fork_step": self.fork_step,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Branch:
        return cls(
            horizon=Horizon.from_json(data["horizon"]),
            status=data["status"],
            history=[EpochResult.model_validate(result) for result in data["history"]],
            fork_step=data["fork_step"],
            error=data.get("error"),
        )


def sweep_trial_config(
    config: dict[str, Any], horizons: Sequence[int], *, steps_per_epoch: int
) -> dict[str, Any]:
    """A wsd trial's Tune config as a sweep's trunk: its `horizons` (the shorter lengths, to
    fork), and in the point it records, its length (`horizon_epochs`) and `trunk` key."""
    trunk = parse_schedule(config["schedule"])
    planned = plan_horizons(config["trial_key"], trunk, horizons, steps_per_epoch=steps_per_epoch)
    point = {**config["point"], "horizon_epochs": horizons[-1], "trunk": config["trial_key"]}
    return {**config, "point": point, "horizons": [h.to_json() for h in planned]}


def horizon_schedule(trunk: WsdSchedule, total_steps: int) -> ScheduleSpec:
    """The trunk's schedule at another length: the same warmup, rate, shape and floor; the decay
    the same share of the length when the trunk's has a `decay_frac`, else as many steps."""
    fields = trunk.model_dump()
    fields["total_steps"] = total_steps
    if trunk.decay_frac is not None:
        fields["decay_steps"] = None  # round(decay_frac x total_steps) again
    return parse_schedule(fields)


def plan_horizons(
    trunk_key: str, trunk: ScheduleSpec, horizons: Sequence[int], *, steps_per_epoch: int
) -> list[Horizon]:
    """The horizons shorter than the trunk's (the last of `horizons` is the trunk's own
    length), each keyed `<trunk key>-h<epochs>`."""
    if not isinstance(trunk, WsdSchedule):
        raise ValueError(f"only wsd trials share a trunk, not {trunk.policy}")
    planned = []
    for epochs in horizons[:-1]:
        key = f"{trunk_key}-h{epochs}"
        try:
            schedule = horizon_schedule(trunk, epochs * steps_per_epoch)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"][1:]) or "schedule"
            planned.append(Horizon(epochs, key, None, f"{where}: {problem['msg']}"))
            continue
        planned.append(Horizon(epochs, key, schedule))
    return planned


def fork_step(trunk: ScheduleSpec, branch: ScheduleSpec) -> int:
    """The first step at which `branch`'s rate differs from the trunk's (its decay start for
    two WSD lengths), or its whole length when they never differ: up to there the two trials
    are one. Computed, not derived from the fields, so a fork is never taken early."""
    total = branch.total_steps if isinstance(branch, WsdSchedule) else 0
    steps = np.arange(total, dtype=np.int64)
    differs = np.flatnonzero(learning_rates(branch, steps) != learning_rates(trunk, steps))
    return int(differs[0]) if differs.size else total


def run_sweep(
    config: TrialConfig,
    horizons: Sequence[Horizon],
    report: Report,
    *,
    on_branch: Callable[[Branch], None],
    checkpointing: Checkpointing | None = None,
    resume: TrialState | FunctionState | None = None,
) -> TrialOutcome:
    """Train the trunk (`config`: the longest horizon, reported through `report` as any trial)
    and every shorter horizon forked from it, each handed to `on_branch` when it has run.

    A horizon whose schedule is invalid is a failed branch. When the trunk diverges before a
    horizon's fork, that horizon's own trial would have diverged identically (the same steps
    at the same rates): it gets the trunk's curve, diverged. A stopped trunk (cancelled)
    leaves the horizons it had not forked unrun. `resume` is the trunk's checkpoint: the
    horizons forked before it were handed over before it was taken.
    """
    resumed_at = resume.step if isinstance(resume, TrialState) else 0
    forks: dict[int, list[Horizon]] = {}
    for horizon in horizons:
        if horizon.schedule is None:
            error = f"invalid schedule for this horizon: {horizon.schedule_error}"
            on_branch(Branch(horizon, "failed", [], None, error))
            continue
        step = fork_step(config.schedule, horizon.schedule)
        if step == 0 and resume is None:
            on_branch(_branch(config, horizon, None))  # nothing to share: it runs alone
        elif step > resumed_at:
            forks.setdefault(step, []).append(horizon)

    def on_fork(state: TrialState) -> None:
        saved = rng_state()  # each branch seeds and draws; the trunk goes on with its own
        for horizon in forks.pop(state.step):
            on_branch(_branch(config, horizon, copy.deepcopy(state)))
        set_rng_state(saved)

    trunk_history: list[EpochResult] = []

    def report_trunk(result: EpochResult) -> bool | None:
        trunk_history.append(result)
        return report(result)

    outcome = run_trial(
        config,
        report_trunk,
        checkpointing=checkpointing,
        resume=resume,
        forking=Forking(steps=frozenset(forks), on_fork=on_fork),
    )
    if outcome.status == "diverged":
        history = [*(resume.history if isinstance(resume, TrialState) else []), *trunk_history]
        for step in sorted(forks):
            for horizon in forks.pop(step):
                on_branch(Branch(horizon, "diverged", list(history), None))
    return outcome


def _branch(config: TrialConfig, horizon: Horizon, state: TrialState | None) -> Branch:
    """The horizon's trial, resumed from the trunk's `state` (from the start without one)."""
    assert horizon.schedule is not None
    branch_config = config.model_copy(
        update={"epochs": horizon.epochs, "schedule": horizon.schedule}
    )
    before = list(state.history) if state is not None else []
    own: list[EpochResult] = []
    fork = state.step if state is not None else None
    try:
        outcome = run_trial(branch_config, own.append, resume=state)
    except Exception as error:  # recorded on the horizon's trial; the trunk goes on
        return Branch(horizon, "failed", before + own, fork, f"{type(error).__name__}: {error}")
    return Branch(horizon, outcome.status, before + own, fork)
