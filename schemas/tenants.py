"""Tenants, their API tokens and what a token may do (a token's secret never appears)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

TokenScope = Literal["read", "submit", "code"]
# The scopes nest: each allows what the ones before it allow, and more.
#   read: every GET of the tenant's data, and the previews (computed, nothing stored);
#   submit: also create jobs on built-in workloads, and cancel jobs;
#   code: also jobs whose workload names an entrypoint (user code run on the workers).
TOKEN_SCOPES: tuple[TokenScope, ...] = ("read", "submit", "code")


def scope_rights(scope: TokenScope) -> list[TokenScope]:
    """What `scope` allows: itself and every scope before it."""
    return list(TOKEN_SCOPES[: TOKEN_SCOPES.index(scope) + 1])


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
    scope: TokenScope
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class TokenRef(BaseModel):
    """A token as others name it (a job's submitter or canceller): its id and label."""

    id: int
    label: str


class TokenGrant(BaseModel):
    """What a valid bearer token stands for: its tenant, which token it is, and its scope."""

    tenant: Tenant
    token: TokenRef
    scope: TokenScope


class Caller(BaseModel):
    """Who a request acts as and what it may do: GET /v1/whoami's answer."""

    tenant: str
    token: TokenRef | None = Field(
        description="The bearer token's id and label; null with LRTUNE_AUTH=off."
    )
    scope: TokenScope = Field(
        description="The token's scope. With LRTUNE_AUTH=off: code for a caller on the "
        "server's own machine, submit for any other (entrypoints are local-only then)."
    )
    rights: list[TokenScope] = Field(
        description="Every scope this one includes: read (GETs and previews), submit (create "
        "and cancel jobs on built-in workloads), code (jobs with a workload.entrypoint)."
    )

    def may(self, right: TokenScope) -> bool:
        return right in self.rights

    @property
    def token_id(self) -> int | None:
        return None if self.token is None else self.token.id
