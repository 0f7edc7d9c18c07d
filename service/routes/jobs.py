"""Job routes: submit (idempotently), list, read and cancel jobs, and list a job's trials."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.jobs import Job, JobPage, JobSpec, JobStatus, TrialPage, TrialStatus
from lrtune.schemas.schedules import POLICY_NAMES
from lrtune.service.deps import SettingsDep, StoreDep
from lrtune.service.errors import InvalidInputError, LimitExceededError
from lrtune.service.settings import Settings
from lrtune.service.store import MAX_ID
from pydantic import BaseModel, TypeAdapter

router = APIRouter(prefix="/v1", tags=["jobs"])

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]
Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=100, description="next_cursor of the previous page.")
]
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody},
}


@router.post("/jobs", status_code=201, response_model=Job, responses=_ERRORS)
def submit_job(
    spec: JobSpec,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="Send the same key to retry safely: one job per key.",
        ),
    ] = None,
) -> Job:
    """Submit a schedule-search job; 200 with the same job when its Idempotency-Key is reused."""
    check_job_limits(spec, settings)
    job, created = store.create_job(spec=spec, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
    return job


@router.get("/jobs", response_model=JobPage, responses=_ERRORS)
def list_jobs(
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """A page of jobs, newest first."""
    return json_response(store.list_jobs(status=status, limit=limit, cursor=cursor))


@router.get("/jobs/{job_id}", response_model=Job, responses=_ERRORS)
def get_job(job_id: JobId, store: StoreDep) -> Response:
    """One job: its status, spec, progress and best trial so far."""
    return json_response(store.get_job(job_id))


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=Job, responses=_ERRORS)
def cancel_job(job_id: JobId, store: StoreDep) -> Job:
    """Cancel a job; idempotent, and no new trial starts once this has answered."""
    return store.cancel_job(job_id)


@router.get("/jobs/{job_id}/trials", response_model=TrialPage, responses=_ERRORS)
def list_trials(
    job_id: JobId,
    store: StoreDep,
    policy: Annotated[str | None, Query(description="Only this policy's trials.")] = None,
    status: Annotated[TrialStatus | None, Query(description="Only trials in this status.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """A page of a job's trials, newest first."""
    if policy is not None and policy not in POLICY_NAMES:
        raise InvalidInputError(
            f"unknown policy {policy!r}; policies are {list(POLICY_NAMES)}", field="policy"
        )
    page = store.list_trials(
        job_id=job_id, policy=policy, status=status, limit=limit, cursor=cursor
    )
    return json_response(page)


def json_response(
    content: BaseModel | list[Any], *, adapter: TypeAdapter[Any] | None = None, status: int = 200
) -> Response:
    """Serialise a read model once, with its own config (NaN as "NaN").

    FastAPI would otherwise dump the model, validate it again against `response_model` and
    dump it a second time: most of the time of a page of trials.
    """
    if isinstance(content, BaseModel):
        body = content.model_dump_json()
    else:
        assert adapter is not None
        body = adapter.dump_json(content).decode()
    return Response(content=body, status_code=status, media_type="application/json")


def check_job_limits(spec: JobSpec, settings: Settings) -> None:
    """The checks that depend on this server's limits; pydantic has done the rest."""
    if spec.budget.epochs > settings.max_epochs:
        raise LimitExceededError(
            f"budget.epochs may be at most {settings.max_epochs} on this server",
            field="budget.epochs",
        )
    if spec.budget.trials_per_policy > settings.max_trials_per_policy:
        raise LimitExceededError(
            f"budget.trials_per_policy may be at most {settings.max_trials_per_policy} "
            "on this server",
            field="budget.trials_per_policy",
        )
    if len(spec.policies) > settings.max_policies_per_job:
        raise LimitExceededError(
            f"a job may compare at most {settings.max_policies_per_job} policies on this server",
            field="policies",
        )
    if len(spec.workload.label) > 200:
        raise InvalidInputError(
            "workload.entrypoint may be at most 200 characters", field="workload.entrypoint"
        )
