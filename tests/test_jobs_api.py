"""The job REST API (api.md sections 2 and 3) through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import TrialMetric
from lrtune.service.store import Store

from tests.conftest import JobSeeder

API_MD_EXAMPLE: dict[str, Any] = {
    "name": "mnist1d schedules",
    "workload": {"name": "mnist1d", "params": {"model": "mlp"}},
    "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0005},
    "metric": {"name": "val_accuracy", "mode": "max"},
    "policies": ["fixed", "exponential", "clr", "sgdr"],
    "lr_bounds": "auto",
    "budget": {"epochs": 20, "trials_per_policy": 8, "max_concurrent_trials": 2},
    "early_stopping": {"kind": "asha", "grace_epochs": 2, "reduction_factor": 3},
    "search": {"algorithm": "random", "seed": 0},
    "confirm": {"top_k": 3, "seeds": 3},
    "resources_per_trial": {"cpu": 1, "gpu": 0},
}


def _store(app: FastAPI) -> Store:
    store: Store = app.state.store
    return store


def _error(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()["error"]
    assert body["code"] and body["message"]
    return body


def test_submit_the_api_md_example(api_client: TestClient) -> None:
    answer = api_client.post("/v1/jobs", json=API_MD_EXAMPLE)
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["status"] == "queued" and job["name"] == "mnist1d schedules"
    # 4 policies x (8 trials + 3 confirmed settings x 3 seeds)
    assert job["progress"]["planned"] == 68
    assert job["spec"]["budget"]["epochs"] == 20 and job["best"] is None
    assert api_client.get(f"/v1/jobs/{job['id']}").json() == job


# Each rejected spec and the field path the 422 must name.
INVALID_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown workload", {"workload": {"name": "imagenet"}}, "workload"),
    ("unknown policy", {"policies": ["fixed", "warp"]}, "policies.1.policy"),
    (
        "reversed bounds",
        {"policies": [{"policy": "clr", "search": {"max_lr": {"loguniform": [1.0, 0.01]}}}]},
        "policies.0.search.max_lr",
    ),
    (
        "field the policy lacks",
        {"policies": [{"policy": "sgdr", "search": {"max_lr": {"uniform": [0.1, 1.0]}}}]},
        "policies.0.search.max_lr",
    ),
    (
        "epochs over the limit",
        {"budget": {"epochs": 1001, "trials_per_policy": 2}},
        "budget.epochs",
    ),
    (
        "trials over the limit",
        {"budget": {"epochs": 3, "trials_per_policy": 201}},
        "budget.trials_per_policy",
    ),
    ("zero epochs", {"budget": {"epochs": 0, "trials_per_policy": 2}}, "budget.epochs"),
    ("metric not reported", {"metric": {"name": "bleu", "mode": "max"}}, "metric"),
    ("unknown field", {"priority": "high"}, "priority"),
    ("unknown workload param", {"workload": {"name": "digits", "params": {"x": 1}}}, "workload"),
    ("bad mode", {"metric": {"name": "val_loss", "mode": "up"}}, "metric.mode"),
    ("no policies", {"policies": []}, "policies"),
    ("policy twice", {"policies": ["clr", "clr"]}, "policies"),
    ("gpu negative", {"resources_per_trial": {"gpu": -1}}, "resources_per_trial.gpu"),
    ("lr bounds reversed", {"lr_bounds": {"min": 1.0, "max": 0.1}}, "lr_bounds.max"),
    # plateau watches the job's metric (val_accuracy, max): its mode is the metric's.
    (
        "plateau against the metric",
        {"policies": [{"policy": "plateau", "search": {"mode": "min"}}]},
        "policies",
    ),
    (
        "wsd decay twice",
        {"policies": [{"policy": "wsd", "search": {"decay_steps_frac": 0.2, "decay_frac": 0.1}}]},
        "policies.0.search.decay_frac",
    ),
    (
        "wsd ratio above 1",
        {"policies": [{"policy": "wsd", "search": {"min_lr_ratio": 1.5}}]},
        "policies.0.search.min_lr_ratio",
    ),
]


@pytest.mark.parametrize(
    ("change", "path"), [(c, p) for _, c, p in INVALID_SPECS], ids=[n for n, _, _ in INVALID_SPECS]
)
def test_invalid_specs_are_422_naming_the_field_and_store_nothing(
    api_client: TestClient, job_body: dict[str, Any], change: dict[str, Any], path: str
) -> None:
    error = _error(api_client.post("/v1/jobs", json={**job_body, **change}), 422)
    paths = [f["path"] for f in error["fields"]]
    assert path in paths, error
    assert api_client.get("/v1/jobs").json()["items"] == []


# Each domain error in a search space: the key the 422 is said at and words its message must hold.
SEARCH_SPACE_ERRORS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("reversed", "clr", {"max_lr": {"loguniform": [1.0, 0.01]}}, ["max_lr", "reversed"]),
    ("empty", "clr", {"gamma": {"uniform": [0.5, 0.5]}}, ["gamma", "reversed or empty"]),
    ("not positive", "clr", {"base_lr": {"loguniform": [0.0, 0.1]}}, ["base_lr", "positive"]),
    ("int reversed", "sgdr", {"t_mult": {"int": [3, 1]}}, ["t_mult", "reversed"]),
    ("no choices", "clr", {"mode": {"choice": []}}, ["mode", "at least 1"]),
    ("one bound", "one_cycle", {"pct_start": {"uniform": [0.3]}}, ["pct_start", "uniform.1"]),
    ("bad choice", "clr", {"mode": {"choice": ["zigzag"]}}, ["mode", "zigzag"]),
    ("unknown field", "sgdr", {"max_lr": 0.1}, ["max_lr", "has no field"]),
]


@pytest.mark.parametrize(
    ("policy", "space", "words"),
    [(p, s, w) for _, p, s, w in SEARCH_SPACE_ERRORS],
    ids=[n for n, _, _, _ in SEARCH_SPACE_ERRORS],
)
def test_search_space_errors_name_the_key(
    api_client: TestClient,
    job_body: dict[str, Any],
    policy: str,
    space: dict[str, Any],
    words: list[str],
) -> None:
    body = {**job_body, "policies": ["fixed", {"policy": policy, "search": space}]}
    error = _error(api_client.post("/v1/jobs", json=body), 422)
    [key] = space
    assert [f["path"] for f in error["fields"]] == [f"policies.1.search.{key}"], error
    message = error["fields"][0]["message"]
    assert all(word in message for word in words), message


def test_the_new_policies_are_accepted_with_their_default_spaces(
    api_client: TestClient, job_body: dict[str, Any]
) -> None:
    policies = ["wsd", "inverse_sqrt", "rex", {"policy": "plateau", "search": {"mode": "max"}}]
    answer = api_client.post("/v1/jobs", json={**job_body, "policies": policies})
    assert answer.status_code == 201, answer.text
    assert answer.json()["progress"]["planned"] == 8


def test_too_many_policies_is_422(app: FastAPI, job_body: dict[str, Any]) -> None:
    app.state.settings.max_policies_per_job = 1
    with TestClient(app) as client:
        error = _error(client.post("/v1/jobs", json=job_body), 422)
    assert error["fields"][0]["path"] == "policies"


def test_malformed_json_is_422(api_client: TestClient) -> None:
    answer = api_client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    _error(answer, 422)


def test_idempotency_key(api_client: TestClient, job_body: dict[str, Any]) -> None:
    headers = {"Idempotency-Key": "submit-1"}
    first = api_client.post("/v1/jobs", json=job_body, headers=headers)
    assert first.status_code == 201
    # The same body with keys in another order is the same request.
    again = api_client.post("/v1/jobs", json=dict(reversed(job_body.items())), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    error = _error(
        api_client.post("/v1/jobs", json={**job_body, "name": "another"}, headers=headers), 409
    )
    assert "submit-1" in error["message"]
    assert len(api_client.get("/v1/jobs").json()["items"]) == 1
    unkeyed = api_client.post("/v1/jobs", json=job_body)
    assert unkeyed.status_code == 201 and unkeyed.json()["id"] != first.json()["id"]


def test_list_jobs_pages_newest_first(api_client: TestClient, job_body: dict[str, Any]) -> None:
    ids = [api_client.post("/v1/jobs", json=job_body).json()["id"] for _ in range(5)]
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api_client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    api_client.post(f"/v1/jobs/{ids[0]}/cancel")
    cancelled = api_client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "sleeping"}, "status"),
    ],
)
def test_bad_list_parameters_are_422(
    api_client: TestClient, params: dict[str, Any], field: str
) -> None:
    error = _error(api_client.get("/v1/jobs", params=params), 422)
    assert error["fields"][0]["path"] == field


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs/999", "/v1/trials/999", "/v1/trials/999/metrics", "/v1/jobs/999/trials"],
)
def test_unknown_ids_are_404(api_client: TestClient, path: str) -> None:
    assert _error(api_client.get(path), 404)["code"] == "not_found"
    assert _error(api_client.post("/v1/jobs/999/cancel"), 404)["code"] == "not_found"


def test_ids_out_of_range_are_client_errors(api_client: TestClient) -> None:
    for path in ("/v1/jobs/99999999999999999999", "/v1/jobs/abc", "/v1/trials/-1"):
        assert api_client.get(path).status_code == 422


def test_cancel(app: FastAPI, api_client: TestClient, job_body: dict[str, Any]) -> None:
    queued = api_client.post("/v1/jobs", json=job_body).json()["id"]
    answer = api_client.post(f"/v1/jobs/{queued}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    assert api_client.post(f"/v1/jobs/{queued}/cancel").status_code == 202

    running = api_client.post("/v1/jobs", json=job_body).json()["id"]
    store = _store(app)
    store.claim_next_job(worker_id="w", lease_seconds=60)
    assert api_client.post(f"/v1/jobs/{running}/cancel").json()["status"] == "cancelling"
    assert api_client.post(f"/v1/jobs/{running}/cancel").status_code == 202
    store.mark_job_cancelled(job_id=running)

    done = api_client.post("/v1/jobs", json=job_body).json()["id"]
    store.claim_next_job(worker_id="w", lease_seconds=60)
    store.mark_job_succeeded(job_id=done)
    assert _error(api_client.post(f"/v1/jobs/{done}/cancel"), 409)["code"] == "conflict"


def test_trials_metrics_and_non_finite_values(
    app: FastAPI, api_client: TestClient, job_body: dict[str, Any]
) -> None:
    job = api_client.post("/v1/jobs", json=job_body).json()["id"]
    store = _store(app)
    store.claim_next_job(worker_id="w", lease_seconds=60)
    trials = [
        store.create_trial(
            job_id=job,
            policy=schedule["policy"],
            schedule=schedule,
            search_config={"lr": 0.1},
            seed=3,
        ).id
        for schedule in (
            {"policy": "fixed", "lr": 0.1},
            {"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 10},
            {"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 10},
        )
    ]
    store.record_trial_results(
        trial_id=trials[0],
        results=[
            TrialMetric(
                epoch=1,
                step=12,
                lr=0.1,
                train_loss=0.9,
                val_loss=1.1,
                metrics={"val_accuracy": 0.6},
                elapsed_s=1.5,
            )
        ],
    )
    store.record_trial_results(
        trial_id=trials[1],
        results=[
            TrialMetric(
                epoch=1,
                step=12,
                lr=math.inf,
                train_loss=math.nan,
                val_loss=-math.inf,
                metrics={"val_accuracy": math.nan},
                elapsed_s=1.5,
            )
        ],
    )
    store.update_trial_status(trial_id=trials[0], status="completed")
    store.update_trial_status(trial_id=trials[1], status="diverged")

    page = api_client.get(f"/v1/jobs/{job}/trials", params={"limit": 2}).json()
    assert [t["id"] for t in page["items"]] == trials[::-1][:2]
    last = api_client.get(f"/v1/jobs/{job}/trials", params={"cursor": page["next_cursor"]})
    assert [t["id"] for t in last.json()["items"]] == [trials[0]]
    only_clr = api_client.get(f"/v1/jobs/{job}/trials", params={"policy": "clr"}).json()
    assert {t["id"] for t in only_clr["items"]} == set(trials[1:])
    diverged = api_client.get(f"/v1/jobs/{job}/trials", params={"status": "diverged"}).json()
    assert [t["id"] for t in diverged["items"]] == [trials[1]]
    error = _error(api_client.get(f"/v1/jobs/{job}/trials", params={"policy": "warp"}), 422)
    assert error["fields"][0]["path"] == "policy"

    trial = api_client.get(f"/v1/trials/{trials[1]}").json()
    assert trial["status"] == "diverged" and trial["last_metric"] == "NaN"
    assert trial["best_metric"] is None and trial["seed"] == 3
    [row] = api_client.get(f"/v1/trials/{trials[1]}/metrics").json()
    assert row["lr"] == "Infinity" and row["train_loss"] == "NaN"
    assert row["val_loss"] == "-Infinity" and row["metrics"] == {"val_accuracy": "NaN"}
    [row] = api_client.get(f"/v1/trials/{trials[0]}/metrics").json()
    assert row == {
        "epoch": 1,
        "step": 12,
        "lr": 0.1,
        "train_loss": 0.9,
        "val_loss": 1.1,
        "metrics": {"val_accuracy": 0.6},
        "elapsed_s": 1.5,
    }

    got = api_client.get(f"/v1/jobs/{job}").json()
    # The recommendation's leader (the diverged clr trial counts as the worst value).
    assert got["best"] == {
        "trial_id": trials[0],
        "policy": "fixed",
        "value": 0.6,
        "std": None,
        "n_seeds": 1,
        "horizon_epochs": None,
    }
    assert got["progress"]["pending"] == 1 and got["progress"]["diverged"] == 1


def test_best_settings(
    app: FastAPI, api_client: TestClient, seed_job: JobSeeder, job_body: dict[str, Any]
) -> None:
    assert api_client.get("/v1/best").json() == []
    job = api_client.post("/v1/jobs", json=job_body).json()["id"]
    store = _store(app)
    store.claim_next_job(worker_id="w", lease_seconds=60)
    for policy, accuracy in (("fixed", 0.7), ("clr", 0.8), ("clr", 0.9)):
        last_epoch = seed_job.epoch(
            3, accuracy, step=30, lr=0.01, train_loss=0.1, val_loss=0.2, elapsed_s=3.0
        )
        schedule = (
            {"policy": "fixed", "lr": accuracy}
            if policy == "fixed"
            else {"policy": "clr", "base_lr": 0.001, "max_lr": accuracy, "step_size": 10}
        )
        seed_job.trial(job, policy=policy, schedule=schedule, epochs=[last_epoch])
    assert api_client.get("/v1/best").json() == []  # the job has not finished
    store.mark_job_succeeded(job_id=job)
    best = api_client.get("/v1/best", params={"workload": "digits"}).json()
    rate = {"fixed": "lr", "clr": "max_lr"}
    assert [(b["policy"], b["value"], b["schedule"][rate[b["policy"]]]) for b in best] == [
        ("clr", 0.9, 0.9),
        ("fixed", 0.7, 0.7),
    ]
    assert all(b["job_id"] == job and b["mode"] == "max" and b["epochs"] == 3 for b in best)
    assert len(api_client.get("/v1/best", params={"policy": "fixed"}).json()) == 1
    assert api_client.get("/v1/best", params={"metric": "val_loss"}).json() == []


def test_readyz(api_client: TestClient) -> None:
    answer = api_client.get("/readyz")
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


def test_strings_the_database_cannot_hold_are_client_errors(
    api_client: TestClient, job_body: dict[str, Any]
) -> None:
    answer = api_client.post("/v1/jobs", json={**job_body, "name": "nul \u0000 inside"})
    assert answer.status_code in (201, 422), answer.text
    assert api_client.get("/v1/jobs/1/trials", params={"policy": "a\u0000"}).status_code == 422


def test_curves_give_each_policys_standing_and_its_best_trials_thinned(
    app: FastAPI, api_client: TestClient, job_body: dict[str, Any]
) -> None:
    job = api_client.post("/v1/jobs", json=job_body).json()["id"]
    store = _store(app)
    store.claim_next_job(worker_id="w", lease_seconds=60)

    def trial(policy: str, accuracies: list[float], status: str) -> int:
        made = store.create_trial(
            job_id=job,
            policy=policy,
            schedule={"policy": policy, "lr": 0.1},
            search_config={"lr": 0.1},
            seed=0,
        )
        store.record_trial_results(
            trial_id=made.id,
            results=[
                TrialMetric(
                    epoch=epoch,
                    step=10 * epoch,
                    lr=0.1,
                    train_loss=1.0 / epoch,
                    val_loss=1.0 / epoch,
                    metrics={"val_accuracy": accuracy},
                    elapsed_s=float(epoch),
                )
                for epoch, accuracy in enumerate(accuracies, start=1)
            ],
        )
        store.update_trial_status(trial_id=made.id, status=status)
        return made.id

    fixed_low = trial("fixed", [0.2, 0.4, 0.5], "completed")
    fixed_high = trial("fixed", [0.3, 0.7, 0.6], "completed")
    clr_high = trial("clr", [0.5, 0.8, 0.9], "completed")
    trial("clr", [0.1, math.nan, math.nan], "diverged")

    answer = api_client.get(f"/v1/jobs/{job}/curves", params={"per_policy": 1, "max_points": 2})
    assert answer.status_code == 200, answer.text
    curves = answer.json()
    assert (curves["metric"], curves["mode"], curves["total_trials"]) == ("val_accuracy", "max", 4)
    clr, fixed = curves["policies"]  # best policy first
    assert clr == {
        "policy": "clr",
        "trials": 2,
        "by_status": {"completed": 1, "diverged": 1},
        "best_metric": 0.9,
        "best_trial_id": clr_high,
        "mean_best_metric": pytest.approx((0.9 + 0.1) / 2),
    }
    assert fixed["best_trial_id"] == fixed_high and fixed["best_metric"] == 0.7
    assert fixed["mean_best_metric"] == pytest.approx((0.7 + 0.5) / 2)
    # One trial a policy, its three epochs thinned to the first and the last.
    assert [(t["trial_id"], t["epoch"], t["steps"]) for t in curves["trials"]] == [
        (clr_high, [1, 3], 30),
        (fixed_high, [1, 3], 30),
    ]
    assert curves["trials"][1]["metric"] == [0.3, 0.6]
    assert fixed_low not in {t["trial_id"] for t in curves["trials"]}
    assert _error(api_client.get("/v1/jobs/999/curves"), 404)["code"] == "not_found"
