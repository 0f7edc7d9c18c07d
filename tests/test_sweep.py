"""Training-length sweeps in one process: every horizon forked from the WSD trunk equals the
trial that would have run alone, number for number, and a resumed trunk changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lrtune.schemas.schedules import WsdSchedule, parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.workers.schedule_math import learning_rates
from lrtune.workers.sweep import Branch, fork_step, horizon_schedule, plan_horizons, run_sweep
from lrtune.workers.trial import Checkpointing, TrialState, load_state, run_trial

DIGITS_MLP = {"name": "digits", "params": {"model": "mlp", "batch_size": 256}}
# 6 steps an epoch on digits; decay_frac 0.3 starts every decay mid-epoch.
STEPS_PER_EPOCH = 6
HORIZONS = [1, 2, 3]


def trunk_config(**schedule: Any) -> TrialConfig:
    spec = {
        "policy": "wsd",
        "lr": 0.2,
        "total_steps": HORIZONS[-1] * STEPS_PER_EPOCH,
        "decay_frac": 0.3,
        "warmup_steps": 3,
        **schedule,
    }
    return TrialConfig.model_validate(
        {
            "workload": DIGITS_MLP,
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "schedule": spec,
            "epochs": HORIZONS[-1],
            "seed": 5,
        }
    )


def without_time(rows: list[EpochResult]) -> list[dict[str, Any]]:
    return [row.model_dump(exclude={"elapsed_s"}) for row in rows]


def unshared(config: TrialConfig, epochs: int, schedule: Any) -> list[EpochResult]:
    rows: list[EpochResult] = []
    run_trial(config.model_copy(update={"epochs": epochs, "schedule": schedule}), rows.append)
    return rows


def test_horizon_schedules_share_the_trunk_up_to_their_decay() -> None:
    trunk = trunk_config().schedule
    assert isinstance(trunk, WsdSchedule)
    horizons = plan_horizons("wsd-0", trunk, HORIZONS, steps_per_epoch=STEPS_PER_EPOCH)
    assert [h.trial_key for h in horizons] == ["wsd-0-h1", "wsd-0-h2"]
    for horizon in horizons:
        schedule = horizon.schedule
        assert isinstance(schedule, WsdSchedule)
        assert schedule.total_steps == horizon.epochs * STEPS_PER_EPOCH
        assert schedule.decay_steps == round(0.3 * schedule.total_steps)
        # The decay's first step is still at lr (1 - sqrt(0)): the rates part one step later.
        fork = fork_step(trunk, schedule)
        assert fork == schedule.total_steps - schedule.decay_steps + 1
        steps = list(range(fork + 1))
        shared = learning_rates(schedule, steps) == learning_rates(trunk, steps)
        assert shared[:-1].all() and not shared[-1]
    # An absolute decay stays as many steps at every length.
    fixed = horizon_schedule(parse_schedule({**trunk.model_dump(), "decay_frac": None}), 24)
    assert isinstance(fixed, WsdSchedule) and fixed.decay_steps == trunk.decay_steps


def test_forked_horizons_equal_their_unshared_trials() -> None:
    config = trunk_config()
    assert isinstance(config.schedule, WsdSchedule)
    horizons = plan_horizons("wsd-0", config.schedule, HORIZONS, steps_per_epoch=STEPS_PER_EPOCH)
    trunk: list[EpochResult] = []
    branches: list[Branch] = []
    outcome = run_sweep(config, horizons, trunk.append, on_branch=branches.append)

    assert outcome.status == "completed"
    assert without_time(trunk) == without_time(unshared(config, 3, config.schedule))
    assert [b.horizon.epochs for b in branches] == [1, 2]
    for branch in branches:
        assert branch.status == "completed" and branch.fork_step is not None
        assert branch.fork_step % STEPS_PER_EPOCH != 0  # forked mid-epoch
        alone = unshared(config, branch.horizon.epochs, branch.horizon.schedule)
        assert without_time(branch.history) == without_time(alone)
        assert len(branch.history) == branch.horizon.epochs


def test_a_trunk_resumed_from_its_checkpoint_forks_the_rest_identically(tmp_path: Path) -> None:
    config = trunk_config()
    assert isinstance(config.schedule, WsdSchedule)
    horizons = plan_horizons("wsd-0", config.schedule, HORIZONS, steps_per_epoch=STEPS_PER_EPOCH)
    whole: list[Branch] = []
    run_sweep(config, horizons, lambda row: None, on_branch=whole.append)

    # The trunk dies after its epoch-1 checkpoint (as after kill -9) and is resumed from it.
    checkpoint = tmp_path / "trunk.pt"
    before: list[Branch] = []
    run_sweep(
        config,
        horizons,
        lambda row: row.epoch == 2,
        on_branch=before.append,
        checkpointing=Checkpointing(
            due=lambda epoch: epoch == 1, save=lambda state: state.save(checkpoint)
        ),
    )
    state = load_state(checkpoint)
    assert isinstance(state, TrialState)
    after: list[Branch] = []
    run_sweep(config, horizons, lambda row: None, on_branch=after.append, resume=state)

    forked_by_epoch_1 = [b for b in before if b.fork_step is not None and b.fork_step <= 6]
    assert [b.horizon.epochs for b in forked_by_epoch_1] == [1]
    assert [b.horizon.epochs for b in after] == [2]
    for branch, reference in zip(forked_by_epoch_1 + after, whole, strict=True):
        assert without_time(branch.history) == without_time(reference.history)


def test_horizons_not_forked_when_the_trunk_diverges_diverge_with_it() -> None:
    config = trunk_config(lr=1e4)
    assert isinstance(config.schedule, WsdSchedule)
    horizons = plan_horizons("wsd-0", config.schedule, HORIZONS, steps_per_epoch=STEPS_PER_EPOCH)
    branches: list[Branch] = []
    outcome = run_sweep(config, horizons, lambda row: None, on_branch=branches.append)
    assert outcome.status == "diverged"
    assert [b.status for b in branches] == ["diverged"] * 2
    alone = unshared(config, 2, horizons[1].schedule)
    assert without_time(branches[1].history) == without_time(alone)


def test_a_horizon_too_short_for_the_warmup_fails_with_the_reason() -> None:
    config = trunk_config(warmup_steps=8)
    assert isinstance(config.schedule, WsdSchedule)
    horizons = plan_horizons("wsd-0", config.schedule, HORIZONS, steps_per_epoch=STEPS_PER_EPOCH)
    assert horizons[0].schedule is None and "total_steps" in str(horizons[0].schedule_error)
    branches: list[Branch] = []
    run_sweep(config, horizons[:1], lambda row: None, on_branch=branches.append)
    assert branches[0].status == "failed" and "invalid schedule" in str(branches[0].error)


@pytest.mark.parametrize("policy", [{"policy": "cosine", "lr": 0.1, "decay_steps": 10}])
def test_only_wsd_shares_a_trunk(policy: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="only wsd"):
        plan_horizons("x", parse_schedule(policy), [1, 2], steps_per_epoch=3)
