"""Concurrent submissions, polls and claims on SQLite and PostgreSQL: no lost or doubled jobs,
no "database is locked"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec
from lrtune.service.store import Store

PROCESSES = 8
SUBMISSIONS = 25
DISTINCT = 15  # per process, with keys of its own; the other 10 reuse 5 keys shared by all
SHARED_KEYS = 5

# One API replica per process, all on the same database, each submitting and polling.
_CLIENT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from fastapi.testclient import TestClient
    from lrtune.service.app import create_app
    from lrtune.service.settings import Settings

    url, home, proc, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    body = json.loads(sys.argv[5])
    client = TestClient(create_app(Settings(database_url=url, home=home)))
    client.get("/healthz")
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    statuses, errors, shared = [], [], {}
    for i in range(int(sys.argv[6])):
        key = f"p{proc}-{i}" if i < int(sys.argv[7]) else f"shared-{i % int(sys.argv[8])}"
        answer = client.post(
            "/v1/jobs", json={**body, "name": key}, headers={"Idempotency-Key": key}
        )
        statuses.append(answer.status_code)
        if answer.status_code >= 300:
            errors.append(answer.text)
            continue
        job_id = answer.json()["id"]
        if key.startswith("shared"):
            shared[key] = job_id
        for path in (f"/v1/jobs/{job_id}", "/v1/jobs?limit=5"):
            polled = client.get(path)
            statuses.append(polled.status_code)
            if polled.status_code != 200:
                errors.append(polled.text)
    print(json.dumps({"statuses": statuses, "errors": errors, "shared": shared}), flush=True)
    """
)


@pytest.mark.slow  # eight processes, 10-15 s
def test_eight_processes_submit_and_poll_at_once(
    database_url: str, store: Store, job_body: dict[str, Any], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CLIENT,
                database_url,
                str(tmp_path / "home"),
                str(proc),
                str(go),
                json.dumps(job_body),
                str(SUBMISSIONS),
                str(DISTINCT),
                str(SHARED_KEYS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # 125 queued jobs of one tenant: above the default concurrent-jobs limit on purpose.
            env={**os.environ, "LRTUNE_MAX_CONCURRENT_JOBS": "1000"},
        )
        for proc in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
        go.touch()  # start together
        reports = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            child.kill()

    errors = [e for r in reports for e in r["errors"]]
    assert errors == []
    assert not any("locked" in e for e in errors)
    statuses = Counter(s for r in reports for s in r["statuses"])
    assert set(statuses) <= {200, 201}
    # One job per key: 8 x 15 distinct keys plus 5 keys every process shared.
    assert statuses[201] == PROCESSES * DISTINCT + SHARED_KEYS
    jobs = _all_jobs(store)
    assert len(jobs) == PROCESSES * DISTINCT + SHARED_KEYS
    assert len({j["name"] for j in jobs}) == len(jobs)
    for key in (f"shared-{i}" for i in range(SHARED_KEYS)):
        assert len({r["shared"][key] for r in reports}) == 1  # every process got the same job


def test_twenty_identical_submissions_make_one_job(
    app: FastAPI, job_body: dict[str, Any], store: Store
) -> None:
    barrier = threading.Barrier(20)

    def submit(_: int) -> tuple[int, int]:
        with TestClient(app) as client:
            barrier.wait()
            answer = client.post("/v1/jobs", json=job_body, headers={"Idempotency-Key": "same"})
            return answer.status_code, answer.json().get("id", -1)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    assert sorted(s for s, _ in answers) == [200] * 19 + [201]
    assert len({job_id for _, job_id in answers}) == 1
    assert len(_all_jobs(store)) == 1
    # The same key with another body: 409, and still one job.
    with TestClient(app) as client:
        other = client.post(
            "/v1/jobs", json={**job_body, "name": "other"}, headers={"Idempotency-Key": "same"}
        )
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
    assert len(_all_jobs(store)) == 1


def test_workers_claiming_at_once_never_share_a_job(
    database_url: str, store: Store, job_body: dict[str, Any]
) -> None:
    spec = JobSpec.model_validate(job_body)
    expected = {store.create_job(spec=spec)[0].id for _ in range(30)}
    barrier = threading.Barrier(4)

    def worker(name: str) -> list[int]:
        own = Store.from_url(database_url)
        claimed = []
        try:
            barrier.wait()
            while (job := own.claim_next_job(worker_id=name, lease_seconds=60)) is not None:
                claimed.append(job.id)
                time.sleep(0.001)
        finally:
            own.dispose()
        return claimed

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, ["w0", "w1", "w2", "w3"]))
    everything = [job_id for claimed in results for job_id in claimed]
    assert len(everything) == len(set(everything))  # no job claimed twice
    assert set(everything) == expected
    assert sum(1 for claimed in results if claimed) >= 2  # the claims really did overlap


def _all_jobs(store: Store) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = store.list_jobs(limit=200, cursor=cursor)
        jobs += [j.model_dump() for j in page.items]
        if (cursor := page.next_cursor) is None:
            return jobs
