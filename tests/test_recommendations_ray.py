"""Range test, lr_bounds "auto", confirmation and the recommendation through the real worker
(a local Ray on 2 CPUs) and the real API; budgets are tiny (digits mlp, 1-2 epochs)."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import Job, JobSpec, Trial
from lrtune.schemas.recommendations import BoundSuggestion
from lrtune.schemas.search import DEFAULT_SEARCH_SPACES
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.lr_range_test import derive_search_spaces
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.ray


def _run(settings: Settings, store: Store, body: dict[str, Any]) -> Job:
    job, _ = store.create_job(spec=JobSpec.model_validate(body))
    run_worker(settings, once=True, store=store)
    return store.get_job(job.id)


def _trials(store: Store, job_id: int) -> list[Trial]:
    return sorted(store.list_trials(job_id=job_id, limit=500).items, key=lambda t: t.id)


DIGITS = {"name": "digits", "params": {"model": "mlp"}}
SHORT_TEST = {"iterations": 40, "min_lr": 1e-5, "max_lr": 10.0}


def test_range_test_job_runs_and_its_curve_is_served(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    job = _run(
        settings,
        store,
        {
            "kind": "range_test",
            "workload": DIGITS,
            "budget": {"epochs": 1, "trials_per_policy": 1},
            "range_test": SHORT_TEST,
        },
    )
    assert job.status == "succeeded", job.error
    assert job.progress.planned == 0 and _trials(store, job.id) == []
    answer = api_client.get(f"/v1/jobs/{job.id}/range-test")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["lr"]) == len(body["loss"]) == len(body["smoothed_loss"]) == body["iterations"]
    assert 5 <= body["iterations"] <= 40
    assert body["lr"][0] == pytest.approx(1e-5)
    assert all(b > a for a, b in zip(body["lr"], body["lr"][1:], strict=False))
    hint = body["suggestion"]
    assert 0 < hint["min_lr"] < hint["max_lr"] < 10.0
    assert hint["min_method"] and hint["max_method"]
    # A blown-up loss is served as its JSON spelling, not dropped.
    assert all(isinstance(v, float) or v in ("NaN", "Infinity") for v in body["loss"])
    assert api_client.get(f"/v1/jobs/{job.id}/recommendation").status_code == 404


def test_auto_bounds_record_the_derived_spaces_and_trials_stay_inside(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    job = _run(
        settings,
        store,
        {
            "workload": DIGITS,
            "policies": ["fixed", {"policy": "clr", "search": {"mode": "triangular2"}}],
            "lr_bounds": "auto",
            "range_test": SHORT_TEST,
            "budget": {"epochs": 1, "trials_per_policy": 2, "max_concurrent_trials": 2},
        },
    )
    assert job.status == "succeeded", job.error
    hint = BoundSuggestion.model_validate(
        api_client.get(f"/v1/jobs/{job.id}/range-test").json()["suggestion"]
    )
    expected = derive_search_spaces(
        policies=["fixed", "clr"],
        bounds=hint,
        base_spaces=DEFAULT_SEARCH_SPACES,
        overrides={"clr": {"mode": "triangular2"}},
    )
    served = api_client.get(f"/v1/jobs/{job.id}").json()["search_spaces"]
    assert served == json.loads(json.dumps(expected))
    assert served["clr"]["mode"] == "triangular2"  # the user's override wins
    trials = _trials(store, job.id)
    assert len(trials) == 4 and {t.phase for t in trials} == {"search"}
    for trial in trials:
        for field, domain in served[trial.policy].items():
            if isinstance(domain, dict) and "loguniform" in domain:
                low, high = domain["loguniform"]
                assert low <= trial.search_config[field] <= high, (trial.policy, field)
                assert low <= trial.schedule[field] <= high
        if trial.policy == "fixed":
            assert hint.max_lr / 3 <= trial.schedule["lr"] <= hint.max_lr


def test_confirmation_reruns_top_configs_and_the_recommendation_matches_sql(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient, database_url: str
) -> None:
    job = _run(
        settings,
        store,
        {
            "workload": DIGITS,
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": ["fixed", "exponential"],
            "budget": {"epochs": 2, "trials_per_policy": 2, "max_concurrent_trials": 2},
            "search": {"algorithm": "random", "seed": 3},
            "confirm": {"top_k": 1, "seeds": 3},
        },
    )
    assert job.status == "succeeded", job.error
    trials = _trials(store, job.id)
    confirm = [t for t in trials if t.phase == "confirm"]
    # top_k 1 x 3 seeds per policy, on top of 2 search trials per policy; planned = ran.
    assert len(confirm) == 2 * 1 * 3
    assert job.progress.planned == len(trials) == 2 * 2 + 6
    assert {t.status for t in confirm} == {"completed"}
    search_seeds = {t.seed for t in trials if t.phase == "search"}
    assert len({t.seed for t in confirm}) == 3 and not search_seeds & {t.seed for t in confirm}
    for policy in ("fixed", "exponential"):
        # The confirmed config is the policy's best search trial (seed luck included).
        searched = [t for t in trials if t.phase == "search" and t.policy == policy]
        best = max(searched, key=lambda t: t.last_metric or -math.inf)
        assert {json.dumps(t.schedule, sort_keys=True) for t in confirm if t.policy == policy} == {
            json.dumps(best.schedule, sort_keys=True)
        }

    answer = api_client.get(f"/v1/jobs/{job.id}/recommendation")
    assert answer.status_code == 200, answer.text
    reco = answer.json()
    assert reco["final"] is True
    winner = reco["winner"]
    # By hand, in SQL: the winner's confirmation trials and their last epoch's val_accuracy.
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT t.id, t.policy, m.metrics FROM trials t JOIN trial_metrics m "
                    "ON m.trial_id = t.id AND m.epoch = t.epochs_done "
                    "WHERE t.job_id = :job AND t.phase = 'confirm' ORDER BY t.id"
                ),
                {"job": job.id},
            ).all()
            saved = connection.execute(
                text("SELECT final FROM recommendations WHERE job_id = :job"), {"job": job.id}
            ).scalar_one()
    finally:
        engine.dispose()
    assert saved  # the worker stored the final recommendation
    by_policy: dict[str, list[tuple[int, float]]] = {}
    for trial_id, policy, metrics in rows:
        values = metrics if isinstance(metrics, dict) else json.loads(metrics)
        by_policy.setdefault(policy, []).append((trial_id, values["val_accuracy"]))
    means = {p: statistics.mean(v for _, v in vs) for p, vs in by_policy.items()}
    assert winner["policy"] == max(means, key=lambda p: means[p])
    mine = by_policy[winner["policy"]]
    assert winner["n_seeds"] == 3
    assert sorted(int(i) for i in winner["trial_ids"]) == [i for i, _ in mine]
    assert winner["metric_mean"] == pytest.approx(statistics.mean(v for _, v in mine))
    assert winner["metric_std"] == pytest.approx(statistics.stdev(v for _, v in mine))
    # The rationale's numbers are these numbers.
    mean_text = f"{100 * winner['metric_mean']:.1f}%"
    std_text = f"± {100 * winner['metric_std']:.1f} points"
    assert (
        f"{winner['policy']} has the best mean val_accuracy, {mean_text} {std_text}"
        in (reco["rationale"])
    )
    assert "over 3 seeds" in reco["rationale"]
    runner = next(p for p in means if p != winner["policy"])
    assert f"beats {runner} ({100 * means[runner]:.1f}%)" in reco["rationale"]
    assert reco["code"]["pytorch"].startswith(f"# lrtune schedule ({winner['policy']})")
