"""LrtuneClient against the app: typed answers, paging, idempotency, ApiError from error bodies."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from lrtune.client.api import ApiError, LrtuneClient, ServiceUnreachable
from lrtune.schemas.jobs import Job, JobRung, JobSpec, TrialMetric, TrialProbe
from lrtune.schemas.schedules import PreviewResponse
from lrtune.service.store import Store


class TestClientTransport(httpx.BaseTransport):
    """An httpx transport that hands each request to the app's TestClient (which may be built
    on httpx or on httpx2, whichever starlette finds installed), instead of a socket."""

    def __init__(self, test_client: TestClient) -> None:
        self.test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.test_client.request(
            request.method,
            str(request.url),
            headers=dict(request.headers),
            content=request.read(),
        )
        return httpx.Response(
            answer.status_code, headers=list(answer.headers.items()), content=answer.content
        )


@pytest.fixture
def client(api_client: TestClient) -> LrtuneClient:
    """The client over the app in process: the TestClient instead of a socket."""
    return LrtuneClient("http://testserver", transport=TestClientTransport(api_client))


def finish_job(store: Store, job: Job) -> list[int]:
    """Two trials of the job, three epochs each (the second diverges), then the job succeeds."""
    store.claim_next_job(worker_id="w", lease_seconds=60)
    trial_ids = []
    for seed, blows_up in ((0, False), (1, True)):
        trial = store.create_trial(
            job_id=job.id,
            policy="fixed",
            schedule={"policy": "fixed", "lr": 0.1},
            search_config={"lr": 0.1},
            seed=seed,
        )
        store.record_trial_results(
            trial_id=trial.id,
            results=[
                TrialMetric(
                    epoch=e,
                    step=5 * e,
                    lr=0.1,
                    train_loss=math.nan if blows_up and e == 3 else 1.0 / e,
                    val_loss=math.inf if blows_up and e == 3 else 1.1 / e,
                    metrics={"val_accuracy": 0.3 * e - 0.1 * seed},
                    elapsed_s=0.1 * e,
                )
                for e in (1, 2, 3)
            ],
        )
        store.update_trial_status(trial_id=trial.id, status="diverged" if blows_up else "completed")
        trial_ids.append(trial.id)
    store.mark_job_succeeded(job_id=job.id)
    return trial_ids


def test_submit_get_and_idempotency(client: LrtuneClient, job_body: dict[str, Any]) -> None:
    job = client.submit_job(JobSpec.model_validate(job_body))
    assert isinstance(job, Job) and job.status == "queued"
    assert client.get_job(job.id) == job
    first = client.submit_job(job_body, idempotency_key="same")
    again = client.submit_job(job_body, idempotency_key="same")
    assert first.id == again.id != job.id
    with pytest.raises(ApiError) as conflict:
        client.submit_job({**job_body, "name": "other"}, idempotency_key="same")
    assert conflict.value.status == 409 and conflict.value.code == "conflict"


def test_validation_errors_carry_the_field(client: LrtuneClient, job_body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as error:
        client.submit_job({**job_body, "budget": {"epochs": 0, "trials_per_policy": 1}})
    assert error.value.status == 422
    assert error.value.code == "validation_error"
    assert [f.path for f in error.value.fields] == ["budget.epochs"]
    assert "budget.epochs" in str(error.value)


def test_list_and_iterate_jobs(client: LrtuneClient, job_body: dict[str, Any]) -> None:
    ids = [client.submit_job({**job_body, "name": f"job {i}"}).id for i in range(5)]
    page = client.list_jobs(limit=2)
    assert [j.id for j in page.items] == ids[::-1][:2] and page.next_cursor
    second = client.list_jobs(limit=2, cursor=page.next_cursor)
    assert [j.id for j in second.items] == ids[::-1][2:4]
    assert [j.id for j in client.iter_jobs(page_size=2)] == ids[::-1]
    client.cancel_job(ids[0])
    assert [j.id for j in client.iter_jobs(status="cancelled")] == [ids[0]]


def test_cancel_and_wait(client: LrtuneClient, store: Store, job_body: dict[str, Any]) -> None:
    job = client.submit_job(job_body)
    assert client.cancel_job(job.id).status == "cancelled"
    assert client.wait(job.id, poll_s=0.01, timeout_s=5).status == "cancelled"
    running = client.submit_job({**job_body, "name": "running"})
    store.claim_next_job(worker_id="w", lease_seconds=60)
    with pytest.raises(TimeoutError):
        client.wait(running.id, poll_s=0.01, timeout_s=0.05)


def test_trials_metrics_and_best(
    client: LrtuneClient, store: Store, job_body: dict[str, Any]
) -> None:
    job = client.submit_job(job_body)
    trial_ids = finish_job(store, job)
    page = client.list_trials(job.id, limit=1)
    assert [t.id for t in page.items] == [trial_ids[1]] and page.next_cursor
    assert [t.id for t in client.iter_trials(job.id, page_size=1)] == trial_ids[::-1]
    assert [t.id for t in client.iter_trials(job.id, status="diverged")] == [trial_ids[1]]
    trial = client.get_trial(trial_ids[0])
    assert trial.status == "completed" and trial.best_metric == pytest.approx(0.9)
    metrics = client.trial_metrics(trial_ids[1])
    assert [m.epoch for m in metrics] == [1, 2, 3]
    assert math.isnan(metrics[2].train_loss or 0.0) and metrics[2].val_loss == math.inf
    (best,) = client.best(workload="digits", policy="fixed")
    assert best.trial_id == trial_ids[0] and best.value == pytest.approx(0.9)
    # Its one configuration has a diverged seed, so its mean is the worst value: no best.
    assert client.get_job(job.id).best is None


def test_probes_and_rungs(client: LrtuneClient, store: Store, job_body: dict[str, Any]) -> None:
    job = client.submit_job(job_body)
    trial_ids = finish_job(store, job)
    assert client.trial_probes(trial_ids[0]) == []
    assert client.job_rungs(job.id) == []
    for trial_id, accuracy, decision in (
        (trial_ids[0], 0.8, "continue"),
        (trial_ids[1], math.nan, "stop"),
    ):
        store.record_trial_probes(
            trial_id=trial_id,
            probes=[
                TrialProbe.model_validate(
                    {
                        "epoch": 1,
                        "step": 5,
                        "cooldown_steps": 5,
                        "train_loss": 0.5,
                        "val_loss": math.inf,
                        "metrics": {"val_accuracy": accuracy},
                        "elapsed_s": 0.1,
                        "decision": decision,
                    }
                )
            ],
        )
    [probe] = client.trial_probes(trial_ids[1])
    assert isinstance(probe, TrialProbe) and probe.decision == "stop"
    assert probe.val_loss == math.inf and math.isnan(probe.metrics["val_accuracy"])
    [rung] = client.job_rungs(job.id)
    assert isinstance(rung, JobRung) and rung.epoch == 1
    assert [(t.trial_id, t.raw, t.decision) for t in rung.trials] == [
        (trial_ids[0], pytest.approx(0.3), "continue"),
        (trial_ids[1], pytest.approx(0.2), "stop"),
    ]
    assert rung.trials[0].judged == 0.8
    judged = rung.trials[1].judged
    assert judged is not None and math.isnan(judged)


def test_preview_and_policies(client: LrtuneClient) -> None:
    curve = client.preview({"policy": "step", "lr": 0.1, "step_size": 2}, steps=6, every=2)
    assert isinstance(curve, PreviewResponse)
    assert curve.step == [0, 2, 4] and curve.lr == pytest.approx([0.1, 0.01, 0.001])
    names = [p.name for p in client.policies()]
    assert {"fixed", "clr", "sgdr", "one_cycle"} <= set(names)
    with pytest.raises(ApiError) as error:
        client.preview({"policy": "clr", "base_lr": 0.1, "max_lr": 0.01, "step_size": 5}, 10)
    assert error.value.status == 422 and "max_lr" in error.value.message


def test_unknown_ids_are_404(client: LrtuneClient) -> None:
    for call in (
        lambda: client.get_job(404),
        lambda: client.get_trial(404),
        lambda: client.trial_metrics(404),
        lambda: client.trial_probes(404),
        lambda: client.job_rungs(404),
        lambda: client.list_trials(404),
        lambda: client.cancel_job(404),
        lambda: client.recommendation(404),
        lambda: client.range_test(404),
    ):
        with pytest.raises(ApiError) as error:
            call()
        assert error.value.status == 404


def test_token_is_sent_as_bearer_and_non_json_errors_are_read() -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(502, text="Bad gateway from the proxy\n<html>")

    client = LrtuneClient("http://proxy", token="s3cret", transport=httpx.MockTransport(answer))
    with client, pytest.raises(ApiError) as error:
        client.policies()
    assert seen == ["Bearer s3cret"]
    assert error.value.status == 502 and error.value.message == "Bad gateway from the proxy"


def test_unreachable_service() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = LrtuneClient("http://nowhere", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(ServiceUnreachable) as error:
        client.list_jobs()
    assert "cannot reach lrtune at http://nowhere" in str(error.value)


def test_the_client_imports_as_the_readme_shows() -> None:
    """README's "From Python" example imports the client from the package itself."""
    import lrtune.client
    from lrtune.client.api import LrtuneClient

    assert lrtune.client.LrtuneClient is LrtuneClient
