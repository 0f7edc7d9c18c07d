"""The store's functions on SQLite and PostgreSQL: jobs, leases, trials, results, probes, rungs and
best settings."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import pytest
from lrtune.schemas.jobs import JobSpec, TrialMetric, TrialProbe
from lrtune.service.codecs import decode_cursor, encode_cursor
from lrtune.service.errors import ConflictError, InvalidInputError, NotFoundError
from lrtune.service.store import Store


def _spec(body: dict[str, Any], **changes: Any) -> JobSpec:
    return JobSpec.model_validate({**body, **changes})


# Valid schedules: a job read ranks its finished trials' configurations (its best so far).
SCHEDULES: dict[str, dict[str, Any]] = {
    "fixed": {"policy": "fixed", "lr": 0.1},
    "clr": {"policy": "clr", "base_lr": 0.001, "max_lr": 0.1, "step_size": 10},
}


def _trial(store: Store, job_id: int, policy: str = "fixed", ray_id: str | None = None) -> int:
    trial = store.create_trial(
        job_id=job_id,
        policy=policy,
        schedule=SCHEDULES[policy],
        search_config={"lr": 0.1},
        seed=0,
        ray_trial_id=ray_id,
    )
    return trial.id


def _result(trial_id: int, epoch: int, accuracy: float, store: Store) -> None:
    store.record_trial_results(
        trial_id=trial_id,
        results=[
            TrialMetric(
                epoch=epoch,
                step=epoch * 10,
                lr=0.1,
                train_loss=1.0 / epoch,
                val_loss=1.5 / epoch,
                metrics={"val_accuracy": accuracy},
                elapsed_s=float(epoch),
            )
        ],
    )


def _running_job(store: Store, body: dict[str, Any], **changes: Any) -> int:
    job, _ = store.create_job(spec=_spec(body, **changes))
    claimed = store.claim_next_job(worker_id="w1", lease_seconds=60)
    assert claimed is not None and claimed.id == job.id
    return job.id


def test_create_get_and_page_through_jobs(store: Store, job_body: dict[str, Any]) -> None:
    ids = [store.create_job(spec=_spec(job_body, name=f"job {i}"))[0].id for i in range(5)]
    job = store.get_job(ids[0])
    assert job.status == "queued" and job.name == "job 0"
    assert job.progress.planned == 4  # 2 policies x 2 trials
    assert job.spec.metric is not None and job.spec.metric.mode == "max"

    first = store.list_jobs(limit=2)
    assert [j.id for j in first.items] == ids[::-1][:2]
    second = store.list_jobs(limit=2, cursor=first.next_cursor)
    third = store.list_jobs(limit=2, cursor=second.next_cursor)
    assert [j.id for j in second.items + third.items] == ids[::-1][2:]
    assert third.next_cursor is None


def test_list_jobs_filters_by_status(store: Store, job_body: dict[str, Any]) -> None:
    store.create_job(spec=_spec(job_body))
    second, _ = store.create_job(spec=_spec(job_body))
    store.cancel_job(second.id)
    assert [j.id for j in store.list_jobs(status="cancelled").items] == [second.id]
    assert len(store.list_jobs(status="queued").items) == 1


def test_unknown_ids_are_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.get_job(12345)
    with pytest.raises(NotFoundError):
        store.get_trial(12345)
    with pytest.raises(NotFoundError):
        store.list_trial_metrics(trial_id=12345)
    with pytest.raises(NotFoundError):
        store.cancel_job(12345)


def test_cursor_round_trips_and_garbage_is_invalid() -> None:
    assert decode_cursor(encode_cursor(42)) == 42
    for bad in ("", "!!", "aWQ6eA", encode_cursor(0), "MTIz"):
        with pytest.raises(InvalidInputError) as caught:
            decode_cursor(bad)
        assert caught.value.field == "cursor"


def test_idempotency_key_returns_the_same_job_or_conflicts(
    store: Store, job_body: dict[str, Any]
) -> None:
    job, created = store.create_job(spec=_spec(job_body), idempotency_key="key-1")
    again, created_again = store.create_job(spec=_spec(job_body), idempotency_key="key-1")
    assert created and not created_again and again.id == job.id
    with pytest.raises(ConflictError, match="different job spec"):
        store.create_job(spec=_spec(job_body, name="other"), idempotency_key="key-1")
    assert len(store.list_jobs().items) == 1


def test_cancel_transitions(store: Store, job_body: dict[str, Any]) -> None:
    queued, _ = store.create_job(spec=_spec(job_body))
    assert store.cancel_job(queued.id).status == "cancelled"
    assert store.cancel_job(queued.id).status == "cancelled"

    running = _running_job(store, job_body)
    assert store.cancel_job(running).status == "cancelling"
    assert store.cancel_job(running).status == "cancelling"
    assert store.is_cancel_requested(running)
    # No new trial starts once the cancel has answered.
    with pytest.raises(ConflictError):
        _trial(store, running)
    finished = store.mark_job_cancelled(job_id=running)
    assert finished.status == "cancelled" and finished.finished_at is not None

    done = _running_job(store, job_body)
    store.mark_job_succeeded(job_id=done)
    with pytest.raises(ConflictError, match="succeeded"):
        store.cancel_job(done)


def test_claim_heartbeat_and_lease_expiry(store: Store, job_body: dict[str, Any]) -> None:
    first, _ = store.create_job(spec=_spec(job_body))
    second, _ = store.create_job(spec=_spec(job_body))
    # A lease long enough for the claims below on a loaded machine (0.2 s once expired first).
    claimed = store.claim_next_job(worker_id="a", lease_seconds=1.0)
    assert claimed is not None and claimed.id == first.id  # oldest first
    assert claimed.status == "running" and claimed.started_at is not None
    assert store.mark_job_running(job_id=first.id, worker_id="a")
    assert not store.mark_job_running(job_id=first.id, worker_id="b")
    other = store.claim_next_job(worker_id="b", lease_seconds=60)
    assert other is not None and other.id == second.id
    assert store.claim_next_job(worker_id="c", lease_seconds=60) is None

    assert store.heartbeat(job_id=first.id, worker_id="a", lease_seconds=1.0)
    assert not store.heartbeat(job_id=first.id, worker_id="b", lease_seconds=60)
    time.sleep(1.2)
    # Worker a stopped heartbeating: its job goes to whoever claims next.
    taken = store.claim_next_job(worker_id="c", lease_seconds=60)
    assert taken is not None and taken.id == first.id
    assert not store.heartbeat(job_id=first.id, worker_id="a", lease_seconds=60)


def test_reclaim_expired_jobs(store: Store, job_body: dict[str, Any]) -> None:
    running, _ = store.create_job(spec=_spec(job_body))
    cancelling, _ = store.create_job(spec=_spec(job_body))
    # Leases long enough for two claims, a cancel and a reclaim on a loaded machine.
    store.claim_next_job(worker_id="a", lease_seconds=0.5)
    store.claim_next_job(worker_id="a", lease_seconds=0.5)
    store.cancel_job(cancelling.id)
    assert store.reclaim_expired_jobs() == 0
    time.sleep(0.6)
    assert store.reclaim_expired_jobs() == 2
    assert store.get_job(running.id).status == "queued"
    assert store.get_job(cancelling.id).status == "cancelled"


def test_a_stopping_worker_hands_its_job_back_to_the_queue(
    store: Store, job_body: dict[str, Any]
) -> None:
    job, _ = store.create_job(spec=_spec(job_body))
    store.claim_next_job(worker_id="a", lease_seconds=600)
    assert not store.hand_back_job(job_id=job.id, worker_id="b")  # not b's to hand back
    assert store.hand_back_job(job_id=job.id, worker_id="a")
    queued = store.get_job(job.id)
    assert queued.status == "queued"
    assert [p.phase for p in store.job_timeline(job.id).phases][-1] == "queued"
    # The next worker takes it at once, lease or no lease.
    taken = store.claim_next_job(worker_id="c", lease_seconds=60)
    assert taken is not None and taken.id == job.id
    assert not store.hand_back_job(job_id=job.id, worker_id="a")


def test_job_outcomes(store: Store, job_body: dict[str, Any]) -> None:
    job = _running_job(store, job_body)
    failed = store.mark_job_failed(job_id=job, error="workload crashed: out of memory")
    assert failed.status == "failed" and failed.error == "workload crashed: out of memory"
    with pytest.raises(ConflictError):
        store.mark_job_succeeded(job_id=job)


def test_create_trial_is_idempotent_on_the_ray_trial_id(
    store: Store, job_body: dict[str, Any]
) -> None:
    job = _running_job(store, job_body)
    first = _trial(store, job, ray_id="ray-1")
    assert _trial(store, job, ray_id="ray-1") == first
    assert _trial(store, job, ray_id="ray-2") != first
    with pytest.raises(NotFoundError):
        _trial(store, 9999)


def test_trial_status_timestamps_and_node(store: Store, job_body: dict[str, Any]) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    assert store.get_trial(trial_id).status == "pending"
    running = store.update_trial_status(trial_id=trial_id, status="running", node_id="node-7")
    assert running.started_at is not None and running.node_id == "node-7"
    failed = store.update_trial_status(trial_id=trial_id, status="failed", error="boom")
    assert failed.finished_at is not None and failed.error == "boom"
    with pytest.raises(InvalidInputError):
        store.update_trial_status(trial_id=trial_id, status="exploded")


def test_results_are_stored_once_and_track_last_and_best(
    store: Store, job_body: dict[str, Any]
) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    _result(trial_id, 1, 0.50, store)
    _result(trial_id, 2, 0.80, store)
    _result(trial_id, 2, 0.99, store)  # reported twice: the first report stands
    _result(trial_id, 3, 0.70, store)
    trial = store.get_trial(trial_id)
    assert trial.epochs_done == 3
    assert trial.last_metric == 0.70
    assert trial.best_metric == 0.80  # mode max
    rows = store.list_trial_metrics(trial_id=trial_id)
    assert [r.epoch for r in rows] == [1, 2, 3]
    assert rows[1].metrics == {"val_accuracy": 0.80}


def test_best_metric_honours_mode_min(store: Store, job_body: dict[str, Any]) -> None:
    job = _running_job(store, job_body, metric={"name": "val_loss", "mode": "min"})
    trial_id = _trial(store, job)
    for epoch in (1, 2, 3):
        _result(trial_id, epoch, 0.5, store)  # val_loss = 1.5 / epoch
    assert store.get_trial(trial_id).best_metric == pytest.approx(0.5)


def test_non_finite_values_round_trip(store: Store, job_body: dict[str, Any]) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    store.record_trial_results(
        trial_id=trial_id,
        results=[
            TrialMetric(
                epoch=1,
                step=10,
                lr=math.inf,
                train_loss=math.nan,
                val_loss=-math.inf,
                metrics={"val_accuracy": math.nan, "grad_norm": math.inf, "other": -math.inf},
                elapsed_s=0.5,
            )
        ],
    )
    [row] = store.list_trial_metrics(trial_id=trial_id)
    assert row.lr == math.inf
    assert row.train_loss is not None and math.isnan(row.train_loss)
    assert row.val_loss == -math.inf
    assert math.isnan(row.metrics["val_accuracy"])
    assert row.metrics["grad_norm"] == math.inf and row.metrics["other"] == -math.inf
    trial = store.get_trial(trial_id)
    assert trial.last_metric is not None and math.isnan(trial.last_metric)
    assert trial.best_metric is None  # NaN is never best


def test_search_config_keeps_strings_and_non_finite_numbers(
    store: Store, job_body: dict[str, Any]
) -> None:
    job = _running_job(store, job_body)
    point = {"mode": "triangular", "max_lr": 0.3, "t_mult": 2, "gamma": math.inf}
    trial = store.create_trial(
        job_id=job, policy="clr", schedule={"policy": "clr"}, search_config=point, seed=1
    )
    assert store.get_trial(trial.id).search_config == point


def test_batch_of_results_in_one_call(store: Store, job_body: dict[str, Any]) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    results = [
        TrialMetric(epoch=e, step=e, lr=0.1, metrics={"val_accuracy": e / 10}, elapsed_s=e)
        for e in range(1, 8)
    ]
    trial = store.record_trial_results(trial_id=trial_id, results=results)
    assert trial.epochs_done == 7 and trial.best_metric == pytest.approx(0.7)
    assert len(store.list_trial_metrics(trial_id=trial_id)) == 7


def test_progress_and_best_so_far(store: Store, job_body: dict[str, Any]) -> None:
    job = _running_job(store, job_body)
    a, b, c = _trial(store, job, "fixed"), _trial(store, job, "clr"), _trial(store, job, "clr")
    _result(a, 1, 0.6, store)
    _result(b, 1, 0.9, store)
    store.update_trial_status(trial_id=a, status="completed")
    store.update_trial_status(trial_id=b, status="running")
    store.update_trial_status(trial_id=c, status="diverged")
    got = store.get_job(job)
    assert got.progress.model_dump() == {
        "planned": 4,
        "pending": 0,
        "running": 1,
        "completed": 1,
        "pruned": 0,
        "diverged": 1,
        "failed": 0,
    }
    # The recommendation's leader: b's 0.9 is no evidence while it runs, c diverged.
    assert got.best is not None
    assert (got.best.trial_id, got.best.policy, got.best.value) == (a, "fixed", 0.6)


def test_trials_page_with_filters(store: Store, job_body: dict[str, Any]) -> None:
    job = _running_job(store, job_body)
    ids = [_trial(store, job, "fixed" if i % 2 else "clr") for i in range(5)]
    store.update_trial_status(trial_id=ids[0], status="completed")
    page = store.list_trials(job_id=job, limit=3)
    assert [t.id for t in page.items] == ids[::-1][:3]
    rest = store.list_trials(job_id=job, limit=3, cursor=page.next_cursor)
    assert [t.id for t in rest.items] == ids[::-1][3:] and rest.next_cursor is None
    assert {t.id for t in store.list_trials(job_id=job, policy="fixed").items} == {ids[1], ids[3]}
    assert [t.id for t in store.list_trials(job_id=job, status="completed").items] == [ids[0]]
    with pytest.raises(NotFoundError):
        store.list_trials(job_id=9999)


def test_best_settings_across_succeeded_jobs(store: Store, job_body: dict[str, Any]) -> None:
    def finished_job(values: dict[str, list[float]], *, succeed: bool = True) -> list[int]:
        job = _running_job(store, job_body)
        trial_ids = []
        for policy, accuracies in values.items():
            for accuracy in accuracies:
                trial_id = _trial(store, job, policy)
                _result(trial_id, 1, accuracy, store)
                store.update_trial_status(trial_id=trial_id, status="completed")
                trial_ids.append(trial_id)
        if succeed:
            store.mark_job_succeeded(job_id=job)
        return trial_ids

    first = finished_job({"fixed": [0.5, 0.7], "clr": [0.8]})
    second = finished_job({"fixed": [0.75], "clr": [0.6]})
    finished_job({"fixed": [0.99]}, succeed=False)  # a running job does not count

    best = {b.policy: b for b in store.best_settings(workload="digits")}
    assert best["fixed"].trial_id == second[0] and best["fixed"].value == 0.75
    assert best["clr"].trial_id == first[2] and best["clr"].value == 0.8
    assert best["clr"].schedule == SCHEDULES["clr"]
    assert best["clr"].mode == "max" and best["clr"].metric == "val_accuracy"
    assert [b.policy for b in store.best_settings(policy="clr")] == ["clr"]
    assert store.best_settings(workload="mnist1d") == []
    assert store.best_settings(metric="val_loss") == []


def _probe(epoch: int, accuracy: float, decision: str | None = None, **changes: Any) -> TrialProbe:
    return TrialProbe.model_validate(
        {
            "epoch": epoch,
            "step": epoch * 10,
            "cooldown_steps": epoch * 10,
            "train_loss": 0.8 / epoch,
            "val_loss": 1.2 / epoch,
            "metrics": {"val_accuracy": accuracy},
            "elapsed_s": 0.25,
            "decision": decision,
            **changes,
        }
    )


def test_probes_round_trip_with_non_finite_values(store: Store, job_body: dict[str, Any]) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    blown_up = _probe(
        3,
        math.nan,
        "stop",
        train_loss=math.inf,
        val_loss=-math.inf,
        metrics={"val_accuracy": math.nan, "grad_norm": math.inf, "other": -math.inf},
    )
    store.record_trial_probes(trial_id=trial_id, probes=[blown_up, _probe(1, 0.6, "continue")])
    first, third = store.list_trial_probes(trial_id)  # in epoch order
    assert first == _probe(1, 0.6, "continue")
    assert (third.epoch, third.step, third.cooldown_steps, third.decision) == (3, 30, 30, "stop")
    assert third.train_loss == math.inf and third.val_loss == -math.inf
    assert math.isnan(third.metrics["val_accuracy"])
    assert third.metrics["grad_norm"] == math.inf and third.metrics["other"] == -math.inf
    # Probes are not epochs: the trial's progress and metrics are untouched.
    assert store.get_trial(trial_id).epochs_done == 0
    assert store.list_trial_metrics(trial_id=trial_id) == []


def test_probes_are_stored_once_and_a_decision_fills_a_missing_one(
    store: Store, job_body: dict[str, Any]
) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    store.record_trial_probes(trial_id=trial_id, probes=[_probe(1, 0.5), _probe(2, 0.6, "stop")])
    # Reported again (a restored trial, Tune delivering twice): the first values stand, but the
    # decision that was missing is filled in; a decision already stored is never replaced.
    store.record_trial_probes(
        trial_id=trial_id, probes=[_probe(1, 0.9, "continue"), _probe(2, 0.9, "continue")]
    )
    # The same epoch twice in one call, the decision on the second copy.
    store.record_trial_probes(trial_id=trial_id, probes=[_probe(3, 0.7), _probe(3, 0.1, "stop")])
    store.record_trial_probes(trial_id=trial_id, probes=[_probe(3, 0.2)])  # None fills nothing
    probes = store.list_trial_probes(trial_id)
    assert [(p.epoch, p.metrics["val_accuracy"], p.decision) for p in probes] == [
        (1, 0.5, "continue"),
        (2, 0.6, "stop"),
        (3, 0.7, "stop"),
    ]
    store.record_trial_probes(trial_id=trial_id, probes=[])
    assert len(store.list_trial_probes(trial_id)) == 3


def test_probes_of_unknown_or_other_tenants_trials_are_not_found(
    store: Store, job_body: dict[str, Any]
) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    other = store.ensure_tenant(name="other")
    with pytest.raises(NotFoundError, match="no trial with id 12345"):
        store.list_trial_probes(12345)
    with pytest.raises(NotFoundError, match=f"no trial with id {trial_id}"):
        store.list_trial_probes(trial_id, tenant_id=other.id)
    assert store.list_trial_probes(trial_id, tenant_id=1) == []
    with pytest.raises(NotFoundError):
        store.record_trial_probes(trial_id=12345, probes=[_probe(1, 0.5)])
    with pytest.raises(NotFoundError):
        store.set_restored_from_epoch(trial_id=12345, epoch=1)


def test_restored_from_epoch_round_trips(store: Store, job_body: dict[str, Any]) -> None:
    trial_id = _trial(store, _running_job(store, job_body))
    assert store.get_trial(trial_id).restored_from_epoch is None
    store.set_restored_from_epoch(trial_id=trial_id, epoch=2)
    assert store.get_trial(trial_id).restored_from_epoch == 2
    store.set_restored_from_epoch(trial_id=trial_id, epoch=4)  # the latest restore counts
    (listed,) = store.list_trials(job_id=store.get_trial(trial_id).job_id).items
    assert listed.restored_from_epoch == 4
    with pytest.raises(InvalidInputError):
        store.set_restored_from_epoch(trial_id=trial_id, epoch=-1)


def test_job_rungs_rank_trials_by_their_probes_for_max(
    store: Store, job_body: dict[str, Any]
) -> None:
    job = _running_job(store, job_body)  # val_accuracy, max
    a, b, c, d = (_trial(store, job, policy) for policy in ("fixed", "clr", "clr", "fixed"))
    for trial_id, accuracy in ((a, 0.5), (b, 0.4), (c, 0.3)):
        _result(trial_id, 1, accuracy, store)
    # Judged by the probe, c (lowest raw accuracy) is best: its rate was the highest.
    store.record_trial_probes(trial_id=a, probes=[_probe(1, 0.6, "continue")])
    store.record_trial_probes(trial_id=b, probes=[_probe(1, 0.55, "stop")])
    store.record_trial_probes(trial_id=c, probes=[_probe(1, 0.8, "continue")])
    store.record_trial_probes(trial_id=d, probes=[_probe(1, math.nan, "stop")])  # no epoch row
    _result(a, 3, 0.7, store)
    store.record_trial_probes(trial_id=a, probes=[_probe(3, 0.75)])
    store.record_trial_probes(trial_id=c, probes=[_probe(3, 0.9, "continue")])  # no epoch 3 row

    first, third = store.job_rungs(job)
    assert first.epoch == 1 and third.epoch == 3
    assert [(t.trial_id, t.policy, t.raw, t.judged, t.decision) for t in first.trials[:3]] == [
        (c, "clr", 0.3, 0.8, "continue"),
        (a, "fixed", 0.5, 0.6, "continue"),
        (b, "clr", 0.4, 0.55, "stop"),
    ]
    nan_trial = first.trials[3]
    assert nan_trial.trial_id == d and nan_trial.raw is None
    assert nan_trial.judged is not None and math.isnan(nan_trial.judged)
    assert [(t.trial_id, t.raw, t.judged, t.decision) for t in third.trials] == [
        (c, None, 0.9, "continue"),
        (a, 0.7, 0.75, None),
    ]


def test_job_rungs_rank_trials_by_their_probes_for_min(
    store: Store, job_body: dict[str, Any]
) -> None:
    job = _running_job(store, job_body, metric={"name": "val_loss", "mode": "min"})
    other_job = _running_job(store, job_body)
    a, b, c = (_trial(store, job) for _ in range(3))
    for trial_id in (a, b, c):
        _result(trial_id, 2, 0.5, store)  # val_loss 1.5 / 2
    store.record_trial_probes(trial_id=a, probes=[_probe(2, 0.5, val_loss=0.4)])
    store.record_trial_probes(trial_id=b, probes=[_probe(2, 0.5, val_loss=0.2)])
    store.record_trial_probes(trial_id=c, probes=[_probe(2, 0.5, val_loss=math.inf)])
    # Another job's probes are not this job's rungs.
    store.record_trial_probes(trial_id=_trial(store, other_job), probes=[_probe(1, 0.5)])

    (rung,) = store.job_rungs(job)
    assert rung.epoch == 2
    assert [(t.trial_id, t.raw, t.judged) for t in rung.trials] == [
        (b, 0.75, 0.2),
        (a, 0.75, 0.4),
        (c, 0.75, math.inf),  # non-finite: last whatever the mode
    ]
    assert [r.epoch for r in store.job_rungs(other_job)] == [1]


def test_job_rungs_of_unknown_or_other_tenants_jobs_are_not_found(
    store: Store, job_body: dict[str, Any]
) -> None:
    job = _running_job(store, job_body)
    other = store.ensure_tenant(name="other")
    assert store.job_rungs(job) == []  # no probe yet
    with pytest.raises(NotFoundError, match="no job with id 12345"):
        store.job_rungs(12345)
    with pytest.raises(NotFoundError, match=f"no job with id {job}"):
        store.job_rungs(job, tenant_id=other.id)


def _tiles(phases: list[Any]) -> None:
    """Each phase starts where the one before it ended; only the last may still run."""
    for before, after in itertools.pairwise(phases):
        assert before.ended_at is not None, before
        assert after.started_at == before.ended_at, (before, after)
    for phase in phases:
        assert phase.ended_at is None or phase.ended_at >= phase.started_at


def test_job_timeline_tiles_the_job_from_submission_to_recommendation(
    store: Store, job_body: dict[str, Any]
) -> None:
    job, _ = store.create_job(spec=_spec(job_body))
    queued = store.job_timeline(job.id)
    assert [p.phase for p in queued.phases] == ["queued"]
    assert queued.phases[0].started_at == job.created_at and queued.phases[0].ended_at is None
    assert queued.wall_clock_s is None and queued.trials == []

    store.claim_next_job(worker_id="w1", lease_seconds=60)
    for phase in ("planning", "search", "confirmation"):
        assert store.begin_job_phase(job_id=job.id, phase=phase, worker_id="w1")
        time.sleep(0.02)
    # Another worker (one that lost the lease) records nothing.
    assert not store.begin_job_phase(job_id=job.id, phase="search", worker_id="w2")
    trial = _trial(store, job.id)
    store.update_trial_status(trial_id=trial, status="running")
    for epoch in (1, 2):
        store.record_trial_results(
            trial_id=trial,
            results=[
                TrialMetric(
                    epoch=epoch,
                    step=10 * epoch,
                    lr=0.1,
                    train_loss=1.0,
                    val_loss=1.0,
                    metrics={"val_accuracy": 0.5},
                    elapsed_s=0.01 * epoch,
                )
            ],
        )
    unfinished = _trial(store, job.id, policy="clr")
    time.sleep(0.05)
    store.update_trial_status(trial_id=trial, status="completed")
    store.mark_job_succeeded(job_id=job.id)
    assert store.begin_job_phase(job_id=job.id, phase="recommendation", worker_id="w1")
    # Once only, and only from the worker the job ended with.
    assert not store.begin_job_phase(job_id=job.id, phase="recommendation", worker_id="w1")
    store.end_job_phase(job_id=job.id, phase="recommendation", worker_id="w1")

    timeline = store.job_timeline(job.id)
    finished = store.get_job(job.id)
    names = [p.phase for p in timeline.phases]
    assert names == ["queued", "planning", "search", "confirmation", "recommendation"]
    _tiles(timeline.phases)
    assert [p.worker_id for p in timeline.phases] == [None, "w1", "w1", "w1", "w1"]
    # The job's last working phase ended with it; the recommendation follows from there.
    assert timeline.phases[3].ended_at == finished.finished_at
    assert timeline.phases[0].started_at == finished.created_at
    assert timeline.status == "succeeded"
    assert timeline.wall_clock_s == pytest.approx(
        (finished.finished_at - finished.created_at).total_seconds()  # type: ignore[operator]
    )
    assert timeline.phases_s == pytest.approx(sum(p.seconds for p in timeline.phases))
    assert timeline.phases_s >= timeline.wall_clock_s
    assert timeline.phases_s - timeline.wall_clock_s == pytest.approx(timeline.phases[-1].seconds)

    done, running = timeline.trials
    assert (done.trial_id, running.trial_id) == (trial, unfinished)
    assert done.busy_s == pytest.approx(0.02)  # its last epoch's elapsed_s
    assert done.first_epoch_s == pytest.approx(0.01)
    assert done.started_at == store.get_trial(trial).started_at
    assert done.wall_s is not None and done.wall_s >= 0.05
    assert done.start_up_s == pytest.approx(done.wall_s - 0.02)
    assert (running.busy_s, running.wall_s, running.start_up_s) == (0.0, None, None)
    # Never set running: it counts from its creation.
    assert running.first_epoch_s == 0.0
    assert running.started_at == store.get_trial(unfinished).created_at
    assert timeline.trials_busy_s == pytest.approx(0.02)
    assert timeline.trials_start_up_s == pytest.approx(done.start_up_s)


def test_a_requeued_job_waits_again_and_its_new_worker_continues_the_timeline(
    store: Store, job_body: dict[str, Any]
) -> None:
    job, _ = store.create_job(spec=_spec(job_body))
    store.claim_next_job(worker_id="dead", lease_seconds=0.05)
    assert store.begin_job_phase(job_id=job.id, phase="planning", worker_id="dead")
    assert store.begin_job_phase(job_id=job.id, phase="search", worker_id="dead")
    time.sleep(0.1)
    assert store.reclaim_expired_jobs() == 1
    assert [p.phase for p in store.job_timeline(job.id).phases][-1] == "queued"
    # A stale worker cannot write into the requeued job's timeline.
    assert not store.begin_job_phase(job_id=job.id, phase="confirmation", worker_id="dead")
    store.claim_next_job(worker_id="heir", lease_seconds=60)
    assert store.begin_job_phase(job_id=job.id, phase="planning", worker_id="heir")
    assert store.begin_job_phase(job_id=job.id, phase="search", worker_id="heir")
    store.mark_job_failed(job_id=job.id, error="boom")

    timeline = store.job_timeline(job.id)
    phases = [(p.phase, p.worker_id) for p in timeline.phases]
    assert phases == [
        ("queued", None),
        ("planning", "dead"),
        ("search", "dead"),
        ("queued", None),
        ("planning", "heir"),
        ("search", "heir"),
    ]
    _tiles(timeline.phases)
    assert timeline.phases[-1].ended_at == store.get_job(job.id).finished_at
    assert timeline.wall_clock_s is not None
    assert timeline.phases_s == pytest.approx(timeline.wall_clock_s)
    # A failed job takes no recommendation phase.
    assert not store.begin_job_phase(job_id=job.id, phase="recommendation", worker_id="heir")


def test_a_claim_of_an_expired_job_ends_the_dead_workers_phase(
    store: Store, job_body: dict[str, Any]
) -> None:
    job, _ = store.create_job(spec=_spec(job_body))
    store.claim_next_job(worker_id="dead", lease_seconds=0.05)
    assert store.begin_job_phase(job_id=job.id, phase="search", worker_id="dead")
    time.sleep(0.1)
    claimed = store.claim_next_job(worker_id="heir", lease_seconds=60)
    assert claimed is not None and claimed.id == job.id
    assert store.begin_job_phase(job_id=job.id, phase="search", worker_id="heir")
    phases = store.job_timeline(job.id).phases
    assert [(p.phase, p.worker_id) for p in phases] == [
        ("queued", None),
        ("search", "dead"),
        ("search", "heir"),
    ]
    _tiles(phases)
    assert phases[-1].ended_at is None


def test_cancelling_a_queued_job_ends_its_queued_phase(
    store: Store, job_body: dict[str, Any]
) -> None:
    job, _ = store.create_job(spec=_spec(job_body))
    store.cancel_job(job.id)
    timeline = store.job_timeline(job.id)
    (queued,) = timeline.phases
    assert queued.ended_at == store.get_job(job.id).finished_at
    assert timeline.phases_s == pytest.approx(timeline.wall_clock_s or -1.0)


def test_job_timeline_of_unknown_or_other_tenants_jobs_is_not_found(
    store: Store, job_body: dict[str, Any]
) -> None:
    other = store.ensure_tenant(name="other")
    job, _ = store.create_job(spec=_spec(job_body), tenant_id=other.id)
    assert store.job_timeline(job.id, tenant_id=other.id).job_id == job.id
    with pytest.raises(NotFoundError):
        store.job_timeline(job.id, tenant_id=1)
    with pytest.raises(NotFoundError):
        store.job_timeline(9999)
    with pytest.raises(InvalidInputError):
        store.begin_job_phase(job_id=job.id, phase="queued", worker_id="w1")
