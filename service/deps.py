"""FastAPI dependency aliases shared by the routes: settings, the store, the caller's tenant and
what the caller may do."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request
from lrtune.schemas.tenants import Caller, Tenant, TokenGrant, TokenScope, scope_rights
from lrtune.service.errors import ForbiddenError, UnauthorizedError
from lrtune.service.models import DEFAULT_TENANT_ID
from lrtune.service.settings import Settings
from lrtune.service.store import Store

_STORE_LOCK = threading.Lock()
_BEARER = "bearer "
# Where a request comes from when it is this machine: with auth off, the only callers that may
# name an entrypoint.
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    """The app's store, made on first use: building the app opens no database connection."""
    return app_store(request.app)


def app_store(app: Any) -> Store:
    """`app`'s store (see get_store), for what reads it outside a request's dependencies."""
    store: Store | None = app.state.store
    if store is None:
        with _STORE_LOCK:
            store = app.state.store
            if store is None:
                store = Store.from_settings(app.state.settings)
                app.state.store = store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]


def require_caller(request: Request, settings: SettingsDep) -> TokenGrant | None:
    """Every /v1 route depends on this: with LRTUNE_AUTH=on, a valid bearer token or 401.

    Returns what the token stands for (None with auth off, where no database read is needed for
    the routes that touch no tenant data, such as the schedule preview).
    """
    if not settings.auth:
        return None
    cached: TokenGrant | None = getattr(request.state, "grant", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    if not header.lower().startswith(_BEARER) or not header[len(_BEARER) :].strip():
        raise UnauthorizedError(
            "this server needs a bearer token: send `Authorization: Bearer <token>` "
            "(an operator creates one with `lrtune token create --tenant NAME`)"
        )
    grant = get_store(request).authenticate(token=header[len(_BEARER) :].strip())
    if grant is None:
        raise UnauthorizedError("the bearer token is unknown or has been revoked")
    request.state.grant = grant
    return grant


GrantDep = Annotated[TokenGrant | None, Depends(require_caller)]


def get_tenant(grant: GrantDep, store: StoreDep) -> Tenant:
    """The tenant whose jobs the request may see: the token's, or "default" with auth off."""
    if grant is not None:
        return grant.tenant
    return store.get_tenant(tenant_id=DEFAULT_TENANT_ID)


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def get_caller(request: Request, grant: GrantDep, tenant: TenantDep) -> Caller:
    """Who the request acts as and what it may do: its token's scope, or with auth off every
    right for a caller on this machine and all but `code` for any other, since with auth off
    entrypoints are accepted from this machine only (see routes.jobs.check_entrypoint_allowed)."""
    if grant is not None:
        scope = grant.scope
    else:
        host = request.client.host if request.client is not None else None
        scope = "code" if host in LOOPBACK_HOSTS else "submit"
    return Caller(
        tenant=tenant.name,
        token=grant.token if grant is not None else None,
        scope=scope,
        rights=scope_rights(scope),
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


def needs(right: TokenScope, action: str) -> Any:
    """A route dependency: 403 unless the caller's scope includes `right`. `action` says what
    the route does, for the refusal ("cancelling a job")."""

    def check(caller: CallerDep) -> None:
        require_right(caller, right, action)

    return Depends(check)


def require_right(
    caller: Caller, right: TokenScope, action: str, *, field: str | None = None
) -> None:
    """403 naming the scope `action` needs, unless the caller's scope includes `right`; `field`:
    the request's part that needs it, if one does."""
    if not caller.may(right):
        raise ForbiddenError(
            f"this token's scope is {caller.scope!r}; {action} needs scope {right!r}",
            field=field,
        )
