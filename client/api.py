"""A typed Python client for the lrtune REST API (httpx): schema objects in, schema objects out.

Usable from scripts and notebooks::

    with LrtuneClient("http://127.0.0.1:8000") as lrtune:
        job = lrtune.submit_job(spec)
        job = lrtune.wait(job.id)
        print(lrtune.recommendation(job.id).rationale)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
from lrtune.schemas.errors import ErrorBody, FieldProblem
from lrtune.schemas.jobs import (
    FINISHED_JOB_STATUSES,
    BestSetting,
    Job,
    JobPage,
    JobRung,
    JobSpec,
    JobTimeline,
    Trial,
    TrialMetric,
    TrialPage,
    TrialProbe,
)
from lrtune.schemas.policies import PolicyInfo
from lrtune.schemas.recommendations import RangeTestResult, Recommendation
from lrtune.schemas.schedules import PreviewResponse
from lrtune.schemas.tenants import Caller
from lrtune.schemas.workloads import WorkloadInfo
from pydantic import BaseModel, TypeAdapter, ValidationError

DEFAULT_URL = "http://127.0.0.1:8000"

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An answer of the API that is not a success, with the error body's parts."""

    def __init__(
        self, status: int, code: str, message: str, fields: list[FieldProblem] | None = None
    ) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = ErrorBody.model_validate_json(response.content)
        except ValidationError:
            text = response.text.strip().splitlines()
            message = text[0][:200] if text else response.reason_phrase or "no message"
            return cls(response.status_code, "http_error", message)
        detail = body.error
        return cls(response.status_code, detail.code, detail.message, list(detail.fields))


class ServiceUnreachable(ApiError):
    """No answer at all: the service is down, the URL is wrong, or the request timed out."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "unreachable", f"cannot reach lrtune at {url}: {reason}")


class LrtuneClient:
    """The lrtune REST API as methods; one connection pool, closed by `close()` or `with`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> LrtuneClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- jobs ---------------------------------------------------------------------------------

    def submit_job(
        self, spec: JobSpec | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Job:
        """POST /v1/jobs. A mapping is sent as it is, so the server's 422 names the bad field."""
        body = spec.model_dump(mode="json") if isinstance(spec, JobSpec) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._model(Job, self._request("POST", "/v1/jobs", json=body, headers=headers))

    def list_jobs(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobPage:
        params = _params(status=status, limit=limit, cursor=cursor)
        return self._model(JobPage, self._request("GET", "/v1/jobs", params=params))

    def iter_jobs(self, *, status: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """Every job, newest first, fetching page after page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_job(self, job_id: int) -> Job:
        return self._model(Job, self._request("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: int) -> Job:
        """Ask the job to stop (idempotent); answers the job as it is now."""
        self._request("POST", f"/v1/jobs/{job_id}/cancel")
        return self.get_job(job_id)

    def job_timeline(self, job_id: int) -> JobTimeline:
        """Where the job's time went: its phases in order, and each trial's start-up and busy."""
        return self._model(JobTimeline, self._request("GET", f"/v1/jobs/{job_id}/timeline"))

    def wait(self, job_id: int, *, poll_s: float = 2.0, timeout_s: float | None = None) -> Job:
        """Poll until the job succeeded, failed or was cancelled; TimeoutError past timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if job.status in FINISHED_JOB_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout_s}s")
            time.sleep(poll_s)

    # ---- trials -------------------------------------------------------------------------------

    def list_trials(
        self,
        job_id: int,
        *,
        policy: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TrialPage:
        params = _params(policy=policy, status=status, limit=limit, cursor=cursor)
        response = self._request("GET", f"/v1/jobs/{job_id}/trials", params=params)
        return self._model(TrialPage, response)

    def iter_trials(
        self,
        job_id: int,
        *,
        policy: str | None = None,
        status: str | None = None,
        page_size: int = 200,
    ) -> Iterator[Trial]:
        cursor: str | None = None
        while True:
            page = self.list_trials(
                job_id, policy=policy, status=status, limit=page_size, cursor=cursor
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_trial(self, trial_id: int) -> Trial:
        return self._model(Trial, self._request("GET", f"/v1/trials/{trial_id}"))

    def trial_metrics(self, trial_id: int) -> list[TrialMetric]:
        response = self._request("GET", f"/v1/trials/{trial_id}/metrics")
        return _validate(_METRICS, response)

    def trial_probes(self, trial_id: int) -> list[TrialProbe]:
        """The trial's cooldown probes in epoch order, with early stopping's decisions."""
        response = self._request("GET", f"/v1/trials/{trial_id}/probes")
        return _validate(_PROBES, response)

    def job_rungs(self, job_id: int) -> list[JobRung]:
        """Per rung epoch, the job's probed trials best first: raw and judged values, decision."""
        response = self._request("GET", f"/v1/jobs/{job_id}/rungs")
        return _validate(_RUNGS, response)

    # ---- results ------------------------------------------------------------------------------

    def range_test(self, job_id: int) -> RangeTestResult:
        response = self._request("GET", f"/v1/jobs/{job_id}/range-test")
        return self._model(RangeTestResult, response)

    def recommendation(self, job_id: int) -> Recommendation:
        response = self._request("GET", f"/v1/jobs/{job_id}/recommendation")
        return self._model(Recommendation, response)

    def best(
        self, *, workload: str | None = None, policy: str | None = None, metric: str | None = None
    ) -> list[BestSetting]:
        params = _params(workload=workload, policy=policy, metric=metric)
        return _validate(_BEST, self._request("GET", "/v1/best", params=params))

    # ---- catalogue ----------------------------------------------------------------------------

    def preview(
        self, schedule: BaseModel | Mapping[str, Any], steps: int, every: int = 1
    ) -> PreviewResponse:
        body_schedule = (
            schedule.model_dump(mode="json") if isinstance(schedule, BaseModel) else dict(schedule)
        )
        body = {"schedule": body_schedule, "steps": steps, "every": every}
        response = self._request("POST", "/v1/schedules/preview", json=body)
        return self._model(PreviewResponse, response)

    def policies(self) -> list[PolicyInfo]:
        return _validate(_POLICIES, self._request("GET", "/v1/policies"))

    def workloads(self) -> list[WorkloadInfo]:
        return _validate(_WORKLOADS, self._request("GET", "/v1/workloads"))

    def whoami(self) -> Caller:
        """Who this client acts as: tenant, token (id and label), scope and its rights."""
        return self._model(Caller, self._request("GET", "/v1/whoami"))

    # ---- plumbing -----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, params=params, json=json, headers=headers)
        except httpx.TransportError as error:
            raise ServiceUnreachable(self.base_url, str(error) or type(error).__name__) from error
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    @staticmethod
    def _model(model: type[M], response: httpx.Response) -> M:
        return model.model_validate_json(response.content)


_METRICS: TypeAdapter[list[TrialMetric]] = TypeAdapter(list[TrialMetric])
_PROBES: TypeAdapter[list[TrialProbe]] = TypeAdapter(list[TrialProbe])
_RUNGS: TypeAdapter[list[JobRung]] = TypeAdapter(list[JobRung])
_BEST: TypeAdapter[list[BestSetting]] = TypeAdapter(list[BestSetting])
_POLICIES: TypeAdapter[list[PolicyInfo]] = TypeAdapter(list[PolicyInfo])
_WORKLOADS: TypeAdapter[list[WorkloadInfo]] = TypeAdapter(list[WorkloadInfo])

T = TypeVar("T")


def _validate(adapter: TypeAdapter[T], response: httpx.Response) -> T:
    return adapter.validate_json(response.content)


def _params(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}
