"""Authentication and tenants: every /v1 route needs a valid token when LRTUNE_AUTH=on, and one
tenant's ids are 404 to another, on SQLite and PostgreSQL.

The routes are read from `app.routes`, so an endpoint added later is covered without editing
this file; a new path parameter must be given a value in `_path_values` (the test says so).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import TrialMetric, TrialProbe
from lrtune.schemas.recommendations import BoundSuggestion, RangeTestResult
from lrtune.service.app import create_app
from lrtune.service.cli import app as cli
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from typer.testing import CliRunner

# Minimal valid bodies for the /v1 routes that take one (the route checks run before the body's).
PREVIEW = {"schedule": {"policy": "fixed", "lr": 0.1}, "steps": 10}


@pytest.fixture
def auth_app(settings: Settings) -> FastAPI:
    return create_app(settings.model_copy(update={"auth": True}))


@pytest.fixture
def tenants(auth_app: FastAPI, store: Store, job_body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Tenants A and B with a token each; A owns a succeeded job with a trial, an epoch and a
    cooldown probe."""
    with TestClient(auth_app) as client:
        _, token_a = store.create_token(tenant="a", label="alice")
        _, token_b = store.create_token(tenant="b")
        answer = client.post("/v1/jobs", json=job_body, headers=_bearer(token_a))
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        store.claim_next_job(worker_id="w", lease_seconds=60)
        trial = store.create_trial(
            job_id=job_id,
            policy="fixed",
            schedule={"policy": "fixed", "lr": 0.1},
            search_config={},
            seed=0,
        )
        store.record_trial_results(
            trial_id=trial.id,
            results=[
                TrialMetric(
                    epoch=1,
                    step=10,
                    lr=0.1,
                    train_loss=1.0,
                    val_loss=1.0,
                    metrics={"val_accuracy": 0.5},
                    elapsed_s=0.1,
                )
            ],
        )
        store.record_trial_probes(
            trial_id=trial.id,
            probes=[
                TrialProbe(
                    epoch=1,
                    step=10,
                    cooldown_steps=10,
                    train_loss=0.9,
                    val_loss=0.9,
                    metrics={"val_accuracy": 0.6},
                    elapsed_s=0.1,
                    decision="continue",
                )
            ],
        )
        store.update_trial_status(trial_id=trial.id, status="completed")
        # A range test too, so GET /v1/jobs/{id}/range-test has something to show its owner.
        store.save_range_test(
            job_id=job_id,
            result=RangeTestResult(
                lr=[0.01, 0.1],
                loss=[2.0, 1.0],
                smoothed_loss=[2.0, 1.5],
                suggestion=BoundSuggestion(
                    min_lr=0.01, max_lr=0.1, min_method="test", max_method="test"
                ),
                ramp="exponential",
                iterations=2,
                stopped_early=False,
            ),
        )
        store.mark_job_succeeded(job_id=job_id)
        yield {
            "client": client,
            "store": store,
            "a": token_a,
            "b": token_b,
            "ids": {"job_id": job_id, "trial_id": trial.id},
        }


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _v1_routes(app: FastAPI) -> list[tuple[str, str]]:
    # From the OpenAPI document: every route the app serves under /v1, whichever router holds it.
    routes = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1/")
        for method in operations
    ]
    assert len(routes) >= 10, routes  # the walk found the API, not an empty list
    return routes


def _path_values(path: str, ids: dict[str, int]) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in ids, f"{path}: give tests/test_auth.py a value of tenant A for {{{name}}}"
        return str(ids[name])

    return re.sub(r"\{(\w+)\}", fill, path)


def _call(
    client: TestClient, method: str, path: str, headers: dict[str, str], job_body: dict[str, Any]
) -> Any:
    body: dict[str, Any] | None = None
    if method == "POST" and path == "/v1/jobs":
        body = job_body
    elif method == "POST" and path == "/v1/schedules/preview":
        body = PREVIEW
    return client.request(method, path, json=body, headers=headers)


def test_every_v1_route_answers_401_without_a_token_or_with_a_bad_or_revoked_one(
    auth_app: FastAPI, tenants: dict[str, Any], job_body: dict[str, Any]
) -> None:
    client: TestClient = tenants["client"]
    store: Store = tenants["store"]
    record, revoked = store.create_token(tenant="a", label="leaver")
    store.revoke_token(token_id=record.id)
    for method, template in _v1_routes(auth_app):
        path = _path_values(template, tenants["ids"])
        for headers in (
            {},
            {"Authorization": "Bearer"},
            {"Authorization": f"Basic {tenants['a']}"},
            _bearer("lrt_not-a-token"),
            _bearer(revoked),
        ):
            answer = _call(client, method, path, headers, job_body)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.json()["error"]["code"] == "unauthorized"
        # The same request with a valid token is not refused for want of one.
        answer = _call(client, method, path, _bearer(tenants["a"]), job_body)
        assert answer.status_code != 401, (method, path, answer.text)
    # Health endpoints stay open for probes.
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_every_v1_route_with_ids_answers_404_to_another_tenant(
    auth_app: FastAPI, tenants: dict[str, Any], job_body: dict[str, Any]
) -> None:
    client: TestClient = tenants["client"]
    with_ids = [(m, p) for m, p in _v1_routes(auth_app) if "{" in p]
    assert {p for _, p in with_ids} >= {
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/trials",
        "/v1/jobs/{job_id}/rungs",
        "/v1/trials/{trial_id}",
        "/v1/trials/{trial_id}/metrics",
        "/v1/trials/{trial_id}/probes",
    }
    for method, template in with_ids:
        path = _path_values(template, tenants["ids"])
        theirs = _call(client, method, path, _bearer(tenants["b"]), job_body)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"]["code"] == "not_found"
        if method == "GET":  # and the owner does see it (the 404 is about the tenant)
            mine = _call(client, method, path, _bearer(tenants["a"]), job_body)
            assert mine.status_code == 200, (method, path, mine.text)
            assert mine.json(), (method, path)  # something to see: not an empty list
    # Cancelling another tenant's job changed nothing.
    job = client.get(f"/v1/jobs/{tenants['ids']['job_id']}", headers=_bearer(tenants["a"]))
    assert job.json()["status"] == "succeeded"


def test_lists_and_best_show_only_the_callers_jobs(
    tenants: dict[str, Any], job_body: dict[str, Any]
) -> None:
    client: TestClient = tenants["client"]
    a, b = _bearer(tenants["a"]), _bearer(tenants["b"])
    assert client.get("/v1/jobs", headers=b).json()["items"] == []
    assert client.get("/v1/best", headers=b).json() == []
    assert [s["job_id"] for s in client.get("/v1/best", headers=a).json()] == [
        tenants["ids"]["job_id"]
    ]
    # Idempotency keys are per tenant: B's key does not return A's job, nor conflict with it.
    first = client.post("/v1/jobs", json=job_body, headers={**a, "Idempotency-Key": "k"})
    other = client.post(
        "/v1/jobs", json={**job_body, "name": "b's"}, headers={**b, "Idempotency-Key": "k"}
    )
    assert first.status_code == 201 and other.status_code == 201
    assert first.json()["id"] != other.json()["id"]
    assert [j["id"] for j in client.get("/v1/jobs", headers=b).json()["items"]] == [
        other.json()["id"]
    ]


def test_auth_off_serves_the_default_tenant_without_a_token(api_client: TestClient) -> None:
    assert api_client.get("/v1/jobs").status_code == 200
    assert api_client.get("/v1/policies").status_code == 200


def test_entrypoints_need_a_trusted_caller(
    settings: Settings, store: Store, job_body: dict[str, Any]
) -> None:
    body = {**job_body, "workload": {"entrypoint": "my_models.zoo:make"}}
    with TestClient(create_app(settings)) as remote:  # auth off, a request from elsewhere
        refused = remote.post("/v1/jobs", json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["fields"][0]["path"] == "workload.entrypoint"
        assert "LRTUNE_AUTH" in refused.json()["error"]["message"]
    with TestClient(create_app(settings), client=("127.0.0.1", 40000)) as local:
        assert local.post("/v1/jobs", json=body).status_code == 201
    secured = create_app(settings.model_copy(update={"auth": True}))
    with TestClient(secured) as client:
        _, token = store.create_token(tenant="lab")
        assert client.post("/v1/jobs", json=body, headers=_bearer(token)).status_code == 201


def test_token_cli_creates_lists_and_revokes(
    database_url: str, settings: Settings, store: Store
) -> None:
    runner = CliRunner()
    env = {"LRTUNE_DATABASE_URL": database_url, "LRTUNE_HOME": str(settings.home)}
    created = runner.invoke(cli, ["token", "create", "--tenant", "acme", "--label", "ci"], env=env)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("lrt_") and len(token) > 40

    listed = runner.invoke(cli, ["token", "list"], env=env)
    assert listed.exit_code == 0 and "acme" in listed.stdout and "ci" in listed.stdout
    assert token not in listed.stdout and token[4:20] not in listed.stdout

    secured = create_app(settings.model_copy(update={"auth": True}))
    with TestClient(secured) as client:
        assert client.get("/v1/jobs", headers=_bearer(token)).status_code == 200
        (record,) = store.list_tokens()
        assert record.last_used_at is not None  # the request was noted
        revoked = runner.invoke(cli, ["token", "revoke", str(record.id)], env=env)
        assert revoked.exit_code == 0, revoked.output
        assert client.get("/v1/jobs", headers=_bearer(token)).status_code == 401
    assert runner.invoke(cli, ["token", "revoke", "999"], env=env).exit_code == 2
    # Only the digest is stored.
    assert token not in str([t.model_dump() for t in store.list_tokens()])
