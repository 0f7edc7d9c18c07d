"""Liveness of the API process and readiness of its database."""

from __future__ import annotations

from fastapi import APIRouter
from lrtune.schemas.errors import ErrorBody
from lrtune.service.deps import StoreDep
from lrtune.service.migrate import check_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
def readyz(store: StoreDep) -> dict[str, str]:
    """Readiness: the database answers and its schema is at the migrations' head."""
    revision = store.schema_revision()
    check_revision(revision)
    return {"status": "ok", "schema_revision": str(revision)}
