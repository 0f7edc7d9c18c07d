"""The FastAPI app factory: routers, one error body shape, settings on app.state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from lrtune.schemas.errors import ErrorBody, ErrorDetail, FieldProblem
from lrtune.schemas.schedules import POLICY_NAMES
from lrtune.service import metrics
from lrtune.service.deps import require_caller
from lrtune.service.errors import LrtuneError, UnauthorizedError, http_status
from lrtune.service.middleware import BodySizeLimit
from lrtune.service.routes import (
    best,
    dashboard,
    health,
    jobs,
    recommendations,
    schedules,
    trials,
    whoami,
    workloads,
)
from lrtune.service.settings import Settings
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="lrtune",
        version="0.1.0",
        description="Learning-rate schedule search: submit jobs, watch trials, get a schedule.",
    )
    app.state.settings = settings or Settings()
    # The store (and its engine) is made on first use by deps.get_store: building the app opens
    # no database and runs no migration.
    app.state.store = None
    app.include_router(health.router)
    # Every /v1 route needs a valid token when LRTUNE_AUTH=on; routers added later must be
    # included with V1_GUARD too (tests/test_auth.py walks app.routes to check).
    for router in (
        schedules.router,
        jobs.router,
        trials.router,
        recommendations.router,
        best.router,
        workloads.router,
        whoami.router,
    ):
        app.include_router(router, **V1_GUARD)
    # The dashboard: its page at /, its scripts and the vendored chart library under /static.
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=app.state.settings.max_request_bytes)
    metrics.install(app)
    return app


# What every /v1 router is included with: the caller check and its documented 401. (Routes that
# need more than scope read say so with deps.needs, and document their 403.)
V1_GUARD: dict[str, Any] = {
    "dependencies": [Depends(require_caller)],
    "responses": {401: {"model": ErrorBody}},
}


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    if app.state.store is not None:
        app.state.store.dispose()
        app.state.store = None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LrtuneError)
    async def on_lrtune_error(request: Request, error: LrtuneError) -> JSONResponse:
        fields = [FieldProblem(path=error.field, message=error.message)] if error.field else []
        answer = _error(http_status(error), error.code, error.message, fields)
        if isinstance(error, UnauthorizedError):
            answer.headers["WWW-Authenticate"] = 'Bearer realm="lrtune"'
        return answer

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = [
            FieldProblem(path=field_path(problem["loc"]), message=problem["msg"])
            for problem in error.errors()
        ]
        message = "; ".join(f"{f.path}: {f.message}" if f.path else f.message for f in fields)
        return _error(422, "validation_error", message or "invalid request", fields)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail), [])

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error; the server log has details", [])


def field_path(loc: Sequence[Any]) -> str:
    """`("body", "schedule", "clr", "max_lr")` -> `schedule.max_lr`.

    Drops the request part and what pydantic inserts for unions (a discriminated union's tag such
    as `clr`, a member's class name such as `LrBounds`, a type such as `literal['auto']`), so the
    path is the one the user wrote.
    """
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(p for p in parts if not _is_union_member_label(p))


def _is_union_member_label(part: str) -> bool:
    return part in POLICY_NAMES or "[" in part or (part.isidentifier() and part[0].isupper())


def _error(status: int, code: str, message: str, fields: list[FieldProblem]) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, fields=fields))
    return JSONResponse(status_code=status, content=body.model_dump())
