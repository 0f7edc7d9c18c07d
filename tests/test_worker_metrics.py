"""`lrtune worker --metrics-port N`: the worker process's own Prometheus series (lease age,
running trials, epochs reported, jobs claimed and finished), scraped from its port and parsed by
prometheus_client's own text parser: while a real job runs on the local Ray, and, without Ray, as
the daemon's calls on the store move them."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from lrtune.schemas.jobs import JobSpec
from lrtune.service import cli
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.service.worker_metrics import MeteredQueue, WorkerMetrics
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.conftest import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CLAIMED = ("lrtune_worker_jobs_claimed_total", ())
SUCCEEDED = ("lrtune_worker_jobs_finished_total", (("outcome", "succeeded"),))
EPOCHS = ("lrtune_worker_epochs_total", ())
RUNNING = ("lrtune_worker_running_trials", ())
LEASE_AGE = ("lrtune_worker_lease_age_seconds", ())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample the worker serves: (name, labels) -> value."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert answer.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_the_series_move_as_the_daemon_claims_renews_and_ends_a_job(
    store: Store, job_body: dict[str, Any]
) -> None:
    metrics = WorkerMetrics()
    queue = MeteredQueue(store, metrics)
    server = metrics.serve(0, host="127.0.0.1")
    port = server.server_port
    try:
        idle = scrape(port)
        assert idle[CLAIMED] == 0 and idle[SUCCEEDED] == 0
        assert idle[LEASE_AGE] == 0 and idle[RUNNING] == 0 and idle[EPOCHS] == 0
        job, _ = store.create_job(spec=JobSpec.model_validate(job_body))
        assert queue.claim_next_job(worker_id="w", lease_seconds=60) is not None
        time.sleep(0.05)
        claimed = scrape(port)
        assert claimed[CLAIMED] == 1 and claimed[LEASE_AGE] >= 0.05
        assert queue.heartbeat(job_id=job.id, worker_id="w", lease_seconds=60)
        assert scrape(port)[LEASE_AGE] < claimed[LEASE_AGE]  # renewed
        queue.mark_job_succeeded(job_id=job.id)
        ended = scrape(port)
        assert ended[SUCCEEDED] == 1 and ended[LEASE_AGE] == 0
        # No label names a job or a tenant.
        assert {label for _, labels in ended for label, _ in labels} == {"outcome"}
    finally:
        server.shutdown()
        server.server_close()


def test_the_worker_command_passes_its_metrics_port_and_is_off_by_default(
    monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Any
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("lrtune.service.worker.run_worker", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr("lrtune.workers.daemon.ensure_ray", lambda **kw: None)
    monkeypatch.setattr(cli, "_stop_on_signals", threading.Event)
    monkeypatch.setattr("lrtune.service.logs.configure_worker", lambda log_format: None)
    env = {"LRTUNE_DATABASE_URL": database_url, "LRTUNE_HOME": str(tmp_path)}
    runner = CliRunner()
    assert runner.invoke(cli.app, ["worker", "--once"], env=env).exit_code == 0
    result = runner.invoke(cli.app, ["worker", "--once", "--metrics-port", "9100"], env=env)
    assert result.exit_code == 0, result.output
    assert [call["metrics_port"] for call in calls] == [None, 9100]
    assert runner.invoke(cli.app, ["worker", "--metrics-port", "0"], env=env).exit_code == 2


def test_a_worker_serves_its_series_moving_while_a_job_runs(
    ray_local: str, settings: Settings, store: Store
) -> None:
    # A lease of 6 s: heartbeats every 2 s, so the lease age is seen renewed while the job runs.
    settings = settings.model_copy(update={"job_lease_seconds": 6.0})
    spec = JobSpec.model_validate(
        {
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "policies": ["fixed", "cosine"],
            "budget": {"epochs": 6, "trials_per_policy": 1, "max_concurrent_trials": 2},
            "search": {"algorithm": "random", "seed": 0},
        }
    )
    job, _ = store.create_job(spec=spec)
    port = free_port()
    stop = threading.Event()
    worker = threading.Thread(
        target=run_worker,
        args=(settings,),
        kwargs={"store": store, "stop": stop, "metrics_port": port},
    )
    worker.start()
    seen: list[Samples] = []
    try:

        def finished() -> bool:
            try:
                seen.append(scrape(port))
            except httpx.TransportError:  # not serving yet
                return False
            return store.get_job(job.id).status == "succeeded"

        wait_until(finished, timeout=180, what="the job to succeed", every=0.05)
        # The worker counts the job once the store has it succeeded: a moment later.
        wait_until(lambda: scrape(port)[SUCCEEDED] == 1, timeout=10, what="the job counted")
        final = scrape(port)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive()

    while_running = [s for s in seen if s[CLAIMED] == 1 and s[SUCCEEDED] == 0]
    assert while_running, "no scrape while the job ran"
    epochs = [s[EPOCHS] for s in while_running]
    assert epochs == sorted(epochs) and epochs[0] < epochs[-1]  # a counter, moving
    assert max(s[RUNNING] for s in while_running) >= 1
    ages = [s[LEASE_AGE] for s in while_running]
    assert all(0 <= age < 6 for age in ages)
    assert any(later < earlier for earlier, later in itertools.pairwise(ages))

    # After the job: every epoch the job stored was reported here, nothing runs, no lease.
    stored = sum(t.epochs_done for t in store.list_trials(job_id=job.id).items)
    assert final[EPOCHS] == stored == 2 * 6
    assert final[CLAIMED] == 1 and final[SUCCEEDED] == 1
    assert final[RUNNING] == 0 and final[LEASE_AGE] == 0
    with pytest.raises(httpx.TransportError):  # the server stopped with the worker
        scrape(port)
