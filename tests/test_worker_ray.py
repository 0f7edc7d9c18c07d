"""The worker daemon against a real local Ray (2 CPUs, started once) and a real database.

Jobs are tiny (digits, mlp, 2-3 epochs, 1-2 trials per policy) so the whole module stays within
a minute or two on two cores.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from lrtune.schemas.jobs import Job, JobPhase, JobSpec, JobTimeline, Trial
from lrtune.schemas.schedules import parse_schedule
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.schedule_math import learning_rate

from tests.conftest import wait_until

pytestmark = pytest.mark.ray

POLICIES = ["fixed", "exponential", "clr", "sgdr"]


def _spec(**overrides: Any) -> JobSpec:
    data: dict[str, Any] = {
        "workload": {"name": "digits", "params": {"model": "mlp"}},
        "policies": POLICIES,
        "budget": {"epochs": 2, "trials_per_policy": 1, "max_concurrent_trials": 2},
        "search": {"algorithm": "random", "seed": 0},
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def _trials(store: Store, job_id: int) -> list[Trial]:
    return sorted(store.list_trials(job_id=job_id, limit=500).items, key=lambda t: t.id)


def _run(settings: Settings, store: Store, spec: JobSpec) -> Job:
    job, _ = store.create_job(spec=spec)
    run_worker(settings, once=True, store=store)
    return store.get_job(job.id)


@pytest.mark.both_databases
def test_job_runs_to_succeeded_with_every_trial_and_epoch_in_sql_and_repeats_exactly(
    ray_local: str, settings: Settings, store: Store, curves_by_key: Any
) -> None:
    # sgdr gets an absurd peak rate: it must diverge, and that is a result, not a failure.
    spec = _spec(policies=[*POLICIES[:3], {"policy": "sgdr", "search": {"eta_max": 50.0}}])
    job = _run(settings, store, spec)
    assert job.status == "succeeded", job.error
    trials = _trials(store, job.id)
    assert sorted(t.policy for t in trials) == sorted(POLICIES)
    assert job.progress.planned == len(trials) == 4
    status = {t.policy: t.status for t in trials}
    assert status == {
        "fixed": "completed",
        "exponential": "completed",
        "clr": "completed",
        "sgdr": "diverged",
    }
    for trial in trials:
        assert trial.node_id, "the node the trial ran on is recorded"
        metrics = store.list_trial_metrics(trial_id=trial.id)
        assert [m.epoch for m in metrics] == list(range(1, trial.epochs_done + 1))
        expected_epochs = 2 if trial.status == "completed" else 1
        assert trial.epochs_done == expected_epochs
        schedule = parse_schedule(trial.schedule)
        for row in metrics:
            # The rate actually used by the epoch's last update.
            assert row.lr == pytest.approx(learning_rate(schedule, max(row.step - 1, 0)))
    # The diverged trial's loss is recorded as it was (NaN or huge), not dropped.
    (blown,) = store.list_trial_metrics(trial_id=next(t.id for t in trials if t.policy == "sgdr"))
    assert blown.train_loss is None or not math.isfinite(blown.train_loss) or blown.train_loss > 2.3

    again = _run(settings, store, spec)
    assert again.status == "succeeded"
    assert curves_by_key(store, again.id) == curves_by_key(store, job.id)


def test_a_charlm_job_trains_adamw_with_warmup_through_ray(
    ray_local: str, settings: Settings, store: Store
) -> None:
    lr = {"loguniform": [1e-3, 3e-3]}
    spec = _spec(
        workload={
            "name": "charlm",
            "params": {"seq_len": 32, "batch_size": 16, "limit_train": 128, "limit_val": 64},
        },
        optimizer={"name": "adamw", "weight_decay": 0.01},
        policies=[
            {"policy": "cosine", "search": {"lr": lr, "warmup_steps_frac": 0.25}},
            {"policy": "wsd", "search": {"lr": lr}},
        ],
    )
    assert spec.metric is not None and (spec.metric.name, spec.metric.mode) == ("val_loss", "min")
    job = _run(settings, store, spec)
    assert job.status == "succeeded", job.error
    trials = _trials(store, job.id)
    assert sorted(t.policy for t in trials) == ["cosine", "wsd"]
    for trial in trials:
        assert trial.status == "completed" and trial.epochs_done == 2
        # Of 16 steps, a quarter warms cosine up, and wsd's default 5% rounds to one step.
        assert trial.schedule["warmup_steps"] == {"cosine": 4, "wsd": 1}[trial.policy]
        rows = store.list_trial_metrics(trial_id=trial.id)
        assert [row.step for row in rows] == [8, 16]
        losses = [row.val_loss for row in rows]
        assert losses[0] is not None and losses[1] is not None and losses[1] < losses[0]
        for row, loss in zip(rows, losses, strict=True):
            assert row.metrics["val_bits_per_char"] == pytest.approx(loss / math.log(2), rel=1e-5)
        assert trial.best_metric == min(losses)


def _assert_tiled(timeline: JobTimeline) -> None:
    """Every phase ended, each started where the one before it ended (the first at the job's
    submission), and the phases add up to the job's wall-clock within 5%."""
    phases: list[JobPhase] = timeline.phases
    assert phases and phases[0].phase == "queued"
    assert phases[0].started_at == timeline.created_at
    for before, after in itertools.pairwise(phases):
        assert after.started_at == before.ended_at, (before, after)
    assert all(p.ended_at is not None for p in phases), phases
    assert timeline.wall_clock_s is not None and timeline.wall_clock_s > 0
    assert abs(timeline.phases_s - timeline.wall_clock_s) <= 0.05 * timeline.wall_clock_s, (
        timeline.phases_s,
        timeline.wall_clock_s,
        [(p.phase, p.seconds) for p in phases],
    )


def test_every_phase_of_a_job_is_timed_and_they_add_up_to_its_wall_clock(
    ray_local: str, settings: Settings, store: Store
) -> None:
    spec = _spec(
        policies=["fixed", "clr"],
        lr_bounds="auto",
        range_test={"iterations": 40, "min_lr": 1e-5, "max_lr": 10.0},
        confirm={"top_k": 1, "seeds": 1},
    )
    job = _run(settings, store, spec)
    assert job.status == "succeeded", job.error
    timeline = store.job_timeline(job.id)
    assert [p.phase for p in timeline.phases] == [
        "queued",
        "planning",
        "range_test",
        "search",
        "confirmation",
        "recommendation",
    ]
    _assert_tiled(timeline)
    assert {p.worker_id for p in timeline.phases[1:]} == {timeline.phases[1].worker_id}
    assert timeline.phases[1].worker_id is not None
    # The phase the job ended in ended with it; storing the recommendation came after.
    assert timeline.phases[-2].ended_at == job.finished_at
    assert store.get_saved_recommendation(job.id) is not None

    trials = _trials(store, job.id)
    assert [t.trial_id for t in timeline.trials] == [t.id for t in trials]
    assert {t.phase for t in timeline.trials} == {"search", "confirm"}
    search = next(p for p in timeline.phases if p.phase == "search")
    for trial in timeline.trials:
        assert trial.wall_s is not None and trial.start_up_s is not None
        assert 0 < trial.busy_s <= trial.wall_s
        assert trial.start_up_s == pytest.approx(trial.wall_s - trial.busy_s)
        epochs = store.list_trial_metrics(trial_id=trial.trial_id)
        assert trial.busy_s == pytest.approx(epochs[-1].elapsed_s)
        assert trial.first_epoch_s == pytest.approx(epochs[0].elapsed_s)
        assert trial.started_at is not None and trial.started_at >= search.started_at
        if trial.phase == "search":
            assert trial.wall_s <= search.seconds
    assert timeline.trials_busy_s == pytest.approx(sum(t.busy_s for t in timeline.trials))

    test_only = _run(
        settings,
        store,
        JobSpec.model_validate(
            {
                "kind": "range_test",
                "workload": {"name": "digits", "params": {"model": "mlp"}},
                "budget": {"epochs": 1, "trials_per_policy": 1},
                "range_test": {"iterations": 40, "min_lr": 1e-5, "max_lr": 10.0},
            }
        ),
    )
    assert test_only.status == "succeeded", test_only.error
    timeline = store.job_timeline(test_only.id)
    assert [p.phase for p in timeline.phases] == ["queued", "range_test"]
    _assert_tiled(timeline)
    assert timeline.phases[-1].ended_at == test_only.finished_at
    assert timeline.trials == []


def test_search_and_confirmation_are_one_tune_experiment_on_the_free_cpus(
    ray_local: str, settings: Settings, store: Store
) -> None:
    import ray

    # No max_concurrent_trials: as many as the free CPUs hold. Each trial asks half this
    # process's Ray (1 or 2 CPUs), so 2 fit.
    half = ray.cluster_resources()["CPU"] / 2
    spec = _spec(
        policies=["fixed", "clr"],
        resources_per_trial={"cpu": half},
        budget={"epochs": 3, "trials_per_policy": 3},
        early_stopping={"kind": "asha", "grace_epochs": 1, "reduction_factor": 2},
        confirm={"top_k": 1, "seeds": 2},
    )
    job = _run(settings, store, spec)
    assert job.status == "succeeded", job.error
    assert any(note.startswith("2 trials at once") for note in job.notes), job.notes
    # One experiment in the run storage: the confirmation is no second Tune run.
    storage = Path(settings.resolved_storage)
    assert [p.name for p in storage.iterdir() if p.is_dir()] == [f"job-{job.id}"]
    assert len(list(storage.glob("*/experiment_state*.json"))) == 1

    trials = _trials(store, job.id)
    search = [t for t in trials if t.phase == "search"]
    confirm = [t for t in trials if t.phase == "confirm"]
    assert len(search) == 6
    # Each policy's best search trial that ran to its end, on 2 seeds (a policy ASHA pruned
    # throughout has nothing to confirm).
    confirmed = sorted({t.policy for t in search if t.status in ("completed", "diverged")})
    assert confirmed, "ASHA let no search trial finish"
    assert sorted(str(t.ray_trial_id) for t in confirm) == [
        f"confirm-{policy}-0-{index}" for policy in confirmed for index in (0, 1)
    ]
    # ASHA ranks and stops search trials only: every confirmation trial trains to its end.
    assert {(t.status, t.epochs_done) for t in confirm} == {("completed", 3)}
    for trial in confirm:
        probes = store.list_trial_probes(trial_id=trial.id)
        assert all(probe.decision != "stop" for probe in probes)
    assert store.get_job(job.id).progress.planned == len(trials)
    spans = [(t.started_at, t.finished_at) for t in trials]
    assert any(
        a_start < b_end and b_start < a_end
        for (a_start, a_end), (b_start, b_end) in itertools.combinations(spans, 2)
        if a_start and a_end and b_start and b_end
    ), "no two trials ran at once"

    # The confirmation phase starts when the search's last trial has ended, before the first
    # confirmation trial starts.
    timeline = store.job_timeline(job.id)
    assert [p.phase for p in timeline.phases] == [
        "queued",
        "planning",
        "search",
        "confirmation",
        "recommendation",
    ]
    _assert_tiled(timeline)
    confirmation = timeline.phases[3]
    assert all(t.finished_at is not None for t in search)
    assert max(t.finished_at for t in search if t.finished_at) <= confirmation.started_at
    assert all(
        t.started_at is not None and t.started_at >= confirmation.started_at for t in confirm
    )


def test_asha_prunes_and_statuses_match_what_tune_reported(
    ray_local: str, settings: Settings, store: Store
) -> None:
    spec = _spec(
        budget={"epochs": 3, "trials_per_policy": 2, "max_concurrent_trials": 2},
        early_stopping={"kind": "asha", "grace_epochs": 1, "reduction_factor": 2},
        execution="trials",  # Tune's ASHA stops Tune trials; populations halve their own
    )
    job = _run(settings, store, spec)
    assert job.status == "succeeded", job.error
    trials = _trials(store, job.id)
    assert len(trials) == 8
    by_status: dict[str, list[Trial]] = {}
    for trial in trials:
        by_status.setdefault(trial.status, []).append(trial)
        assert len(store.list_trial_metrics(trial_id=trial.id)) == trial.epochs_done
    assert by_status.get("pruned"), "ASHA stopped nothing"
    assert by_status.get("completed"), "ASHA stopped everything"
    assert all(t.epochs_done < 3 for t in by_status["pruned"])
    assert all(t.epochs_done == 3 for t in by_status["completed"])
    assert set(by_status) <= {"completed", "pruned", "diverged"}


@pytest.mark.both_databases
def test_cancel_mid_job_ends_cancelled_and_starts_no_trial_after_it(
    ray_local: str, settings: Settings, store: Store
) -> None:
    # One trial at a time in each slot: a population would start all of its members at once.
    spec = _spec(
        budget={"epochs": 3, "trials_per_policy": 2, "max_concurrent_trials": 2},
        execution="trials",
    )
    job, _ = store.create_job(spec=spec)
    worker = threading.Thread(
        target=run_worker, args=(settings,), kwargs={"once": True, "store": store}
    )
    worker.start()
    wait_until(
        lambda: any(t.epochs_done >= 1 for t in _trials(store, job.id)),
        timeout=60,
        what="a first epoch",
    )
    store.cancel_job(job.id)
    cancelled_at = datetime.now().astimezone()
    worker.join(timeout=60)
    assert not worker.is_alive()
    final = store.get_job(job.id)
    assert final.status == "cancelled"
    trials = _trials(store, job.id)
    assert 0 < len(trials) < 8
    assert all(t.created_at <= cancelled_at for t in trials)
    assert all(t.status != "running" for t in trials)


class _RecordingStore(Store):
    """The real store, noting which trials were set running (i.e. started) by this worker."""

    def __init__(self, url: str) -> None:
        base = Store.from_url(url)
        super().__init__(base.engine)
        self.started: list[int] = []

    def update_trial_status(self, **kwargs: Any) -> Trial:
        if kwargs["status"] == "running":
            self.started.append(kwargs["trial_id"])
        return super().update_trial_status(**kwargs)


@pytest.mark.both_databases
def test_kill_9_mid_job_then_a_new_worker_finishes_it_without_rerunning_trials(
    ray_local: str, settings: Settings, store: Store, tmp_path: Path
) -> None:
    # Lone trials: some finish before the kill while others have yet to start.
    spec = _spec(
        budget={"epochs": 3, "trials_per_policy": 2, "max_concurrent_trials": 2},
        execution="trials",
    )
    job, _ = store.create_job(spec=spec)
    lease = 3.0
    env = {
        **os.environ,
        "LRTUNE_DATABASE_URL": str(settings.database_url),
        "LRTUNE_HOME": str(settings.home),
        "LRTUNE_JOB_LEASE_SECONDS": str(lease),
        "RAY_ADDRESS": ray_local,
    }
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "lrtune.service.cli", "worker", "--once", "--worker-id", "doomed"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: sum(t.status == "completed" for t in _trials(store, job.id)) >= 2,
            timeout=180,
            what="two completed trials in the first worker",
            logs=lambda: (tmp_path / "worker.log").read_text()[-4000:],
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    before = {t.ray_trial_id: t for t in _trials(store, job.id)}
    done_before = {key for key, t in before.items() if t.status == "completed"}
    assert len(before) < 8, "the job finished before the kill; nothing was tested"

    recording = _RecordingStore(str(settings.database_url))
    resumed = settings.model_copy(update={"job_lease_seconds": lease})
    deadline = time.monotonic() + 60
    while store.get_job(job.id).status == "running" and time.monotonic() < deadline:
        run_worker(resumed, once=True, store=recording, worker_id="heir")
        time.sleep(0.5)
    final = store.get_job(job.id)
    assert final.status == "succeeded", (final.error, (tmp_path / "worker.log").read_text()[-3000:])
    trials = _trials(store, job.id)
    assert len(trials) == 8
    assert len({t.ray_trial_id for t in trials}) == 8
    assert all(t.status == "completed" for t in trials)
    for trial in trials:
        epochs = [m.epoch for m in store.list_trial_metrics(trial_id=trial.id)]
        assert epochs == [1, 2, 3], (trial.ray_trial_id, epochs)
    rerun = {before[key].id for key in done_before} & set(recording.started)
    assert not rerun, f"completed trials ran again: {rerun}"
    recording.dispose()

    # The timeline keeps the dead worker's phases and goes on with the heir's: the search it
    # left open ended when the heir claimed the job, and nothing was recorded twice.
    timeline = store.job_timeline(job.id)
    phases = [(p.phase, p.worker_id) for p in timeline.phases]
    assert phases == [
        ("queued", None),
        ("planning", "doomed"),
        ("search", "doomed"),
        ("planning", "heir"),
        ("search", "heir"),
        ("recommendation", "heir"),
    ], phases
    _assert_tiled(timeline)
