"""Job routes: submit (idempotently), list, read and cancel jobs, list a job's trials and rungs,
and its timeline."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.jobs import (
    Job,
    JobPage,
    JobRung,
    JobSpec,
    JobStatus,
    JobTimeline,
    TrialPage,
    TrialStatus,
)
from lrtune.schemas.schedules import POLICY_NAMES
from lrtune.schemas.tenants import Caller, Tenant
from lrtune.service.codecs import MAX_ID
from lrtune.service.deps import (
    CallerDep,
    SettingsDep,
    StoreDep,
    TenantDep,
    needs,
    require_right,
)
from lrtune.service.errors import ForbiddenError, InvalidInputError, LimitExceededError
from lrtune.service.responses import json_response
from lrtune.service.settings import Settings
from lrtune.workers.job_events import job_event
from lrtune.workers.user_code import EntrypointRefused, EntrypointSources
from pydantic import TypeAdapter

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
_CANCEL_ERRORS: dict[int | str, dict[str, object]] = {**_ERRORS, 403: {"model": ErrorBody}}
_SUBMIT_ERRORS: dict[int | str, dict[str, object]] = {
    **_CANCEL_ERRORS,
    413: {"model": ErrorBody},
    429: {"model": ErrorBody},
}
_RUNGS: TypeAdapter[list[JobRung]] = TypeAdapter(list[JobRung])


@router.post(
    "/jobs",
    status_code=201,
    response_model=Job,
    responses=_SUBMIT_ERRORS,
    dependencies=[needs("submit", "submitting a job")],
)
def submit_job(
    spec: JobSpec,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="Send the same key to retry safely: one job per key.",
        ),
    ] = None,
) -> Job:
    """Submit a schedule-search job; 200 with the same job when its Idempotency-Key is reused.
    Needs scope submit, and code for a workload that names an entrypoint."""
    check_job_limits(spec, settings, tenant=tenant)
    if spec.workload.entrypoint is not None:
        check_entrypoint_allowed(caller)
        check_entrypoint_source(spec.workload.entrypoint, settings)
    job, created = store.create_job(
        spec=spec,
        idempotency_key=idempotency_key,
        tenant_id=tenant.id,
        max_active_jobs=tenant.limits.max_concurrent_jobs or settings.max_concurrent_jobs,
        submitted_by=caller.token_id,
    )
    if created:
        job_event(job.id, "submitted by tenant %s", tenant.name)
    else:
        response.status_code = 200
    return job


@router.get("/jobs", response_model=JobPage, responses=_ERRORS)
def list_jobs(
    store: StoreDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """A page of jobs, newest first."""
    page = store.list_jobs(tenant_id=tenant.id, status=status, limit=limit, cursor=cursor)
    return json_response(page)


@router.get("/jobs/{job_id}", response_model=Job, responses=_ERRORS)
def get_job(job_id: JobId, store: StoreDep, tenant: TenantDep) -> Response:
    """One job: its status, spec, progress and best trial so far."""
    return json_response(store.get_job(job_id, tenant_id=tenant.id))


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=Job,
    responses=_CANCEL_ERRORS,
    dependencies=[needs("submit", "cancelling a job")],
)
def cancel_job(job_id: JobId, store: StoreDep, tenant: TenantDep, caller: CallerDep) -> Job:
    """Cancel a job; idempotent, and no new trial starts once this has answered. Needs scope
    submit."""
    return store.cancel_job(job_id, tenant_id=tenant.id, cancelled_by=caller.token_id)


@router.get("/jobs/{job_id}/trials", response_model=TrialPage, responses=_ERRORS)
def list_trials(
    job_id: JobId,
    store: StoreDep,
    tenant: TenantDep,
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
        job_id=job_id, tenant_id=tenant.id, policy=policy, status=status, limit=limit, cursor=cursor
    )
    return json_response(page)


@router.get("/jobs/{job_id}/rungs", response_model=list[JobRung], responses=_ERRORS)
def list_job_rungs(job_id: JobId, store: StoreDep, tenant: TenantDep) -> Response:
    """Each rung epoch's probed trials, best cooldown value first, with raw metric and decision."""
    return json_response(store.job_rungs(job_id, tenant_id=tenant.id), adapter=_RUNGS)


@router.get("/jobs/{job_id}/timeline", response_model=JobTimeline, responses=_ERRORS)
def get_job_timeline(job_id: JobId, store: StoreDep, tenant: TenantDep) -> Response:
    """Where the job's time went: its phases (queued, planning, range_test, search,
    confirmation, recommendation) with their wall-clock, and each trial's start-up and busy
    time."""
    return json_response(store.job_timeline(job_id, tenant_id=tenant.id))


def check_job_limits(spec: JobSpec, settings: Settings, *, tenant: Tenant) -> None:
    """The checks that depend on this server's and the tenant's limits; pydantic did the rest.

    A tenant's own limit (set with `lrtune token limits`) replaces the server's default.
    """
    max_epochs = tenant.limits.max_epochs or settings.max_epochs
    if spec.budget.epochs > max_epochs:
        raise LimitExceededError(
            f"budget.epochs may be at most {max_epochs} for tenant {tenant.name!r} (max_epochs)",
            field="budget.epochs",
        )
    max_trials = tenant.limits.max_trials_per_job or settings.max_trials_per_job
    if spec.planned_trials > max_trials:
        raise LimitExceededError(
            f"this job plans {spec.planned_trials} trials (policies x trials_per_policy, plus "
            f"confirmation seeds and one per horizon of a sweep); tenant {tenant.name!r} may run "
            f"at most {max_trials} per job (max_trials_per_job)",
            field="budget.trials_per_policy",
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


def check_entrypoint_allowed(caller: Caller) -> None:
    """An entrypoint runs the caller's code on every worker: only a caller the server trusts with
    that may name one. With auth on, a token of scope code; with auth off (one local user, no
    tokens) only a request from this machine (deps.get_caller), since anyone who can reach the
    port would otherwise run code as the worker."""
    if caller.may("code"):
        return
    if caller.token is None:
        raise ForbiddenError(
            "workload.entrypoint runs your code on the workers; with LRTUNE_AUTH=off it is "
            "accepted only from this machine. Turn authentication on (LRTUNE_AUTH=on) and send "
            "a token of scope 'code', or submit from the server itself",
            field="workload.entrypoint",
        )
    require_right(
        caller,
        "code",
        "submitting a job whose workload names an entrypoint (user code)",
        field="workload.entrypoint",
    )


def check_entrypoint_source(entrypoint: str, settings: Settings) -> None:
    """Where the API has the workers' code paths (`lrtune serve`), an entrypoint from anywhere
    else is refused now, as the worker would refuse it at planning."""
    if not settings.entrypoints_known:
        return
    sources = EntrypointSources.of(settings.code_paths, settings.allowed_entrypoint_packages)
    try:
        sources.check(entrypoint)
    except EntrypointRefused as error:
        raise InvalidInputError(str(error), field="workload.entrypoint") from None
