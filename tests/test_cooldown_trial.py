"""Cooldown probes and checkpoints inside one trial (no Ray): a probe changes nothing about the
trial it branches from, it anneals to 0 as asked, and a trial resumed from its checkpoint goes on
exactly as the uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from lrtune.schemas.jobs import Cooldown
from lrtune.schemas.trials import EpochResult, ProbeResult, TrialConfig
from lrtune.workers import trial as trial_module
from lrtune.workers.schedule_math import learning_rate
from lrtune.workers.trial import (
    Checkpointing,
    Probing,
    TrialState,
    cooldown_factor,
    load_state,
    run_trial,
)

# Dropout would draw from torch's global RNG between epochs: the cnn checks the RNG hand-back.
WORKLOADS = {
    "digits-mlp": {"name": "digits", "params": {"model": "mlp", "batch_size": 128}},
    "mnist1d-cnn1d": {"name": "mnist1d", "params": {"model": "cnn1d", "n_train": 512}},
}


def config(workload: dict[str, Any], **overrides: Any) -> TrialConfig:
    fields: dict[str, Any] = {
        "workload": workload,
        "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0005},
        "schedule": {"policy": "cosine", "lr": 0.1, "decay_steps": 60},
        "epochs": 5,
        "seed": 7,
        "metric": "val_accuracy",
        "mode": "max",
    }
    return TrialConfig.model_validate(fields | overrides)


def without_time(rows: list[EpochResult]) -> list[dict[str, Any]]:
    return [row.model_dump(exclude={"elapsed_s"}) for row in rows]


@pytest.mark.parametrize("workload", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_a_trial_with_probes_reports_exactly_what_it_reports_without(
    workload: dict[str, Any],
) -> None:
    plain: list[EpochResult] = []
    run_trial(config(workload), plain.append)

    probed: list[EpochResult] = []
    probes: list[ProbeResult] = []
    probing = Probing(
        epochs=frozenset({1, 3}), cooldown=Cooldown(fraction=1.0), on_probe=probes.append
    )
    run_trial(config(workload), probed.append, probing=probing)

    assert without_time(probed) == without_time(plain)
    assert [p.epoch for p in probes] == [1, 3]
    steps = [row.step for row in plain]
    assert [p.step for p in probes] == [steps[0], steps[2]]
    assert [p.cooldown_steps for p in probes] == [steps[0], steps[2]]  # fraction 1: as many
    # The branch trained: its numbers are its own, not the epoch's.
    assert all(math.isfinite(p.val_loss) and p.elapsed_s > 0 for p in probes)
    assert probes[1].val_loss != plain[2].val_loss


def test_probe_length_is_the_fraction_of_steps_so_far_rounded_up() -> None:
    probes: list[ProbeResult] = []
    probing = Probing(
        epochs=frozenset({2}), cooldown=Cooldown(fraction=0.3), on_probe=probes.append
    )
    rows: list[EpochResult] = []
    run_trial(config(WORKLOADS["digits-mlp"], epochs=2), rows.append, probing=probing)
    assert probes[0].cooldown_steps == math.ceil(0.3 * rows[1].step)


def test_the_probe_anneals_from_the_current_rate_to_zero_in_its_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rates the branch's optimizer steps with, read off its param groups."""
    seen: list[float] = []
    real_build = trial_module.build_optimizer
    builds = 0

    def spying_build(*args: Any, **kwargs: Any) -> Any:
        nonlocal builds
        optimizer = real_build(*args, **kwargs)
        builds += 1
        if builds == 2:  # the first is the trial's own, the second the probe's branch
            real_step = optimizer.step

            def step(*a: Any, **k: Any) -> Any:
                seen.append(optimizer.param_groups[0]["lr"])
                return real_step(*a, **k)

            optimizer.step = step  # type: ignore[method-assign]
        return optimizer

    monkeypatch.setattr(trial_module, "build_optimizer", spying_build)
    trial_config = config(WORKLOADS["digits-mlp"], epochs=1)
    probes: list[ProbeResult] = []
    probing = Probing(
        epochs=frozenset({1}),
        cooldown=Cooldown(fraction=1.0, shape="1-sqrt"),
        on_probe=probes.append,
    )
    rows: list[EpochResult] = []
    run_trial(trial_config, rows.append, probing=probing)

    steps = probes[0].cooldown_steps
    start = learning_rate(trial_config.schedule, rows[0].step)
    assert len(seen) == steps
    assert seen[0] == pytest.approx(start)
    assert seen == pytest.approx([start * (1 - math.sqrt(i / steps)) for i in range(steps)])
    assert cooldown_factor("linear", 3, 4) == pytest.approx(0.25)


@pytest.mark.parametrize("workload", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_a_trial_resumed_from_its_checkpoint_reports_the_same_epochs(
    workload: dict[str, Any], tmp_path: Path
) -> None:
    uninterrupted: list[EpochResult] = []
    run_trial(config(workload), uninterrupted.append)

    saved: list[Path] = []

    def save(state: TrialState) -> None:
        path = tmp_path / f"epoch-{state.epoch}.pt"
        state.save(path)
        saved.append(path)

    first: list[EpochResult] = []
    checkpointing = Checkpointing(due=lambda epoch: epoch % 2 == 0, save=save)
    # Stopped after epoch 3 (as a dying worker would): the latest checkpoint is epoch 2's.
    run_trial(
        config(workload),
        lambda row: first.append(row) or row.epoch == 3,
        checkpointing=checkpointing,
    )
    assert [path.name for path in saved] == ["epoch-2.pt"]

    state = load_state(saved[-1])
    resumed: list[EpochResult] = []
    outcome = run_trial(config(workload), resumed.append, resume=state)

    assert [row.epoch for row in resumed] == [3, 4, 5]
    assert without_time(first[:2] + resumed) == without_time(uninterrupted)
    assert outcome.epochs_done == 5 and outcome.status == "completed"
    assert resumed[0].elapsed_s >= state.elapsed_s
