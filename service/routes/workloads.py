"""The built-in workloads a job can name, from the catalogue (no torch import)."""

from __future__ import annotations

from fastapi import APIRouter
from lrtune.schemas.workloads import BUILTIN_WORKLOADS, WorkloadInfo

router = APIRouter(prefix="/v1", tags=["workloads"])


@router.get("/workloads", response_model=list[WorkloadInfo])
def list_workloads() -> list[WorkloadInfo]:
    """The built-in workloads with their params and the metrics they report."""
    return list(BUILTIN_WORKLOADS.values())
