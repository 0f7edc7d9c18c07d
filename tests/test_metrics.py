"""`/metrics`, parsed by prometheus_client's own text parser, on SQLite and PostgreSQL: the job,
trial, epoch, queue, lease and request-latency series, moving as a job runs; operators only."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from lrtune.service.app import create_app
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import JobSeeder


def scrape(
    client: TestClient, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_metrics_report_jobs_trials_epochs_and_latency_and_move_as_a_job_runs(
    api_client: TestClient, store: Store, seed_job: JobSeeder, job_body: dict[str, Any]
) -> None:
    before = scrape(api_client)
    assert before[("lrtune_jobs", (("status", "running"),))] == 0
    assert before[("lrtune_running_trials", ())] == 0
    assert before[("lrtune_epochs_total", ())] == 0
    assert before[("lrtune_worker_lease_age_seconds", ())] == 0

    job_id = seed_job.job(job_body)  # claimed by a worker: running
    trial = seed_job.trial(job_id, status="running", epochs=[seed_job.epoch(1, 0.5)])
    assert api_client.post("/v1/jobs", json=job_body).status_code == 201  # waits in the queue
    after = scrape(api_client)
    assert after[("lrtune_jobs", (("status", "running"),))] == 1
    assert after[("lrtune_jobs", (("status", "queued"),))] == 1
    assert after[("lrtune_running_trials", ())] == 1
    assert after[("lrtune_epochs_total", ())] == 1
    assert 0 <= after[("lrtune_worker_lease_age_seconds", ())] < 60
    store.record_trial_results(trial_id=trial, results=[seed_job.epoch(2, 0.6)])
    assert scrape(api_client)[("lrtune_epochs_total", ())] == 2

    # Request latency per route template, never per id.
    api_client.get(f"/v1/jobs/{job_id}")
    latency = scrape(api_client)
    key = ("lrtune_request_seconds_count", (("method", "GET"), ("route", "/v1/jobs/{job_id}")))
    assert latency[key] >= 1
    assert not any(dict(labels).get("route") == f"/v1/jobs/{job_id}" for _, labels in latency)
    assert (
        latency[("lrtune_request_seconds_count", (("method", "POST"), ("route", "/v1/jobs")))] == 1
    )


def test_the_queue_wait_is_the_oldest_queued_jobs(
    api_client: TestClient, job_body: dict[str, Any]
) -> None:
    assert scrape(api_client)[("lrtune_queue_wait_seconds", ())] == 0
    assert api_client.post("/v1/jobs", json=job_body).status_code == 201
    assert scrape(api_client)[("lrtune_queue_wait_seconds", ())] > 0


def test_with_auth_on_metrics_answer_the_operators_token_only(
    settings: Settings, store: Store
) -> None:
    _, tenant_token = store.create_token(tenant="lab")
    guarded = settings.model_copy(update={"auth": True, "metrics_token": "operator-secret"})
    with TestClient(create_app(guarded)) as client:
        assert client.get("/metrics").status_code == 401
        refused = client.get("/metrics", headers={"Authorization": f"Bearer {tenant_token}"})
        assert refused.status_code == 403 and "LRTUNE_METRICS_TOKEN" in refused.text
        scrape(client, Authorization="Bearer operator-secret")
    unset = settings.model_copy(update={"auth": True})
    with TestClient(create_app(unset)) as client:
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {tenant_token}"})
        assert answer.status_code == 403 and "not set" in answer.text
