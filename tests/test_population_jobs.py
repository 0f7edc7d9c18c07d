"""Population jobs (execution "population"): the spec's checks (422s naming the field), and jobs
through the real worker and Ray on SQLite and PostgreSQL: every member a trial of its own in
SQL, equal to the same configuration trained alone; the same job stored the same as trials and
as populations; early stopping inside a population; the confirmation as populations; execution
"auto", the default; cancel; kill -9 mid-population resuming every member exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import CANCELLED_TRIAL_ERROR, JobSpec, Trial
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.trial import run_trial

from tests.conftest import wait_until

POPULATION: dict[str, Any] = {
    "name": "populations",
    "workload": {"name": "digits", "params": {"model": "mlp", "batch_size": 128}},
    "metric": {"name": "val_accuracy", "mode": "max"},
    "policies": ["fixed", "cosine", "one_cycle"],
    "budget": {"epochs": 3, "trials_per_policy": 3, "max_concurrent_trials": 2},
    "search": {"algorithm": "random", "seed": 0},
    "execution": "population",
}

# The population the kill -9 test kills: long enough to be mid-way when the kill lands.
EPOCHS_KILLED = 12

# Each rejected spec and the field path the 422 must name.
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("size without populations", {"execution": "trials", "population_size": 4}, "population_size"),
    ("size too large", {"population_size": 257}, "population_size"),
    ("size of one", {"population_size": 1}, "population_size"),
    ("unknown execution", {"execution": "batched"}, "execution"),
    (
        "schedule-free arm",
        {"policies": ["cosine", {"policy": "fixed", "optimizer": {"name": "sgd_schedulefree"}}]},
        "execution",
    ),
    ("sweep", {"policies": ["wsd"], "horizons": [1, 3]}, "execution"),
    ("snapshots", {"policies": ["sgdr"], "snapshots": 2}, "execution"),
    ("range test", {"kind": "range_test", "policies": []}, "execution"),
]


@pytest.mark.parametrize(
    ("change", "path"), [(c, p) for _, c, p in INVALID], ids=[n for n, _, _ in INVALID]
)
def test_invalid_population_specs_are_422_naming_the_field(
    api_client: TestClient, change: dict[str, Any], path: str
) -> None:
    answer = api_client.post("/v1/jobs", json={**POPULATION, **change})
    assert answer.status_code == 422, answer.text
    assert path in [field["path"] for field in answer.json()["error"]["fields"]], answer.text


def _trials(store: Store, job_id: int) -> list[Trial]:
    return sorted(store.list_trials(job_id=job_id, limit=500).items, key=lambda t: t.id)


def _alone(spec: JobSpec, trial: Trial) -> list[EpochResult]:
    """The member's configuration trained on its own, on its population's data order."""
    results: list[EpochResult] = []
    run_trial(
        TrialConfig(
            workload=spec.workload,
            optimizer=spec.optimizer_for(trial.policy),
            schedule=parse_schedule(trial.schedule),
            epochs=spec.budget.epochs,
            seed=trial.seed,
            shuffle_seed=trial.search_config["shuffle_seed"],
            metric=spec.metric_name,
            mode=spec.metric_mode,
        ),
        results.append,
    )
    return results


def _assert_equal_curves(stored: list[Any], alone: list[EpochResult], what: str) -> None:
    """Epoch for epoch, to float rounding (a population's batched matmuls sum in another order)."""
    assert [m.epoch for m in stored] == [r.epoch for r in alone[: len(stored)]], what
    for mine, theirs in zip(stored, alone, strict=False):
        assert mine.step == theirs.step, what
        assert mine.lr == pytest.approx(theirs.lr, rel=1e-9), what
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-3, abs=1e-4), what
        assert mine.val_loss == pytest.approx(theirs.val_loss, rel=1e-3, abs=1e-4), what
        for name, value in theirs.metrics.items():
            # One example's prediction can flip at a near tie: 1/450 of val_accuracy.
            assert mine.metrics[name] == pytest.approx(value, abs=2.5e-3), (what, name)


@pytest.mark.ray
def test_a_population_job_stores_every_member_as_its_own_trial(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    spec = JobSpec.model_validate(
        {**POPULATION, "confirm": {"top_k": 1, "seeds": 2}, "population_size": 5}
    )
    job, _ = store.create_job(spec=spec)
    run_worker(settings, once=True, store=store)
    final = store.get_job(job.id)
    assert final.status == "succeeded", final.error

    trials = _trials(store, job.id)
    search = [t for t in trials if t.phase == "search"]
    confirm = [t for t in trials if t.phase == "confirm"]
    assert sorted(t.ray_trial_id for t in search) == sorted(
        f"{policy}-{index}" for policy in ("fixed", "cosine", "one_cycle") for index in range(3)
    )
    assert len(confirm) == 3 * 2
    assert final.progress.planned == len(trials) == 15
    assert all(t.status == "completed" for t in trials), [(t.ray_trial_id, t.error) for t in trials]
    # 9 search trials in populations of at most 5; the 6 confirmation trials after them.
    populations = {t.search_config["population"] for t in search}
    assert populations == {"population-0", "population-1"}
    for trial in trials:
        assert trial.epochs_done == 3
    # The search trains on one data order, each confirmation seed on its own: 2 populations.
    assert len({t.search_config["shuffle_seed"] for t in search}) == 1
    assert all(t.search_config["shuffle_seed"] == t.seed for t in confirm)
    assert {t.search_config["population"] for t in confirm} == {"population-2", "population-3"}

    # Every member trained exactly as its configuration does alone.
    for trial in (search[0], search[4], confirm[-1]):
        stored = store.list_trial_metrics(trial_id=trial.id)
        _assert_equal_curves(stored, _alone(spec, trial), trial.ray_trial_id)

    answer = api_client.get(f"/v1/jobs/{job.id}/recommendation")
    assert answer.status_code == 200, answer.text
    assert answer.json()["final"] is True


@pytest.mark.ray
def test_early_stopping_halves_each_population_at_the_rungs_by_cooldown_probes(
    ray_local: str, settings: Settings, store: Store
) -> None:
    spec = JobSpec.model_validate(
        {
            **POPULATION,
            "budget": {"epochs": 4, "trials_per_policy": 3, "max_concurrent_trials": 1},
            "early_stopping": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 3},
        }
    )
    job, _ = store.create_job(spec=spec)
    run_worker(settings, once=True, store=store)
    final = store.get_job(job.id)
    assert final.status == "succeeded", final.error
    trials = _trials(store, job.id)
    assert len(trials) == 9
    assert {t.search_config["population"] for t in trials} == {"population-0"}
    # Rungs at epochs 1 and 3 (grace 1, factor 3): 9 members -> 3 -> 1.
    by_epochs = sorted(t.epochs_done for t in trials)
    assert by_epochs == [1] * 6 + [3] * 2 + [4], by_epochs
    assert {t.status for t in trials if t.epochs_done < 4} == {"pruned"}
    winner = next(t for t in trials if t.epochs_done == 4)
    assert winner.status == "completed"

    # At each rung every member that could go on was probed, and the best probes went on.
    rung_1 = {t.id: store.list_trial_probes(trial_id=t.id) for t in trials}
    assert all(probes and probes[0].epoch == 1 for probes in rung_1.values())
    judged = {trial_id: probes[0].metrics["val_accuracy"] for trial_id, probes in rung_1.items()}
    decisions = {trial_id: probes[0].decision for trial_id, probes in rung_1.items()}
    kept = {trial_id for trial_id, decision in decisions.items() if decision == "continue"}
    assert len(kept) == 3
    assert min(judged[i] for i in kept) >= max(judged[i] for i in judged if i not in kept)
    for trial in trials:
        if trial.id not in kept:
            assert trial.epochs_done == 1 and decisions[trial.id] == "stop"


@pytest.mark.ray
def test_a_tpe_population_job_fails_only_the_members_with_no_valid_schedule(
    ray_local: str, settings: Settings, store: Store
) -> None:
    # clr's base_lr and max_lr drawn from one range: about half the points are invalid.
    rates = {"loguniform": [0.001, 1.0]}
    spec = JobSpec.model_validate(
        {
            **POPULATION,
            "policies": ["fixed", {"policy": "clr", "search": {"base_lr": rates, "max_lr": rates}}],
            "budget": {"epochs": 2, "trials_per_policy": 4, "max_concurrent_trials": 2},
            "search": {"algorithm": "tpe", "seed": 1},
            "confirm": {"top_k": 1, "seeds": 2},
            "population_size": 3,
        }
    )
    job, _ = store.create_job(spec=spec)
    run_worker(settings, once=True, store=store)
    final = store.get_job(job.id)
    assert final.status == "succeeded", final.error
    trials = _trials(store, job.id)
    failed = [t for t in trials if t.status == "failed"]
    assert failed, "no invalid point was drawn; nothing was tested"
    for trial in failed:
        assert trial.policy == "clr" and trial.epochs_done == 0
        assert trial.error is not None and trial.error.startswith("invalid schedule for this point")
    # Its population trained the others: every search member but the failed ones has 2 epochs.
    assert all(t.epochs_done == 2 for t in trials if t.status != "failed")
    assert [t for t in trials if t.phase == "confirm"], "the confirmation waited on every member"


# The same job whatever its execution: decisions that never depend on timing (random points,
# promotion on final values), and val_loss, a continuous metric, so that no near tie can flip
# between a population's float rounding and a lone trial's.
SAME_JOB: dict[str, Any] = {
    "workload": {"name": "digits", "params": {"model": "mlp", "batch_size": 128}},
    # Rates that train without diverging, so every trial has a value.
    "policies": [
        {"policy": "fixed", "search": {"lr": {"loguniform": [0.01, 0.3]}}},
        {"policy": "cosine", "search": {"lr": {"loguniform": [0.01, 0.3]}}},
    ],
    "budget": {"epochs": 2, "trials_per_policy": 2, "max_concurrent_trials": 2},
    "search": {"algorithm": "random", "seed": 5},
    "confirm": {"top_k": 1, "seeds": 2},
}


@pytest.mark.ray
@pytest.mark.parametrize(
    "early_stopping",
    [{"kind": "none"}, {"kind": "horizon_halving", "min_epochs": 1, "reduction_factor": 2}],
    ids=["none", "horizon_halving"],
)
def test_the_execution_never_changes_a_result(
    ray_local: str, settings: Settings, store: Store, early_stopping: dict[str, Any]
) -> None:
    jobs = {
        execution: store.create_job(
            spec=JobSpec.model_validate(
                {**SAME_JOB, "early_stopping": early_stopping, "execution": execution}
            )
        )[0]
        for execution in ("trials", "population")
    }
    stored: dict[str, dict[str, Trial]] = {}
    for execution, job in jobs.items():
        run_worker(settings, once=True, store=store)
        final = store.get_job(job.id)
        assert final.status == "succeeded", (execution, final.error)
        stored[execution] = {str(t.ray_trial_id): t for t in _trials(store, job.id)}
    alone, fused = stored["trials"], stored["population"]
    assert alone.keys() == fused.keys()
    assert any(t.phase == "confirm" for t in alone.values())
    if early_stopping["kind"] == "horizon_halving":
        assert any(t.status == "pruned" for t in alone.values())
    for key, trial in alone.items():
        member = fused[key]
        point = {k: v for k, v in member.search_config.items() if k != "population"}
        assert point == trial.search_config, key  # the point, the data order, the rung
        assert (member.policy, member.phase, member.seed, member.status, member.schedule) == (
            trial.policy,
            trial.phase,
            trial.seed,
            trial.status,
            trial.schedule,
        ), key
        ours = store.list_trial_metrics(trial_id=member.id)
        theirs = store.list_trial_metrics(trial_id=trial.id)
        assert [(m.epoch, m.step) for m in ours] == [(m.epoch, m.step) for m in theirs], key
        for mine, lone in zip(ours, theirs, strict=True):
            # To float rounding: a population's batched matmuls sum in another order.
            assert mine.lr == pytest.approx(lone.lr, rel=1e-9), key
            assert mine.train_loss == pytest.approx(lone.train_loss, rel=1e-5), key
            assert mine.val_loss == pytest.approx(lone.val_loss, rel=1e-5), key


def _write_batchnorm_workload(folder: Path) -> Path:
    """A code folder whose `normed:make` is digits with a BatchNorm layer (running statistics:
    not fusible)."""
    folder.mkdir()
    (folder / "normed.py").write_text(
        "from torch import nn\n"
        "from lrtune.workers.workloads import build_workload\n\n"
        "def make():\n"
        "    workload = build_workload('digits', {'model': 'mlp'})\n"
        "    workload.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16),"
        " nn.ReLU(), nn.Linear(16, 10))\n"
        "    return workload\n"
    )
    return folder


@pytest.mark.ray
def test_execution_auto_the_default_runs_populations_when_the_trials_fuse_and_says_why_not(
    ray_local: str, settings: Settings, store: Store, tmp_path: Path
) -> None:
    default = {k: v for k, v in POPULATION.items() if k != "execution"}
    assert JobSpec.model_validate(default).execution == "auto"
    small = {"budget": {"epochs": 2, "trials_per_policy": 2, "max_concurrent_trials": 2}}
    one = {"budget": {"epochs": 1, "trials_per_policy": 1, "max_concurrent_trials": 2}}
    fusing, _ = store.create_job(
        spec=JobSpec.model_validate(
            {
                **default,
                **small,
                "workload": {"name": "mnist1d", "params": {"model": "mlp"}},
                "confirm": {"top_k": 1, "seeds": 2},
            }
        )
    )
    schedule_free, _ = store.create_job(
        spec=JobSpec.model_validate(
            {
                **default,
                **one,
                "policies": [
                    "cosine",
                    {"policy": "fixed", "optimizer": {"name": "sgd_schedulefree"}},
                ],
            }
        )
    )
    normed, _ = store.create_job(
        spec=JobSpec.model_validate(
            {
                **default,
                **one,
                "workload": {"entrypoint": "normed:make"},
                "lr_bounds": {"min": 0.01, "max": 0.1},
            }
        )
    )
    code = _write_batchnorm_workload(tmp_path / "code")
    with_code = settings.model_copy(update={"code_path": str(code)})
    for _ in range(3):
        run_worker(with_code, once=True, store=store)

    fused = store.get_job(fusing.id)
    assert fused.status == "succeeded", fused.error
    assert 'execution "auto" ran population: the trials train as batched models' in fused.notes
    trials = _trials(store, fusing.id)
    assert len(trials) == 12 and all(t.status == "completed" for t in trials)
    # Each phase's trials spread over the 2 slots: 6 search trials, then 6 confirmation trials
    # (3 a seed), in populations of 3.
    members: dict[str, list[str]] = {}
    for trial in trials:
        members.setdefault(trial.search_config["population"], []).append(trial.phase)
    assert members == {
        "population-0": ["search"] * 3,
        "population-1": ["search"] * 3,
        "population-2": ["confirm"] * 3,
        "population-3": ["confirm"] * 3,
    }

    for job, why in (
        (schedule_free, "sgd_schedulefree keeps two weight sets"),
        (normed, "'normed:make' cannot train as a population: 2 (BatchNorm1d) updates running"),
    ):
        alone = store.get_job(job.id)
        assert alone.status == "succeeded", alone.error
        (note,) = [n for n in alone.notes if n.startswith('execution "auto"')]
        assert note.startswith(f'execution "auto" ran trials: {why}'), note
        lone_trials = _trials(store, job.id)
        assert lone_trials and all("population" not in t.search_config for t in lone_trials)
        # Alone, a trial still trains on the job's data order.
        assert len({t.search_config["shuffle_seed"] for t in lone_trials}) == 1


def test_a_population_of_a_model_with_batchnorm_fails_at_planning_with_the_reason(
    ray_local: str,
    settings: Settings,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = _write_batchnorm_workload(tmp_path / "code")
    spec = JobSpec.model_validate(
        {
            **POPULATION,
            "workload": {"entrypoint": "normed:make"},
            "lr_bounds": {"min": 0.01, "max": 0.1},
        }
    )
    job, _ = store.create_job(spec=spec)
    run_worker(settings.model_copy(update={"code_path": str(code)}), once=True, store=store)
    final = store.get_job(job.id)
    assert final.status == "failed"
    assert final.error is not None
    assert "cannot train as a population" in final.error and "BatchNorm1d" in final.error
    assert 'execution "trials"' in final.error


@pytest.mark.ray
def test_cancel_mid_population_ends_every_member(
    ray_local: str, settings: Settings, store: Store
) -> None:
    spec = JobSpec.model_validate(
        {
            **POPULATION,
            "workload": {"name": "digits", "params": {"model": "cnn", "batch_size": 8}},
            "budget": {"epochs": 6, "trials_per_policy": 3, "max_concurrent_trials": 1},
        }
    )
    job, _ = store.create_job(spec=spec)
    worker = threading.Thread(
        target=run_worker, args=(settings,), kwargs={"once": True, "store": store}
    )
    worker.start()
    wait_until(
        lambda: any(t.epochs_done >= 1 for t in _trials(store, job.id)),
        timeout=120,
        what="a first epoch",
    )
    store.cancel_job(job.id)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert store.get_job(job.id).status == "cancelled"
    trials = _trials(store, job.id)
    assert len(trials) == 9  # one population: every member had started
    for trial in trials:
        assert trial.status == "failed", (trial.ray_trial_id, trial.status)
        assert trial.error == CANCELLED_TRIAL_ERROR
        assert 1 <= trial.epochs_done < 6


@pytest.mark.ray
def test_kill_9_mid_population_resumes_every_member_exactly(
    ray_local: str, settings: Settings, store: Store, tmp_path: Path, curves_by_key: Any
) -> None:
    spec = JobSpec.model_validate(
        {
            **POPULATION,
            # About a second an epoch: the kill, after epoch 2 and Tune's next experiment
            # snapshot, lands with most of the 12 epochs still to train.
            "workload": {"name": "digits", "params": {"model": "cnn", "batch_size": 8}},
            "budget": {"epochs": EPOCHS_KILLED, "trials_per_policy": 2, "max_concurrent_trials": 1},
        }
    )
    calm, _ = store.create_job(spec=spec)
    job, _ = store.create_job(spec=spec)
    every_epoch = settings.model_copy(update={"checkpoint_every_epochs": 1})
    run_worker(every_epoch, once=True, store=store)
    assert store.get_job(calm.id).status == "succeeded"

    lease = 3.0
    env = {
        **os.environ,
        "LRTUNE_DATABASE_URL": str(settings.database_url),
        "LRTUNE_HOME": str(settings.home),
        "LRTUNE_JOB_LEASE_SECONDS": str(lease),
        "LRTUNE_CHECKPOINT_EVERY_EPOCHS": "1",
        "RAY_ADDRESS": ray_local,
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lrtune.service.cli",
                "worker",
                "--once",
                "--worker-id",
                "doomed",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: any(t.epochs_done >= 2 for t in _trials(store, job.id)),
                timeout=180,
                what="a population two epochs in",
                logs=lambda: log_path.read_text()[-4000:],
            )
            # Tune snapshots its experiment state (naming the latest checkpoint) every 2 s.
            time.sleep(2.5)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    assert store.get_job(job.id).status == "running", "the job ended before the kill"
    assert all(t.epochs_done < EPOCHS_KILLED for t in _trials(store, job.id))

    resumed = every_epoch.model_copy(update={"job_lease_seconds": lease})
    deadline = time.monotonic() + 120
    while store.get_job(job.id).status == "running" and time.monotonic() < deadline:
        run_worker(resumed, once=True, store=store, worker_id="heir")
        time.sleep(0.5)
    final = store.get_job(job.id)
    assert final.status == "succeeded", (final.error, log_path.read_text()[-3000:])
    trials = _trials(store, job.id)
    assert len(trials) == 6 and all(t.status == "completed" for t in trials)
    restored = [t.restored_from_epoch for t in trials]
    assert all(epoch is not None and 1 <= epoch < EPOCHS_KILLED for epoch in restored), restored
    for trial in trials:
        stored = [m.epoch for m in store.list_trial_metrics(trial_id=trial.id)]
        assert stored == list(range(1, EPOCHS_KILLED + 1))
    # Every member's epochs after the resume are the uninterrupted job's, number for number.
    assert curves_by_key(store, job.id) == curves_by_key(store, calm.id)
