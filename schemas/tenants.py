"""Tenants and their API tokens as the server's CLI shows them (a token's secret never appears)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class TenantLimits(BaseModel):
    """A tenant's own limits; None: the server's default (LRTUNE_MAX_*)."""

    max_concurrent_jobs: int | None = Field(None, gt=0)
    max_trials_per_job: int | None = Field(None, gt=0)
    max_epochs: int | None = Field(None, gt=0)


class Tenant(BaseModel):
    """Who owns jobs; every API token acts for exactly one tenant."""

    id: int
    name: str
    limits: TenantLimits = TenantLimits(
        max_concurrent_jobs=None, max_trials_per_job=None, max_epochs=None
    )


class ApiToken(BaseModel):
    """A token's record: everything but the token, of which only a SHA-256 is stored."""

    id: int
    tenant: str
    label: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
