"""GET /v1/jobs/{id}/recommendation and /range-test over trials written by the store: live
while the job runs, stored once it succeeded, confirmation trials preferred, 404s in words."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec, TrialStatus
from lrtune.service.recommendations import publish_recommendation
from lrtune.service.store import Store
from sqlalchemy import event

from tests.conftest import JobSeeder


def _job(seed_job: JobSeeder, **overrides: Any) -> int:
    body: dict[str, Any] = {
        "workload": {"name": "digits"},
        "metric": {"name": "val_accuracy", "mode": "max"},
        "policies": ["fixed", "clr"],
        "budget": {"epochs": 2, "trials_per_policy": 2},
    }
    return seed_job.job({**body, **overrides})


def _trial(
    seed_job: JobSeeder,
    job_id: int,
    *,
    lr: float,
    values: list[float],
    seed: int = 0,
    phase: str = "search",
    status: TrialStatus | None = "completed",
) -> int:
    """A fixed-rate trial whose epochs (7 steps each) reach `values` of val_accuracy."""
    return seed_job.trial(
        job_id,
        schedule={"policy": "fixed", "lr": lr},
        search_config={"lr": lr},
        seed=seed,
        phase=phase,
        status=status,
        epochs=[seed_job.epoch(e, v, step=7 * e, lr=lr) for e, v in enumerate(values, start=1)],
    )


def test_404s_say_what_is_missing(api_client: TestClient, seed_job: JobSeeder) -> None:
    job_id = _job(seed_job)
    answer = api_client.get(f"/v1/jobs/{job_id}/recommendation")
    assert answer.status_code == 404
    assert "no trial has finished its budget" in answer.json()["error"]["message"]
    answer = api_client.get(f"/v1/jobs/{job_id}/range-test")
    assert answer.status_code == 404
    assert 'without lr_bounds "auto"' in answer.json()["error"]["message"]
    auto = _job(seed_job, lr_bounds="auto")
    message = api_client.get(f"/v1/jobs/{auto}/range-test").json()["error"]["message"]
    assert "no LR range test yet" in message
    for path in ("recommendation", "range-test"):
        missing = api_client.get(f"/v1/jobs/424242/{path}")
        assert missing.status_code == 404 and "no job with id 424242" in missing.text


def test_live_while_running_then_final_and_stored(
    api_client: TestClient, store: Store, seed_job: JobSeeder
) -> None:
    job_id = _job(seed_job)
    first = _trial(seed_job, job_id, lr=0.1, values=[0.5, 0.8])
    _trial(seed_job, job_id, lr=0.01, values=[0.4, 0.6])
    # A running trial with a higher value is not evidence yet.
    running = _trial(seed_job, job_id, lr=0.3, values=[0.99], status=None)
    live = api_client.get(f"/v1/jobs/{job_id}/recommendation").json()
    assert live["final"] is False
    assert live["winner"]["trial_ids"] == [str(first)]
    assert live["winner"]["metric_mean"] == pytest.approx(0.8)
    assert live["rationale"].startswith("Best so far (the job is still running)")
    # steps_per_epoch 7 (the step after epoch 1) x 2 epochs: the snippet's training length.
    assert "lr_mults" in live["code"]["pytorch"]

    store.update_trial_status(trial_id=running, status="pruned")
    store.mark_job_succeeded(job_id=job_id)
    final = api_client.get(f"/v1/jobs/{job_id}/recommendation").json()
    assert final["final"] is True and final["winner"]["trial_ids"] == [str(first)]
    assert store.get_saved_recommendation(job_id) is None
    saved = publish_recommendation(store, job_id=job_id)
    assert saved is not None and saved.final
    stored = store.get_saved_recommendation(job_id)
    assert stored is not None
    assert api_client.get(f"/v1/jobs/{job_id}/recommendation").json() == stored.model_dump(
        mode="json"
    )


def test_confirmation_trials_replace_the_search_trial_of_their_policy(
    api_client: TestClient, seed_job: JobSeeder
) -> None:
    job_id = _job(seed_job, confirm={"top_k": 1, "seeds": 2})
    _trial(seed_job, job_id, lr=0.1, values=[0.5, 0.95])  # the lucky search seed
    confirm = [
        _trial(seed_job, job_id, lr=0.1, values=[0.5, v], seed=s, phase="confirm")
        for s, v in ((11, 0.7), (12, 0.8))
    ]
    # A diverged trial counts as the worst value, whatever its last epoch said.
    _trial(seed_job, job_id, lr=5.0, values=[0.99, math.nan], seed=3, status="diverged")
    reco = api_client.get(f"/v1/jobs/{job_id}/recommendation").json()
    winner = reco["winner"]
    assert sorted(winner["trial_ids"]) == sorted(str(i) for i in confirm)
    assert winner["n_seeds"] == 2
    assert winner["metric_mean"] == pytest.approx(0.75)
    assert winner["metric_std"] == pytest.approx(math.sqrt(0.005))
    assert [t["phase"] for t in api_client.get(f"/v1/jobs/{job_id}/trials").json()["items"]] == [
        "search",
        "confirm",
        "confirm",
        "search",
    ]


def test_recommendation_inputs_read_every_trial_in_one_query(
    store: Store, seed_job: JobSeeder
) -> None:
    job_id = _job(seed_job)
    for index in range(12):
        _trial(seed_job, job_id, lr=0.01 * (index + 1), values=[0.1, 0.2, 0.3], seed=index)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        inputs = store.recommendation_inputs(job_id)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert len(inputs.trials) == 12
    assert all(inputs.metric_values[t.id] == [0.1, 0.2, 0.3] for t in inputs.trials)
    assert inputs.steps_per_epoch == 7
    # The job row, its progress counts and best trial, then one query for trials and epochs.
    assert len([s for s in statements if "trial_metrics" in s]) == 1
    assert len(statements) <= 5, statements


def test_planned_trials_count_confirmation_runs_that_can_exist() -> None:
    def planned(top_k: int, seeds: int, trials: int) -> int:
        return JobSpec.model_validate(
            {
                "workload": {"name": "digits"},
                "policies": ["fixed", "clr", "sgdr"],
                "budget": {"epochs": 1, "trials_per_policy": trials},
                "confirm": {"top_k": top_k, "seeds": seeds},
            }
        ).planned_trials

    assert planned(1, 3, 4) == 3 * (4 + 3)
    # top_k above trials_per_policy: a policy has only that many configurations to confirm.
    assert planned(5, 2, 2) == 3 * (2 + 2 * 2)
