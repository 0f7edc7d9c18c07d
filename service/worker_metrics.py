"""`lrtune worker --metrics-port N`: the worker process's own Prometheus series, served by
prometheus-client's HTTP server from a registry of its own.

What only the worker knows, beside what the API's `/metrics` reads from the database: how old its
current job's lease is, its running trials, the epochs it reported and the jobs it claimed and
ended. No label names a job or a tenant. The daemon (`lrtune.workers.daemon`) never imports the
service, so the counting happens here: `MeteredQueue` is the store as the daemon's `JobQueue`,
noting claims, lease renewals and endings; `StoreSink` notes trials and epochs.
"""

from __future__ import annotations

import time
from wsgiref.simple_server import WSGIServer

from lrtune.schemas.jobs import Job
from lrtune.service.store import Store
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

OUTCOMES = ("succeeded", "failed", "cancelled")


class WorkerMetrics:
    """This worker's series. Counting is cheap and always on; `serve` publishes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_claimed = Counter(
            "lrtune_worker_jobs_claimed", "Jobs this worker claimed.", registry=self.registry
        )
        self.jobs_finished = Counter(
            "lrtune_worker_jobs_finished",
            "Jobs this worker ran to an end, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # each series exists from the start, at 0
            self.jobs_finished.labels(outcome)
        self.epochs = Counter(
            "lrtune_worker_epochs",
            "Epochs this worker's trials reported; rate() of it is the epochs per second.",
            registry=self.registry,
        )
        self.running_trials = Gauge(
            "lrtune_worker_running_trials",
            "Trials of this worker's job running now.",
            registry=self.registry,
        )
        lease_age = Gauge(
            "lrtune_worker_lease_age_seconds",
            "Seconds since this worker's current job lease was claimed or last renewed (0: no "
            "job); past LRTUNE_JOB_LEASE_SECONDS the job goes to another worker.",
            registry=self.registry,
        )
        lease_age.set_function(self._lease_age)
        self._renewed_at: float | None = None

    def claimed(self) -> None:
        self.jobs_claimed.inc()
        self.lease_renewed()

    def lease_renewed(self) -> None:
        self._renewed_at = time.monotonic()

    def job_ended(self, outcome: str | None = None) -> None:
        """The job is no longer this worker's: finished (with `outcome`), handed back, or
        never started (another worker took it)."""
        if outcome is not None:
            self.jobs_finished.labels(outcome).inc()
        self._renewed_at = None
        self.running_trials.set(0)

    def serve(self, port: int, *, host: str = "0.0.0.0") -> WSGIServer:
        """Serve the series on http://host:port/ (any path) from a daemon thread; the caller
        shuts the server down."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server

    def _lease_age(self) -> float:
        renewed = self._renewed_at
        return 0.0 if renewed is None else time.monotonic() - renewed


class MeteredQueue:
    """The store as the daemon's `JobQueue`, telling `metrics` what this worker does with its
    jobs: claims, lease renewals (a successful heartbeat) and endings."""

    def __init__(self, store: Store, metrics: WorkerMetrics) -> None:
        self.store = store
        self.metrics = metrics

    def claim_next_job(self, *, worker_id: str, lease_seconds: float) -> Job | None:
        job = self.store.claim_next_job(worker_id=worker_id, lease_seconds=lease_seconds)
        if job is None:
            self.metrics.job_ended()  # between jobs: no lease (after a lost one too)
        else:
            self.metrics.claimed()
        return job

    def heartbeat(self, *, job_id: int, worker_id: str, lease_seconds: float) -> bool:
        held = self.store.heartbeat(job_id=job_id, worker_id=worker_id, lease_seconds=lease_seconds)
        if held:
            self.metrics.lease_renewed()
        return held

    def mark_job_running(self, *, job_id: int, worker_id: str) -> bool:
        started = self.store.mark_job_running(job_id=job_id, worker_id=worker_id)
        if not started:
            self.metrics.job_ended()
        return started

    def mark_job_succeeded(self, *, job_id: int) -> Job:
        job = self.store.mark_job_succeeded(job_id=job_id)
        self.metrics.job_ended("succeeded")
        return job

    def mark_job_failed(self, *, job_id: int, error: str) -> Job:
        job = self.store.mark_job_failed(job_id=job_id, error=error)
        self.metrics.job_ended("failed")
        return job

    def mark_job_cancelled(self, *, job_id: int) -> Job:
        job = self.store.mark_job_cancelled(job_id=job_id)
        self.metrics.job_ended("cancelled")
        return job

    def is_cancel_requested(self, job_id: int) -> bool:
        return self.store.is_cancel_requested(job_id)

    def hand_back_job(self, *, job_id: int, worker_id: str) -> bool:
        self.metrics.job_ended()
        return self.store.hand_back_job(job_id=job_id, worker_id=worker_id)
