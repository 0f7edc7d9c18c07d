"""Who the caller is: its tenant, its token and what that token's scope lets it do."""

from __future__ import annotations

from fastapi import APIRouter
from lrtune.schemas.tenants import Caller
from lrtune.service.deps import CallerDep

router = APIRouter(prefix="/v1", tags=["auth"])


@router.get("/whoami", response_model=Caller)
def whoami(caller: CallerDep) -> Caller:
    """The caller's tenant, token (id and label; null with auth off), scope and rights: what the
    dashboard and `lrtune whoami` show, and what a read-only dashboard hides its forms by."""
    return caller
