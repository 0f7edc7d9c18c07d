"""Training-length sweeps as jobs: the spec's `horizons` (422s naming the field), and a sweep
through the real worker and Ray to its recommendation, each horizon a trial in SQL equal to
the trial that would have run alone."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.trial import run_trial

SWEEP = {
    "name": "how long to train",
    "workload": {"name": "digits", "params": {"model": "mlp", "batch_size": 256}},
    "metric": {"name": "val_accuracy", "mode": "max"},
    "policies": ["wsd", "fixed"],
    "horizons": [1, 2, 3],
    "budget": {"trials_per_policy": 1},
}

# Each rejected sweep and the field path the 422 must name.
INVALID_SWEEPS: list[tuple[str, dict[str, Any], str]] = [
    ("unsorted", {"horizons": [1, 3, 2]}, "horizons.2"),
    ("repeated", {"horizons": [1, 1, 3]}, "horizons.1"),
    (
        "beyond the budget",
        {"horizons": [1, 2, 4], "budget": {"epochs": 3, "trials_per_policy": 1}},
        "horizons.2",
    ),
    ("not a length", {"horizons": [0, 3]}, "horizons.0"),
    (
        "short of the budget",
        {"horizons": [1, 2], "budget": {"epochs": 3, "trials_per_policy": 1}},
        "horizons",
    ),
    ("empty", {"horizons": []}, "horizons"),
    ("without wsd", {"policies": ["fixed", "cosine"]}, "horizons"),
    (
        "wsd length searched",
        {"policies": [{"policy": "wsd", "search": {"total_steps_frac": 0.5}}]},
        "horizons",
    ),
    ("early stopping", {"early_stopping": {"kind": "asha"}}, "horizons"),
    ("confirmation", {"confirm": {"top_k": 1, "seeds": 2}}, "horizons"),
]


@pytest.mark.parametrize(
    ("change", "path"),
    [(c, p) for _, c, p in INVALID_SWEEPS],
    ids=[n for n, _, _ in INVALID_SWEEPS],
)
def test_invalid_horizons_are_422_naming_the_field(
    api_client: TestClient, change: dict[str, Any], path: str
) -> None:
    answer = api_client.post("/v1/jobs", json={**SWEEP, **change})
    assert answer.status_code == 422, answer.text
    assert path in [field["path"] for field in answer.json()["error"]["fields"]], answer.text


def test_a_sweep_takes_its_budget_from_its_longest_horizon(api_client: TestClient) -> None:
    answer = api_client.post("/v1/jobs", json=SWEEP)
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["spec"]["budget"]["epochs"] == 3
    assert job["progress"]["planned"] == 4  # wsd at 3 lengths, fixed once


@pytest.mark.ray
def test_a_sweep_job_runs_every_horizon_to_its_recommendation(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    spec = JobSpec.model_validate(SWEEP)
    job, _ = store.create_job(spec=spec)
    run_worker(settings, once=True, store=store)
    assert store.get_job(job.id).status == "succeeded", store.get_job(job.id).error

    trials = store.list_trials(job_id=job.id, limit=100).items
    assert all(t.status == "completed" for t in trials), [(t.ray_trial_id, t.error) for t in trials]
    swept = sorted(
        (t for t in trials if t.policy == "wsd"), key=lambda t: t.search_config["horizon_epochs"]
    )
    assert [t.ray_trial_id for t in swept] == ["wsd-0-h1", "wsd-0-h2", "wsd-0"]
    assert [t.epochs_done for t in swept] == [1, 2, 3]
    assert all(t.search_config["trunk"] == "wsd-0" for t in swept)
    steps_per_epoch = swept[-1].schedule["total_steps"] // 3
    for trial in swept:
        assert trial.schedule["total_steps"] == trial.epochs_done * steps_per_epoch
        assert trial.schedule["lr"] == swept[-1].schedule["lr"]
    assert "fork_step" not in swept[-1].search_config  # the trunk is the longest horizon
    assert 0 < swept[0].search_config["fork_step"] < swept[1].search_config["fork_step"]

    # The 2-epoch horizon, forked from the trunk, is its own trial run alone, number for number.
    alone: list[EpochResult] = []
    run_trial(
        TrialConfig(
            workload=spec.workload,
            optimizer=spec.optimizer,
            schedule=parse_schedule(swept[1].schedule),
            epochs=2,
            seed=swept[1].seed,
            shuffle_seed=swept[1].search_config["shuffle_seed"],  # the job's data order
            metric="val_accuracy",
            mode="max",
        ),
        alone.append,
    )
    stored = store.list_trial_metrics(trial_id=swept[1].id)
    assert [(m.epoch, m.step, m.lr, m.train_loss, m.val_loss, m.metrics) for m in stored] == [
        (r.epoch, r.step, r.lr, r.train_loss, r.val_loss, r.metrics) for r in alone
    ]

    answer = api_client.get(f"/v1/jobs/{job.id}/recommendation")
    assert answer.status_code == 200, answer.text
    assert answer.json()["final"] is True


@pytest.mark.ray
def test_a_diverging_trunk_takes_the_horizons_it_had_not_forked_with_it(
    ray_local: str, settings: Settings, store: Store
) -> None:
    body = {
        **SWEEP,
        "policies": [{"policy": "wsd", "search": {"lr": 1e4}}],
        "horizons": [1, 2],
    }
    job, _ = store.create_job(spec=JobSpec.model_validate(body))
    run_worker(settings, once=True, store=store)
    assert store.get_job(job.id).status == "succeeded", store.get_job(job.id).error
    trials = {t.ray_trial_id: t for t in store.list_trials(job_id=job.id, limit=100).items}
    assert set(trials) == {"wsd-0", "wsd-0-h1"}
    assert {t.status for t in trials.values()} == {"diverged"}
    trunk, horizon = (
        [(m.epoch, m.step, m.lr, m.train_loss, m.val_loss, m.metrics) for m in curve]
        for curve in (
            store.list_trial_metrics(trial_id=trials[key].id) for key in ("wsd-0", "wsd-0-h1")
        )
    )
    # The horizon never forked: its own trial would have diverged on the same steps.
    assert [row[0] for row in trunk] == [1] and repr(horizon) == repr(trunk)
    assert trials["wsd-0-h1"].search_config["fork_step"] is None
