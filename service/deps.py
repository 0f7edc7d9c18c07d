"""FastAPI dependency aliases shared by the routes: settings, the store, and the caller's tenant."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request
from lrtune.schemas.tenants import Tenant
from lrtune.service.errors import UnauthorizedError
from lrtune.service.models import DEFAULT_TENANT_ID
from lrtune.service.settings import Settings
from lrtune.service.store import Store

_STORE_LOCK = threading.Lock()
_BEARER = "bearer "


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


def require_caller(request: Request, settings: SettingsDep) -> Tenant | None:
    """Every /v1 route depends on this: with LRTUNE_AUTH=on, a valid bearer token or 401.

    Returns the token's tenant (None with auth off, where no database read is needed for the
    routes that touch no tenant data, such as the schedule preview).
    """
    if not settings.auth:
        return None
    cached: Tenant | None = getattr(request.state, "tenant", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    if not header.lower().startswith(_BEARER) or not header[len(_BEARER) :].strip():
        raise UnauthorizedError(
            "this server needs a bearer token: send `Authorization: Bearer <token>` "
            "(an operator creates one with `lrtune token create --tenant NAME`)"
        )
    tenant = get_store(request).authenticate(token=header[len(_BEARER) :].strip())
    if tenant is None:
        raise UnauthorizedError("the bearer token is unknown or has been revoked")
    request.state.tenant = tenant
    return tenant


CallerDep = Annotated[Tenant | None, Depends(require_caller)]


def get_tenant(caller: CallerDep, store: StoreDep) -> Tenant:
    """The tenant whose jobs the request may see: the token's, or "default" with auth off."""
    if caller is not None:
        return caller
    return store.get_tenant(tenant_id=DEFAULT_TENANT_ID)


TenantDep = Annotated[Tenant, Depends(get_tenant)]
