"""The trial function: seeding, the rate per step and group, divergence, stopping, optimizers."""

from __future__ import annotations

import importlib
import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, OptimizerSpec, TrialConfig
from lrtune.workers import trial as trial_module
from lrtune.workers.schedule_math import learning_rate, learning_rates
from lrtune.workers.trial import run_trial, run_trials_sequentially
from lrtune.workers.workloads import Workload, WorkloadError, build_workload
from pydantic import ValidationError

from tests.conftest import use_code_path

DIGITS_MLP = {"name": "digits", "params": {"model": "mlp", "batch_size": 128}}


def config(**overrides: Any) -> TrialConfig:
    fields: dict[str, Any] = {
        "workload": DIGITS_MLP,
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "schedule": {"policy": "fixed", "lr": 0.05},
        "epochs": 2,
        "seed": 0,
    }
    return TrialConfig.model_validate(fields | overrides)


def collect(trial_config: TrialConfig) -> tuple[list[EpochResult], Any]:
    rows: list[EpochResult] = []
    outcome = run_trial(trial_config, rows.append)
    return rows, outcome


def without_time(rows: list[EpochResult]) -> list[dict[str, Any]]:
    return [row.model_dump(exclude={"elapsed_s"}) for row in rows]


def test_same_config_and_seed_give_identical_metrics() -> None:
    cnn = {"name": "digits", "params": {"model": "cnn", "batch_size": 128}}
    first, _ = collect(config(workload=cnn, seed=3))
    second, _ = collect(config(workload=cnn, seed=3))
    other_seed, _ = collect(config(workload=cnn, seed=4))

    assert without_time(first) == without_time(second)
    assert without_time(first) != without_time(other_seed)


def test_each_epoch_reports_the_rate_of_its_last_step() -> None:
    schedule = {"policy": "cosine", "lr": 0.1, "decay_steps": 33, "alpha": 0.01}
    rows, outcome = collect(config(schedule=schedule, epochs=3))

    spec = parse_schedule(schedule)
    steps_per_epoch = math.ceil(1347 / 128)
    assert [row.epoch for row in rows] == [1, 2, 3]
    assert [row.step for row in rows] == [steps_per_epoch * e for e in (1, 2, 3)]
    for row in rows:
        assert row.lr == pytest.approx(learning_rate(spec, row.step - 1), rel=1e-12)
    assert rows[0].lr > rows[1].lr > rows[2].lr  # the decay is really followed
    assert outcome.status == "completed"
    assert outcome.epochs_done == 3 and outcome.steps_done == 3 * steps_per_epoch
    assert outcome.last == rows[-1]
    accuracies = [row.metrics["val_accuracy"] for row in rows]
    assert outcome.metric == "val_accuracy"
    assert outcome.best_metric == max(accuracies)
    assert outcome.best_epoch == accuracies.index(max(accuracies)) + 1


# A model whose loss is a + b: the gradient of each is 1 at every step, so after plain SGD
# a = 1 - sum of the rates used and b = 1 - lr_mult x that sum, which shows the rate applied at
# every single step and the multiplier of each group.
DRIFT_MODULE = """
import torch
from torch import nn
from lrtune.workers.workloads import TensorBatches, Workload

BUILT = []


class Drift(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(1, dtype=torch.float64))
        self.b = nn.Parameter(torch.ones(1, dtype=torch.float64))

    def forward(self, x):
        return (self.a + self.b).expand(len(x))


def make(n=10, batch_size=4):
    model = Drift()
    BUILT.append(model)
    x, y = torch.zeros(n, 1), torch.zeros(n)
    return Workload(
        model=model,
        train_loader=TensorBatches(x, y, batch_size=batch_size, shuffle=True),
        val_loader=TensorBatches(x, y, batch_size=n, shuffle=False),
        loss_fn=lambda outputs, targets: outputs.mean(),
        metrics={},
    )
"""


@pytest.fixture
def drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "drift_workload.py").write_text(textwrap.dedent(DRIFT_MODULE))
    use_code_path(monkeypatch, tmp_path)
    yield importlib.import_module("drift_workload")
    del sys.modules["drift_workload"]


@pytest.mark.parametrize("lr_mult", [0.0, 0.5, 3.0])
def test_schedule_drives_every_step_and_groups_get_their_multiplier(
    drift: Any, lr_mult: float
) -> None:
    schedule = {"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 2}
    trial_config = config(
        workload={"entrypoint": "drift_workload:make", "params": {"n": 10, "batch_size": 4}},
        optimizer={"name": "sgd"},
        schedule=schedule,
        param_groups=[{"match": "b", "lr_mult": lr_mult}],
        epochs=3,
    )
    rows, outcome = collect(trial_config)

    steps = 3 * 3
    rates = learning_rates(parse_schedule(schedule), np.arange(steps))
    model = drift.BUILT[-1]
    assert outcome.status == "completed" and outcome.steps_done == steps
    assert outcome.metric == "val_loss"  # a user workload's default
    assert model.a.item() == pytest.approx(1 - rates.sum(), abs=1e-12)
    assert model.b.item() == pytest.approx(1 - lr_mult * rates.sum(), abs=1e-12)
    assert [row.lr for row in rows] == pytest.approx([rates[2], rates[5], rates[8]])


def test_param_group_rules_match_builtin_layer_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # Multiplier 0 on hidden.*: only head.* may move.
    models: list[torch.nn.Module] = []

    def capturing_build(*args: Any, **kwargs: Any) -> Workload:
        workload = build_workload(*args, **kwargs)
        models.append(workload.model)
        return workload

    monkeypatch.setattr(trial_module, "build_training", capturing_build)
    before = build_workload("digits", DIGITS_MLP["params"], seed=0).model.state_dict()
    _, outcome = collect(config(param_groups=[{"match": "hidden.", "lr_mult": 0.0}], epochs=1))

    assert outcome.status == "completed"
    after = models[-1].state_dict()
    assert set(before) == {"hidden.1.weight", "hidden.1.bias", "head.weight", "head.bias"}
    for name, value in before.items():
        assert torch.equal(value, after[name]) == name.startswith("hidden."), name


def test_absurd_rate_ends_diverged_without_raising() -> None:
    rows, outcome = collect(config(schedule={"policy": "fixed", "lr": 1e4}, epochs=5))

    assert outcome.status == "diverged"
    assert outcome.epochs_done == len(rows) < 5
    last = rows[-1]
    assert last.step < len(rows) * math.ceil(1347 / 128)  # stopped mid-epoch
    assert not math.isfinite(last.train_loss) or last.train_loss > 4 * math.log(10)


def test_report_returning_true_stops_the_trial() -> None:
    rows: list[EpochResult] = []

    def stop_after_first(row: EpochResult) -> bool:
        rows.append(row)
        return True

    outcome = run_trial(config(epochs=3), stop_after_first)
    assert outcome.status == "stopped"
    assert outcome.epochs_done == len(rows) == 1


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"name": "adam", "betas": [0.9, 0.99]},
        {"name": "adamw", "weight_decay": 0.01, "eps": 1e-7},
    ],
)
def test_every_optimizer_trains(optimizer: dict[str, Any]) -> None:
    rate = 0.1 if optimizer["name"] == "sgd" else 3e-3
    rows, outcome = collect(
        config(optimizer=optimizer, schedule={"policy": "fixed", "lr": rate}, epochs=2)
    )
    assert outcome.status == "completed"
    assert rows[1].train_loss < rows[0].train_loss
    assert rows[-1].metrics["val_accuracy"] > 0.5


def test_min_mode_metric_and_unknown_metric() -> None:
    _, outcome = collect(config(metric="val_loss", epochs=2))
    assert outcome.metric == "val_loss"
    assert outcome.last is not None
    assert outcome.best_metric is not None and outcome.best_metric <= outcome.last.val_loss

    with pytest.raises(WorkloadError, match="'val_f1' is not reported"):
        run_trial(config(metric="val_f1"), lambda row: None)


def test_run_trials_sequentially_records_failures_as_data() -> None:
    seen: list[tuple[int, int]] = []
    outcomes = run_trials_sequentially(
        [
            config(epochs=1),
            config(workload={"entrypoint": "no_such_module_lrtune:make"}, epochs=1),
            config(epochs=2, seed=1),
        ],
        on_epoch=lambda index, row: seen.append((index, row.epoch)),
    )

    assert [o.status for o in outcomes] == ["completed", "failed", "completed"]
    assert outcomes[1].error is not None and "no_such_module_lrtune" in outcomes[1].error
    assert seen == [(0, 1), (2, 1), (2, 2)]
    assert all(o.elapsed_s > 0 for o in outcomes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this worker has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no usable CUDA device"):
        run_trial(config(device="cuda"), lambda row: None)


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "rmsprop"},
        {"name": "sgd", "nesterov": True},
        {"name": "sgd", "momentum": 1.0},
        {"name": "adam", "momentum": 0.9},
        {"name": "sgd", "weight_decay": -1e-4},
        {"name": "adam", "betas": [0.9, 1.0]},
        {"name": "adamw", "eps": 0.0},
        {"name": "sgd", "lr": 0.1},
    ],
)
def test_optimizer_spec_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OptimizerSpec.model_validate(bad)


def test_optimizer_spec_example_from_the_contract() -> None:
    spec = OptimizerSpec.model_validate({"name": "sgd", "momentum": 0.9, "weight_decay": 0.0005})
    assert (spec.name, spec.momentum, spec.nesterov, spec.weight_decay) == (
        "sgd",
        0.9,
        False,
        0.0005,
    )


# --- plateau: the rate follows the job's metric, fed once per epoch ---------------------------


def test_plateau_reduces_the_rate_the_optimizer_uses_from_the_epochs_metric(drift: Any) -> None:
    # The drift model's val_loss falls every epoch, which in mode "max" is never an
    # improvement: after patience + 1 such epochs the rate is halved, and so on.
    schedule = {"policy": "plateau", "lr": 0.01, "mode": "max", "patience": 1, "factor": 0.5}
    rows, outcome = collect(
        config(
            workload={"entrypoint": "drift_workload:make", "params": {"n": 10, "batch_size": 4}},
            optimizer={"name": "sgd"},
            schedule=schedule,
            metric="val_loss",
            mode="max",
            epochs=6,
        )
    )
    assert outcome.status == "completed"
    values = [row.val_loss for row in rows]
    ends = [row.step for row in rows]
    rates = learning_rates(
        parse_schedule(schedule), np.arange(ends[-1]), metrics=values, epoch_ends=ends
    )
    # 3 steps an epoch; epoch 1 sets the best, 2 and 3 are bad: halved from epoch 4 on.
    assert rates[::3].tolist() == [0.01, 0.01, 0.01, 0.005, 0.005, 0.0025]
    assert [row.lr for row in rows] == rates[2::3].tolist()
    # Plain SGD on a + b moves a by the sum of the rates it was given, step by step.
    assert drift.BUILT[-1].a.item() == pytest.approx(1 - rates.sum(), abs=1e-12)


def _plateau_digits(**overrides: Any) -> TrialConfig:
    # A relative threshold of 0.5 makes every epoch after the first a bad one for accuracy.
    schedule = {"policy": "plateau", "lr": 0.05, "mode": "max", "patience": 1, "threshold": 0.5}
    return config(schedule=schedule, metric="val_accuracy", mode="max", epochs=5, **overrides)


def test_plateau_trial_resumes_from_a_checkpoint_with_its_metrics(tmp_path: Path) -> None:
    uninterrupted, _ = collect(_plateau_digits())
    assert uninterrupted[0].lr > uninterrupted[-1].lr  # it was reduced
    checkpoint = tmp_path / "epoch-2.pt"
    first: list[EpochResult] = []
    run_trial(
        _plateau_digits(),
        lambda row: first.append(row) or row.epoch == 3,
        checkpointing=trial_module.Checkpointing(
            due=lambda epoch: epoch == 2, save=lambda state: state.save(checkpoint)
        ),
    )
    state = trial_module.load_state(checkpoint)
    assert state.schedule["metrics"] == [row.metrics["val_accuracy"] for row in first[:2]]
    resumed: list[EpochResult] = []
    run_trial(_plateau_digits(), resumed.append, resume=state)
    assert without_time(first[:2] + resumed) == without_time(uninterrupted)


def test_plateau_must_watch_the_metric_in_its_mode() -> None:
    # val_accuracy is a "max" metric; a plateau in mode "min" would cut the rate as it improves.
    schedule = {"policy": "plateau", "lr": 0.05, "mode": "min"}
    with pytest.raises(ValueError, match="plateau watches 'val_accuracy', whose mode is 'max'"):
        run_trial(config(schedule=schedule, metric="val_accuracy", mode="max"), lambda r: None)
