"""Results of a job beyond its trials: the LR range test and the recommended schedule."""

from __future__ import annotations

from fastapi import APIRouter, Response
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.recommendations import RangeTestResult, Recommendation
from lrtune.service.deps import StoreDep, TenantDep
from lrtune.service.recommendations import job_recommendation
from lrtune.service.responses import json_response
from lrtune.service.routes.jobs import JobId

router = APIRouter(prefix="/v1", tags=["recommendations"])
_ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}


@router.get("/jobs/{job_id}/range-test", response_model=RangeTestResult, responses=_ERRORS)
def get_range_test(job_id: JobId, store: StoreDep, tenant: TenantDep) -> Response:
    """The job's LR range test (loss against rate, suggested bounds); 404 until it has run."""
    return json_response(store.get_range_test(job_id, tenant_id=tenant.id))


@router.get("/jobs/{job_id}/recommendation", response_model=Recommendation, responses=_ERRORS)
def get_recommendation(job_id: JobId, store: StoreDep, tenant: TenantDep) -> Response:
    """The recommended schedule (final once succeeded); 404 until a trial finishes its budget."""
    return json_response(job_recommendation(store, job_id=job_id, tenant_id=tenant.id))
