"""The best settings found so far, across every finished job, straight from SQL."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.jobs import BestSetting
from lrtune.service.deps import StoreDep, TenantDep
from lrtune.service.responses import json_response
from pydantic import TypeAdapter

router = APIRouter(prefix="/v1", tags=["best"])
_SETTINGS: TypeAdapter[list[BestSetting]] = TypeAdapter(list[BestSetting])


@router.get("/best", response_model=list[BestSetting], responses={422: {"model": ErrorBody}})
def best_settings(
    store: StoreDep,
    tenant: TenantDep,
    workload: Annotated[str | None, Query(max_length=200)] = None,
    policy: Annotated[str | None, Query(max_length=32)] = None,
    metric: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """Per workload and policy: your succeeded jobs' best completed trial, with its schedule."""
    found = store.best_settings(
        tenant_id=tenant.id, workload=workload, policy=policy, metric=metric
    )
    return json_response(found, adapter=_SETTINGS)
