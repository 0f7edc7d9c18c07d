"""Authentication, tenants and token scopes: every /v1 route needs a valid token when
LRTUNE_AUTH=on, one tenant's ids are 404 to another, and a token does only what its scope allows
(read, submit, code), on SQLite and PostgreSQL.

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
from lrtune.schemas.tenants import TOKEN_SCOPES
from lrtune.service.app import create_app
from lrtune.service.cli import ScopeChoice
from lrtune.service.cli import app as cli
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from typer.testing import CliRunner

# Minimal valid bodies for the /v1 routes that take one (the route checks run before the body's).
PREVIEW = {"schedule": {"policy": "fixed", "lr": 0.1}, "steps": 10}
SPACE_PREVIEW = {
    "policy": "fixed",
    "search_space": {"lr": {"loguniform": [0.01, 0.1]}},
    "steps": 100,
    "steps_per_epoch": 10,
}
# The POSTs a read token may make: previews, which compute and store nothing. Any other route
# but a GET needs scope submit, so a route added later is refused to read tokens unless it is
# listed here.
READ_POSTS = {"/v1/schedules/preview", "/v1/search-spaces/preview"}
ENTRYPOINT = {"entrypoint": "my_models.zoo:make"}


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
    elif method == "POST" and path == "/v1/search-spaces/preview":
        body = SPACE_PREVIEW
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


def test_auth_off_serves_the_default_tenant_without_a_token(
    api_client: TestClient, job_body: dict[str, Any]
) -> None:
    assert api_client.get("/v1/jobs").status_code == 200
    assert api_client.get("/v1/policies").status_code == 200
    # No token submitted or cancelled it.
    job = api_client.post("/v1/jobs", json=job_body).json()
    assert job["submitted_by"] is None and job["cancelled_by"] is None
    cancelled = api_client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_by"] is None


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
        _, token = store.create_token(tenant="lab", scope="code")
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
    assert "submit" in listed.stdout  # the scope a token gets without --scope
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


def _refusal(answer: Any, scope: str, needed: str) -> str:
    """The message of a 403 for want of a scope, checked to name both scopes."""
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "forbidden"
    assert f"this token's scope is {scope!r}" in error["message"]
    assert f"needs scope {needed!r}" in error["message"]
    return str(error["message"])


def test_a_read_token_gets_everything_and_previews_but_cannot_submit_or_cancel(
    auth_app: FastAPI, tenants: dict[str, Any], job_body: dict[str, Any]
) -> None:
    client: TestClient = tenants["client"]
    store: Store = tenants["store"]
    _, read = store.create_token(tenant="a", label="viewer", scope="read")
    jobs_before = len(store.list_jobs(limit=100).items)
    for method, template in _v1_routes(auth_app):
        path = _path_values(template, tenants["ids"])
        answer = _call(client, method, path, _bearer(read), job_body)
        if method == "GET" or path in READ_POSTS:
            assert answer.status_code == 200, (method, path, answer.text)
        else:
            _refusal(answer, "read", "submit")
    refused = client.post("/v1/jobs", json=job_body, headers=_bearer(read))
    assert _refusal(refused, "read", "submit") == (
        "this token's scope is 'read'; submitting a job needs scope 'submit'"
    )
    assert len(store.list_jobs(limit=100).items) == jobs_before  # nothing was stored
    # A queued job of the tenant stays queued.
    queued = client.post("/v1/jobs", json=job_body, headers=_bearer(tenants["a"])).json()
    refused = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=_bearer(read))
    assert "cancelling a job needs scope 'submit'" in _refusal(refused, "read", "submit")
    assert client.get(f"/v1/jobs/{queued['id']}", headers=_bearer(read)).json()["status"] == (
        "queued"
    )
    # An invalid body is refused for the scope first: the token could not submit it anyway.
    refused = client.post("/v1/jobs", json={"budget": "lots"}, headers=_bearer(read))
    _refusal(refused, "read", "submit")


def test_a_submit_token_submits_and_cancels_built_in_jobs_but_not_an_entrypoint(
    tenants: dict[str, Any], job_body: dict[str, Any]
) -> None:
    client: TestClient = tenants["client"]
    store: Store = tenants["store"]
    submit = _bearer(tenants["a"])  # made without a scope: submit
    assert client.get("/v1/whoami", headers=submit).json()["scope"] == "submit"
    job = client.post("/v1/jobs", json=job_body, headers=submit)
    assert job.status_code == 201, job.text
    cancelled = client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=submit)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    jobs_before = len(store.list_jobs(limit=100).items)
    refused = client.post("/v1/jobs", json={**job_body, "workload": ENTRYPOINT}, headers=submit)
    assert _refusal(refused, "submit", "code") == (
        "this token's scope is 'submit'; submitting a job whose workload names an entrypoint "
        "(user code) needs scope 'code'"
    )
    assert refused.json()["error"]["fields"][0]["path"] == "workload.entrypoint"
    assert len(store.list_jobs(limit=100).items) == jobs_before
    assert client.post("/v1/schedules/preview", json=PREVIEW, headers=submit).status_code == 200


def test_a_code_token_may_do_everything(tenants: dict[str, Any], job_body: dict[str, Any]) -> None:
    client: TestClient = tenants["client"]
    _, token = tenants["store"].create_token(tenant="a", label="lab", scope="code")
    code = _bearer(token)
    own = client.post("/v1/jobs", json={**job_body, "workload": ENTRYPOINT}, headers=code)
    assert own.status_code == 201, own.text
    assert own.json()["spec"]["workload"]["entrypoint"] == ENTRYPOINT["entrypoint"]
    built_in = client.post("/v1/jobs", json=job_body, headers=code)
    assert built_in.status_code == 201, built_in.text
    for job in (own, built_in):
        answer = client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=code)
        assert answer.status_code == 202, answer.text
    assert client.get("/v1/jobs", headers=code).status_code == 200
    assert client.post("/v1/schedules/preview", json=PREVIEW, headers=code).status_code == 200


def test_whoami_answers_the_tokens_tenant_label_scope_and_rights(
    auth_app: FastAPI, store: Store
) -> None:
    with TestClient(auth_app) as client:
        for scope, rights in (
            ("read", ["read"]),
            ("submit", ["read", "submit"]),
            ("code", ["read", "submit", "code"]),
        ):
            record, token = store.create_token(tenant="research", label=f"{scope}-bot", scope=scope)
            answer = client.get("/v1/whoami", headers=_bearer(token))
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "tenant": "research",
                "token": {"id": record.id, "label": f"{scope}-bot"},
                "scope": scope,
                "rights": rights,
            }
        assert client.get("/v1/whoami").status_code == 401


def test_whoami_with_auth_off_is_the_default_tenant_with_every_right_on_this_machine(
    settings: Settings,
) -> None:
    everything = {"tenant": "default", "token": None, "scope": "code"}
    with TestClient(create_app(settings), client=("127.0.0.1", 40000)) as local:
        assert local.get("/v1/whoami").json() == {
            **everything,
            "rights": ["read", "submit", "code"],
        }
    # From elsewhere, an entrypoint is refused with auth off (test_entrypoints_need_a_trusted_
    # caller): whoami does not claim that right.
    with TestClient(create_app(settings)) as remote:
        assert remote.get("/v1/whoami").json() == {
            **everything,
            "scope": "submit",
            "rights": ["read", "submit"],
        }


def test_a_job_records_the_tokens_that_submitted_and_cancelled_it(
    tenants: dict[str, Any], job_body: dict[str, Any]
) -> None:
    client: TestClient = tenants["client"]
    store: Store = tenants["store"]
    alice = _bearer(tenants["a"])
    alice_id = client.get("/v1/whoami", headers=alice).json()["token"]["id"]
    bob_record, bob_token = store.create_token(tenant="a", label="bob")
    bob = _bearer(bob_token)
    submitted = client.post("/v1/jobs", json=job_body, headers=alice).json()
    assert submitted["submitted_by"] == {"id": alice_id, "label": "alice"}
    assert submitted["cancelled_by"] is None

    cancelled = client.post(f"/v1/jobs/{submitted['id']}/cancel", headers=bob).json()
    assert cancelled["cancelled_by"] == {"id": bob_record.id, "label": "bob"}
    # A repeated cancel changes nothing, its token included; reads and lists say the same.
    client.post(f"/v1/jobs/{submitted['id']}/cancel", headers=alice)
    job = client.get(f"/v1/jobs/{submitted['id']}", headers=alice).json()
    assert job["submitted_by"]["label"] == "alice" and job["cancelled_by"]["label"] == "bob"
    (listed,) = [
        j for j in client.get("/v1/jobs", headers=alice).json()["items"] if j["id"] == job["id"]
    ]
    assert (listed["submitted_by"], listed["cancelled_by"]) == (
        job["submitted_by"],
        job["cancelled_by"],
    )

    # A running job's canceller is recorded when it is asked to stop; a revoked token's name
    # stays on the jobs it touched.
    running = client.post("/v1/jobs", json=job_body, headers=bob).json()
    claimed = store.claim_next_job(worker_id="w", lease_seconds=60)
    assert claimed is not None and claimed.id == running["id"]
    stopping = client.post(f"/v1/jobs/{running['id']}/cancel", headers=alice).json()
    assert stopping["status"] == "cancelling"
    assert stopping["cancelled_by"] == {"id": alice_id, "label": "alice"}
    store.revoke_token(token_id=bob_record.id)
    job = client.get(f"/v1/jobs/{running['id']}", headers=alice).json()
    assert job["submitted_by"] == {"id": bob_record.id, "label": "bob"}


def test_token_cli_gives_a_scope_and_refuses_an_unknown_one(
    database_url: str, settings: Settings, store: Store, job_body: dict[str, Any]
) -> None:
    runner = CliRunner()
    env = {"LRTUNE_DATABASE_URL": database_url, "LRTUNE_HOME": str(settings.home)}
    created = runner.invoke(
        cli, ["token", "create", "--tenant", "acme", "--label", "dash", "--scope", "read"], env=env
    )
    assert created.exit_code == 0, created.output
    assert "scope 'read'" in created.stderr
    token = created.stdout.strip().splitlines()[-1]
    (record,) = store.list_tokens()
    assert record.scope == "read"
    listed = runner.invoke(cli, ["token", "list"], env=env)
    assert "read" in listed.stdout.split("dash", 1)[1].splitlines()[0]
    with TestClient(create_app(settings.model_copy(update={"auth": True}))) as client:
        assert client.get("/v1/jobs", headers=_bearer(token)).status_code == 200
        refused = client.post("/v1/jobs", json=job_body, headers=_bearer(token))
        _refusal(refused, "read", "submit")

    assert [choice.value for choice in ScopeChoice] == list(TOKEN_SCOPES)
    bad = runner.invoke(cli, ["token", "create", "--tenant", "acme", "--scope", "admin"], env=env)
    assert bad.exit_code == 2
    said = " ".join(bad.output.replace("│", " ").split())  # unboxed, unwrapped
    assert "Invalid value for '--scope'" in said
    assert "'admin' is not one of 'read', 'submit', 'code'" in said
    assert len(store.list_tokens()) == 1
