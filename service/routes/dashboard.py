"""The web dashboard: its page at / (and its own paths), and the compact learning-curve view its
job page draws.

`GET /v1/jobs/{id}/curves` answers in one response, whatever the job's size, the standing of
every policy and the curves of each policy's best trials, thinned to `max_points` epochs, so a
job of thousands of trials draws in one request.
"""

from __future__ import annotations

import json
from pathlib import Path as FilePath
from typing import Annotated, get_args

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from lrtune.schemas.dashboard import JobCurves
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.jobs import (
    ACTIVE_JOB_STATUSES,
    COUNTED_TRIAL_STATUSES,
    FINISHED_JOB_STATUSES,
    FINISHED_TRIAL_STATUSES,
    JobStatus,
    TrialStatus,
)
from lrtune.service.deps import StoreDep, TenantDep
from lrtune.service.responses import json_response
from lrtune.service.routes.jobs import JobId

STATIC_DIR = FilePath(__file__).resolve().parents[1] / "static"


def _status_words_module() -> str:
    """schemas/jobs.py's status words as a JavaScript module: the pages spell none themselves.
    Sets are listed in the order of their statuses' Literal."""
    trial_statuses = get_args(TrialStatus)
    words = {
        "JOB_STATUSES": list(get_args(JobStatus)),
        "FINISHED_JOB_STATUSES": [s for s in get_args(JobStatus) if s in FINISHED_JOB_STATUSES],
        "ACTIVE_JOB_STATUSES": list(ACTIVE_JOB_STATUSES),
        "TRIAL_STATUSES": list(trial_statuses),
        "FINISHED_TRIAL_STATUSES": [s for s in trial_statuses if s in FINISHED_TRIAL_STATUSES],
        "COUNTED_TRIAL_STATUSES": [s for s in trial_statuses if s in COUNTED_TRIAL_STATUSES],
    }
    lines = [f"export const {name} = {json.dumps(values)};" for name, values in words.items()]
    return "// lrtune's status words, from lrtune.schemas.jobs.\n" + "\n".join(lines) + "\n"


_STATUS_WORDS_JS = _status_words_module()

router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
def dashboard_page() -> FileResponse:
    """The dashboard's single page (its views are routed in the browser)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# The dashboard's own paths, typed or pasted without their `#` (/jobs/7 for /#/jobs/7), are sent
# to the page, whose router reads the hash.
@router.get("/jobs", include_in_schema=False)
@router.get("/jobs/{job_id}", include_in_schema=False)
@router.get("/trials/{trial_id}", include_in_schema=False)
@router.get("/new", include_in_schema=False)
def dashboard_deep_link(request: Request) -> RedirectResponse:
    """The dashboard at the view this path names."""
    return RedirectResponse(f"/#{request.url.path}")


@router.get("/status-words.js", include_in_schema=False)
def status_words() -> Response:
    """The status words as a JavaScript module the dashboard's pages import."""
    return Response(
        content=_STATUS_WORDS_JS,
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache"},
    )


@router.get(
    "/v1/jobs/{job_id}/curves",
    response_model=JobCurves,
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def get_job_curves(
    job_id: JobId,
    store: StoreDep,
    tenant: TenantDep,
    per_policy: Annotated[
        int, Query(ge=1, le=100, description="Best trials of each policy to draw.")
    ] = 25,
    max_points: Annotated[
        int, Query(ge=2, le=2000, description="Most epochs kept per curve (evenly thinned).")
    ] = 200,
) -> Response:
    """Each policy's standing and its best trials' learning curves, in one compact answer."""
    curves = store.job_curves(
        job_id, per_policy=per_policy, max_points=max_points, tenant_id=tenant.id
    )
    return json_response(curves)
