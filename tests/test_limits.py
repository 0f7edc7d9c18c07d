"""Per-tenant and per-server limits: each refusal names the limit (429, 422 or 413)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from lrtune.schemas.tenants import TenantLimits
from lrtune.service.app import create_app
from lrtune.service.settings import Settings
from lrtune.service.store import Store


def _error(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()["error"]
    return body


def test_concurrent_jobs_over_the_server_default_are_429_until_one_ends(
    settings: Settings, store: Store, job_body: dict[str, Any]
) -> None:
    app = create_app(settings.model_copy(update={"max_concurrent_jobs": 2}))
    with TestClient(app) as client:
        first = client.post("/v1/jobs", json=job_body).json()["id"]
        client.post("/v1/jobs", json=job_body)
        error = _error(client.post("/v1/jobs", json=job_body), 429)
        assert error["code"] == "too_many_jobs"
        assert "max_concurrent_jobs" in error["message"] and "2" in error["message"]
        # A retry of an accepted submission is not a new job, so it is not refused.
        keyed = {"Idempotency-Key": "again"}
        client.post(f"/v1/jobs/{first}/cancel")
        made = client.post("/v1/jobs", json=job_body, headers=keyed)
        assert made.status_code == 201
        assert client.post("/v1/jobs", json=job_body, headers=keyed).status_code == 200
        assert client.post("/v1/jobs", json=job_body).status_code == 429


def test_concurrent_submissions_cannot_slip_under_the_limit(
    settings: Settings, job_body: dict[str, Any]
) -> None:
    app = create_app(settings.model_copy(update={"max_concurrent_jobs": 3}))

    def submit(_: int) -> int:
        with TestClient(app) as client:
            return client.post("/v1/jobs", json=job_body).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(submit, range(8)))
    assert statuses == [201] * 3 + [429] * 5


def test_a_tenants_own_limits_replace_the_defaults(
    settings: Settings, store: Store, job_body: dict[str, Any]
) -> None:
    auth_app = create_app(settings.model_copy(update={"auth": True}))
    _, small = store.create_token(tenant="small")
    _, big = store.create_token(tenant="big")
    store.set_tenant_limits(
        name="small",
        limits=TenantLimits(max_concurrent_jobs=1, max_trials_per_job=3, max_epochs=2),
    )
    with TestClient(auth_app) as client:
        as_small = {"Authorization": f"Bearer {small}"}
        as_big = {"Authorization": f"Bearer {big}"}
        # 2 policies x 2 trials = 4 planned trials; the tenant may run 3.
        four = {**job_body, "budget": {"epochs": 2, "trials_per_policy": 2}}
        error = _error(client.post("/v1/jobs", json=four, headers=as_small), 422)
        assert error["fields"][0]["path"] == "budget.trials_per_policy"
        assert "max_trials_per_job" in error["message"] and "3" in error["message"]
        three_epochs = {**job_body, "budget": {"epochs": 3, "trials_per_policy": 1}}
        error = _error(client.post("/v1/jobs", json=three_epochs, headers=as_small), 422)
        assert error["fields"][0]["path"] == "budget.epochs"
        assert "max_epochs" in error["message"]
        fits = {**job_body, "budget": {"epochs": 2, "trials_per_policy": 1}}
        assert client.post("/v1/jobs", json=fits, headers=as_small).status_code == 201
        assert client.post("/v1/jobs", json=fits, headers=as_small).status_code == 429
        # Another tenant keeps the server's defaults.
        for _ in range(3):
            assert client.post("/v1/jobs", json=job_body, headers=as_big).status_code == 201


def test_trials_per_job_default_limit(settings: Settings, job_body: dict[str, Any]) -> None:
    app = create_app(settings.model_copy(update={"max_trials_per_job": 3}))
    with TestClient(app) as client:
        error = _error(client.post("/v1/jobs", json=job_body), 422)
    assert error["code"] == "limit_exceeded" and "max_trials_per_job" in error["message"]


def _small_body_app(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"max_request_bytes": 2000}))) as c:
        yield c


def test_bodies_over_the_limit_are_413_by_length_or_by_counting(
    app: FastAPI, settings: Settings, job_body: dict[str, Any]
) -> None:
    for client in _small_body_app(settings):
        big = {**job_body, "name": "x" * 3000}
        error = _error(client.post("/v1/jobs", json=big), 413)
        assert error["code"] == "payload_too_large" and "2000 bytes" in error["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
            yield b'{"schedule": {"policy": "fixed", "lr": 0.1}, "steps": 10, "pad": "'
            for _ in range(40):
                yield b"y" * 100
            yield b'"}'

        answer = client.post(
            "/v1/schedules/preview", content=chunks(), headers={"content-type": "application/json"}
        )
        _error(answer, 413)
        # Under the limit, chunked or not, the body reaches the route intact.
        answer = client.post(
            "/v1/schedules/preview",
            content=iter([b'{"schedule": {"policy": "fixed", "lr": 0.1},', b' "steps": 3}']),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["step"] == [0, 1, 2]
        assert client.post("/v1/jobs", json=job_body).status_code == 201


def test_preview_steps_over_the_limit_are_422(api_client: TestClient) -> None:
    body = {"schedule": {"policy": "fixed", "lr": 0.1}, "steps": 1_000_001}
    error = _error(api_client.post("/v1/schedules/preview", json=body), 422)
    assert error["fields"][0]["path"] == "steps"
