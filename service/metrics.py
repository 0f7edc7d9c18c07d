"""`/metrics` in the Prometheus text format, through the official prometheus-client.

For operators: totals across tenants, never a job's name or a tenant's data. Each app has a
registry of its own (a test makes many apps). What the database knows (jobs by status, the queue's
wait, running trials, epochs stored, the worker heard from longest ago) is read at each scrape;
request latency is observed per route by a middleware. With LRTUNE_AUTH=on the endpoint needs
LRTUNE_METRICS_TOKEN as a bearer token; tenant tokens get 403.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from lrtune.service.deps import app_store
from lrtune.service.errors import ForbiddenError, UnauthorizedError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

router = APIRouter()

JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


class StoreCollector(Collector):
    """The database's side, read when Prometheus scrapes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        settings = self.app.state.settings
        snapshot = app_store(self.app).operations_snapshot(lease_seconds=settings.job_lease_seconds)
        jobs = GaugeMetricFamily("lrtune_jobs", "Jobs in each status.", labels=["status"])
        for status in sorted(set(JOB_STATUSES) | set(snapshot.jobs_by_status)):
            jobs.add_metric([status], snapshot.jobs_by_status.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "lrtune_queue_wait_seconds",
            "How long the oldest queued job has waited (0: the queue is empty).",
            value=snapshot.oldest_queued_s,
        )
        yield GaugeMetricFamily(
            "lrtune_running_trials", "Trials running now.", value=snapshot.running_trials
        )
        yield CounterMetricFamily(
            "lrtune_epochs",
            "Epochs stored; rate() of it is the epochs per second.",
            value=snapshot.epochs_stored,
        )
        yield GaugeMetricFamily(
            "lrtune_worker_lease_age_seconds",
            "Seconds since the last heartbeat of the running job's worker heard from longest ago "
            "(0: no running job); past LRTUNE_JOB_LEASE_SECONDS the job goes to another worker.",
            value=snapshot.longest_since_heartbeat_s,
        )


def install(app: Any) -> None:
    """Give `app` its registry, the store's collector, the latency middleware and `/metrics`."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(app))
    app.state.metrics_registry = registry
    app.state.request_seconds = Histogram(
        "lrtune_request_seconds",
        "Time to answer a request, by route template and method.",
        ["route", "method"],
        registry=registry,
    )
    app.add_middleware(RequestLatency, app_ref=app)
    app.include_router(router)


class RequestLatency:
    """Observes each HTTP request's time under its route's template (`/v1/jobs/{job_id}`, never
    the id itself), so the series stay few and name no job."""

    def __init__(self, app: ASGIApp, *, app_ref: Any) -> None:
        self.inner = app
        self.app_ref = app_ref

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.inner(scope, receive, send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.app_ref.state.request_seconds.labels(template, scope["method"]).observe(
                time.perf_counter() - started
            )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if settings.auth:
        _check_metrics_token(request, settings.metrics_token)
    body = generate_latest(request.app.state.metrics_registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)


def _check_metrics_token(request: Request, expected: str | None) -> None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        raise UnauthorizedError("/metrics needs `Authorization: Bearer <LRTUNE_METRICS_TOKEN>`")
    if expected is None or not hmac.compare_digest(header[7:].strip(), expected):
        raise ForbiddenError(
            "/metrics is for operators: it answers LRTUNE_METRICS_TOKEN only, not a tenant's "
            "token" + ("" if expected else " (and LRTUNE_METRICS_TOKEN is not set here)")
        )
