"""Snapshot ensembles (Huang et al. 2017) of clr and sgdr trials: the cycle ends they are taken
at, the ensemble metric against one recomputed by hand from the saved snapshots, a resumed trial
keeping its snapshots, the job spec's validation, the recommendation and the exported code."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.service.recommendations import job_recommendation
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.code_export import pytorch_snippet
from lrtune.workers.experiment import inspect_training
from lrtune.workers.recommendation import TrialSummary, build_recommendation
from lrtune.workers.schedule_math import cycle_ends, learning_rates
from lrtune.workers.trial import Checkpointing, TrialState, load_state, run_trial
from lrtune.workers.workloads import Workload, WorkloadError, build_training
from pydantic import ValidationError

from tests.conftest import use_code_path

DIGITS = {"name": "digits", "params": {"model": "mlp", "batch_size": 128}}
# digits mlp at batch 128: 11 steps an epoch (epochs end after steps 11, 22, 33, 44); restarts
# every 8 steps, so the cycles end mid-epoch, after steps 8, 16, 24, 32 and 40.
SGDR = {"policy": "sgdr", "eta_max": 0.2, "t_0": 8, "t_mult": 1}


def trial_config(**overrides: Any) -> TrialConfig:
    fields: dict[str, Any] = {
        "workload": DIGITS,
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "schedule": SGDR,
        "epochs": 4,
        "seed": 3,
        "metric": "ensemble_val_accuracy",
        "snapshots": 3,
    }
    return TrialConfig.model_validate(fields | overrides)


@pytest.mark.parametrize(
    "spec",
    [
        {"policy": "sgdr", "eta_max": 0.1, "t_0": 7, "t_mult": 2},
        {"policy": "sgdr", "eta_max": 0.1, "t_0": 5, "t_mult": 3, "warmup_steps": 4},
        {"policy": "sgdr", "eta_max": 0.1, "t_0": 5, "t_mult": 1.5, "warmup_steps": 3},
        {"policy": "sgdr", "eta_max": 0.1, "t_0": 10, "t_mult": 1.1},
        {"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 5, "warmup_steps": 2},
        {"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 3, "mode": "triangular2"},
    ],
)
def test_cycle_ends_are_where_the_rate_restarts_or_is_back_at_base_lr(
    spec: dict[str, Any],
) -> None:
    schedule = parse_schedule(spec)
    total = 300
    ends = cycle_ends(schedule, total)
    rates = learning_rates(schedule, np.arange(total + 1))
    warmup = schedule.warmup_steps
    if spec["policy"] == "sgdr":
        # A restart: the rate jumps up from the previous step's (within the warmup it climbs
        # every step, so only steps after it count).
        restarts = [t for t in range(warmup + 1, total + 1) if rates[t] > rates[t - 1]]
        assert ends == restarts
    else:
        at_base = [t for t in range(warmup + 1, total + 1) if rates[t] == spec["base_lr"]]
        assert ends == at_base
    assert ends and all(0 < end <= total for end in ends)
    # The exported code finds the same ends.
    namespace: dict[str, Any] = {}
    exec(pytorch_snippet_cycle_ends(schedule), namespace)
    assert sorted(namespace["lrtune_cycle_ends"](total)) == ends


def pytorch_snippet_cycle_ends(schedule: Any) -> str:
    """The exported snippet's snapshot part alone (the rest needs an optimizer)."""
    code = pytorch_snippet(schedule, snapshots=2)
    start = code.index("# Snapshot ensemble")
    return "import torch\n" + code[start:]


def by_hand(workload: Workload, snapshots: list[dict[str, Any]]) -> tuple[float, float]:
    """The ensemble's val loss and accuracy, from the snapshots alone: each loaded into the
    workload's model, softmax probabilities averaged in float64, the NLL and argmax taken of
    the average."""
    model = workload.model
    probabilities: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for index, snapshot in enumerate(snapshots):
        model.load_state_dict(snapshot)
        model.eval()
        batches = []
        with torch.no_grad():
            for inputs, batch_targets in workload.val_loader:
                batches.append(torch.softmax(model(inputs).double(), dim=-1).numpy())
                if index == 0:
                    targets.append(batch_targets.numpy())
        probabilities.append(np.concatenate(batches))
    average = np.mean(probabilities, axis=0)
    target = np.concatenate(targets)
    loss = float(-np.mean(np.log(average[np.arange(len(target)), target])))
    accuracy = float(np.mean(average.argmax(axis=1) == target))
    return loss, accuracy


def test_the_ensemble_metric_equals_one_recomputed_by_hand_from_the_saved_snapshots() -> None:
    states: list[TrialState] = []
    rows: list[EpochResult] = []
    checkpointing = Checkpointing(due=lambda epoch: True, save=states.append)  # type: ignore[arg-type]
    outcome = run_trial(trial_config(), rows.append, checkpointing=checkpointing)
    workload = build_training("digits", DIGITS["params"], seed=0)
    assert isinstance(workload, Workload)

    # Kept at the epochs' ends: [8], [8, 16], [16, 24, 32], [24, 32, 40].
    assert [row.step for row in rows] == [11, 22, 33, 44]
    assert [len(state.snapshots) for state in states] == [1, 2, 3, 3]
    for state, row in zip(states, rows, strict=True):
        loss, accuracy = by_hand(workload, state.snapshots)
        assert row.metrics["ensemble_val_loss"] == pytest.approx(loss, rel=1e-5)
        assert row.metrics["ensemble_val_accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert state.ensemble == {
            "ensemble_val_loss": row.metrics["ensemble_val_loss"],
            "ensemble_val_accuracy": row.metrics["ensemble_val_accuracy"],
        }
    # Epoch 3 took two snapshots and dropped the oldest; epoch 4 took one: its ensemble moved.
    assert states[3].snapshots[0] is states[2].snapshots[1]
    assert rows[3].metrics != rows[2].metrics
    # The job's metric is the ensemble's; the single model's is still there beside it.
    assert outcome.metric == "ensemble_val_accuracy"
    assert outcome.best_metric == max(row.metrics["ensemble_val_accuracy"] for row in rows)
    assert all("val_accuracy" in row.metrics for row in rows)


def test_no_ensemble_before_the_first_cycle_end_and_a_snapshot_is_the_model_at_its_step() -> None:
    rows: list[EpochResult] = []
    states: list[TrialState] = []
    # t_0 = 22: cycles end after steps 22 and 44, with epochs 2 and 4.
    outcome = run_trial(
        trial_config(schedule={**SGDR, "t_0": 22}, metric="ensemble_val_loss"),
        rows.append,
        # A copy: the state holds the live model's tensors until it is written out.
        checkpointing=Checkpointing(
            due=lambda epoch: True,
            save=lambda state: states.append(copy.deepcopy(state)),  # type: ignore[arg-type]
        ),
    )
    assert ["ensemble_val_loss" in row.metrics for row in rows] == [False, True, True, True]
    assert outcome.best_epoch in (2, 3, 4)
    assert [len(state.snapshots) for state in states] == [0, 1, 1, 2]
    for state in (states[1], states[3]):
        assert state.snapshots[-1].keys() == state.model.keys()
        assert all(torch.equal(state.snapshots[-1][k], v) for k, v in state.model.items())


def test_a_trial_resumed_from_its_checkpoint_keeps_its_snapshots(tmp_path: Path) -> None:
    uninterrupted: list[EpochResult] = []
    run_trial(trial_config(), uninterrupted.append)

    saved: list[Path] = []

    def save(state: TrialState) -> None:
        path = tmp_path / f"epoch-{state.epoch}.pt"
        state.save(path)
        saved.append(path)

    first: list[EpochResult] = []
    # Killed after epoch 3 (a kill -9 loses what was not checkpointed): epoch 2's is the latest.
    run_trial(
        trial_config(),
        lambda row: first.append(row) or row.epoch == 3,
        checkpointing=Checkpointing(due=lambda epoch: epoch == 2, save=save),  # type: ignore[arg-type]
    )
    state = load_state(saved[-1])
    assert isinstance(state, TrialState) and len(state.snapshots) == 2

    resumed: list[EpochResult] = []
    run_trial(trial_config(), resumed.append, resume=state)
    assert [row.epoch for row in resumed] == [3, 4]
    assert [row.metrics for row in first[:2] + resumed] == [row.metrics for row in uninterrupted]
    # Epoch 3's ensemble (after step 32) has a member from before the checkpoint (step 16):
    # without it the resumed trial would report another value.
    assert "ensemble_val_accuracy" in resumed[0].metrics


def test_snapshots_on_a_non_cyclic_policy_or_out_of_bounds_are_refused() -> None:
    with pytest.raises(ValidationError, match="cyclic policies"):
        trial_config(schedule={"policy": "cosine", "lr": 0.1, "decay_steps": 50})
    for bad in (1, 21, 2.5):
        with pytest.raises(ValidationError):
            trial_config(snapshots=bad)
    with pytest.raises(ValidationError, match="needs snapshots"):
        trial_config(snapshots=None)


def _error_paths(answer: Any) -> list[str]:
    assert answer.status_code == 422, answer.text
    return [f["path"] for f in answer.json()["error"]["fields"]]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"snapshots": 3, "policies": ["fixed", "clr"]}, "snapshots"),
        ({"snapshots": 3, "policies": ["cosine"]}, "snapshots"),
        ({"snapshots": 1, "policies": ["clr"]}, "snapshots"),
        ({"snapshots": 21, "policies": ["sgdr"]}, "snapshots"),
        ({"snapshots": "three", "policies": ["sgdr"]}, "snapshots"),
        # An ensemble metric needs snapshots, and a metric the workload reports.
        ({"metric": {"name": "ensemble_val_accuracy"}, "policies": ["clr"]}, "metric"),
        ({"snapshots": 3, "metric": {"name": "ensemble_bleu"}, "policies": ["clr"]}, "metric"),
        # Early stopping has no ensemble to judge before a trial's first cycle end.
        (
            {
                "snapshots": 3,
                "metric": {"name": "ensemble_val_accuracy"},
                "policies": ["clr"],
                "early_stopping": {"kind": "asha"},
            },
            "early_stopping.kind",
        ),
    ],
)
def test_bad_snapshot_specs_are_422_naming_the_field(
    api_client: TestClient, job_body: dict[str, Any], change: dict[str, Any], path: str
) -> None:
    assert path in _error_paths(api_client.post("/v1/jobs", json={**job_body, **change}))


def test_an_ensemble_metric_is_accepted_with_snapshots_and_takes_its_metric_mode(
    api_client: TestClient, job_body: dict[str, Any]
) -> None:
    body = {
        **job_body,
        "snapshots": 4,
        "policies": ["clr", "sgdr"],
        "metric": {"name": "ensemble_val_accuracy"},
    }
    answer = api_client.post("/v1/jobs", json=body)
    assert answer.status_code == 201, answer.text
    spec = answer.json()["spec"]
    assert spec["snapshots"] == 4 and spec["metric"] == {
        "name": "ensemble_val_accuracy",
        "mode": "max",
    }
    loss = JobSpec.model_validate({**body, "metric": {"name": "ensemble_val_loss"}})
    assert loss.metric_mode == "min"


def _summary(trial_id: str, seed: int, single: float, ensemble: float) -> TrialSummary:
    return TrialSummary(
        trial_id=trial_id,
        policy="sgdr",
        schedule=parse_schedule(SGDR),
        seed=seed,
        metric_values=[single],
        final_values={"val_accuracy": single, "ensemble_val_accuracy": ensemble},
    )


def test_the_recommendation_says_by_how_much_the_ensemble_beats_the_single_model() -> None:
    trials = [
        _summary("1", 1, 0.90, 0.93),
        _summary("2", 2, 0.91, 0.94),
        _summary("3", 3, 0.92, 0.94),
    ]
    found = build_recommendation(
        job_id="7", trials=trials, metric="val_accuracy", mode="max", final=True, snapshots=3
    )
    ensemble = found.snapshot_ensemble
    assert ensemble is not None
    assert ensemble.single_mean == pytest.approx(0.91)
    assert ensemble.ensemble_mean == pytest.approx(2.81 / 3)
    assert ensemble.difference == pytest.approx(0.08 / 3)
    # Welch by hand: standard errors 0.01/sqrt(3) and 0.005774/sqrt(3), df from Satterthwaite.
    var_e, var_s = np.var([0.93, 0.94, 0.94], ddof=1) / 3, np.var([0.90, 0.91, 0.92], ddof=1) / 3
    dof = (var_e + var_s) ** 2 / (var_e**2 / 2 + var_s**2 / 2)
    from scipy import stats

    half = stats.t.ppf(0.975, dof) * math.sqrt(var_e + var_s)
    assert ensemble.ci_low == pytest.approx(0.08 / 3 - half)
    assert ensemble.ci_high == pytest.approx(0.08 / 3 + half)
    assert "snapshot ensemble" in found.rationale and "beats the single final model" in (
        found.rationale
    )
    assert "lrtune_snapshots.append(copy.deepcopy(model.state_dict()))" in found.code["pytorch"]
    assert "del lrtune_snapshots[:-3]" in found.code["pytorch"]

    worse = [_summary(str(i), i, 0.9 + i / 100, 0.85 + i / 100) for i in range(3)]
    found = build_recommendation(
        job_id="7",
        trials=worse,
        metric="ensemble_val_accuracy",
        mode="max",
        final=True,
        snapshots=3,
    )
    assert found.snapshot_ensemble is not None and found.snapshot_ensemble.difference < 0
    assert "does not beat the single final model" in found.rationale
    assert (
        build_recommendation(
            job_id="7", trials=worse, metric="val_accuracy", mode="max", final=True
        ).snapshot_ensemble
        is None
    )


@pytest.mark.ray
def test_a_job_with_snapshots_runs_to_its_recommendation(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    spec = JobSpec.model_validate(
        {
            "workload": DIGITS,
            "snapshots": 2,
            "metric": {"name": "ensemble_val_accuracy"},
            "policies": [{"policy": "sgdr", "search": {"t_0_frac": 0.25, "t_mult": 1}}],
            "budget": {"epochs": 2, "trials_per_policy": 1},
            "confirm": {"top_k": 1, "seeds": 2},
        }
    )
    job, _ = store.create_job(spec=spec)
    run_worker(settings, once=True, store=store)
    job = store.get_job(job.id)
    assert job.status == "succeeded", job.error
    trials = store.list_trials(job_id=job.id, limit=10).items
    assert len(trials) == 3 and {t.status for t in trials} == {"completed"}
    for trial in trials:
        rows = store.list_trial_metrics(trial_id=trial.id)
        # 24 steps, cycles of 6: an ensemble in both epochs, stored beside the single model's.
        assert all({"val_accuracy", "ensemble_val_accuracy"} <= set(r.metrics) for r in rows)
        assert trial.best_metric == max(r.metrics["ensemble_val_accuracy"] for r in rows)
    found = job_recommendation(store, job_id=job.id, tenant_id=None)
    assert found.final and found.metric == "ensemble_val_accuracy"
    assert found.snapshot_ensemble is not None and found.snapshot_ensemble.n_seeds == 2
    assert "snapshot ensemble" in found.rationale
    served = api_client.get(f"/v1/jobs/{job.id}/recommendation").json()
    assert served["snapshot_ensemble"]["ensemble_metric"] == "ensemble_val_accuracy"


TRAIN_FUNCTION = """
from lrtune.workers import TrainFunction


def make(**params):
    def train(ctx):
        raise AssertionError("never trained")

    return TrainFunction(train, steps_per_epoch=4)
"""


def test_a_train_function_cannot_take_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "snapshot_loop.py").write_text(TRAIN_FUNCTION)
    use_code_path(monkeypatch, tmp_path)
    workload = {"entrypoint": "snapshot_loop:make"}
    spec = JobSpec.model_validate(
        {
            "workload": workload,
            "snapshots": 2,
            "policies": ["sgdr"],
            "budget": {"epochs": 2, "trials_per_policy": 1},
        }
    )
    # The job fails at planning, before any trial; a trial alone refuses too.
    with pytest.raises(WorkloadError, match="cannot take its snapshots"):
        inspect_training(spec)
    with pytest.raises(ValueError, match="cannot take its snapshots"):
        run_trial(trial_config(workload=workload, metric="val_loss"), lambda row: None)
