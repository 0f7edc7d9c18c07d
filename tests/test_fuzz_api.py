"""Property-based fuzz of the whole API from its OpenAPI document (schemathesis), in process.

Every operation gets FUZZ_EXAMPLES generated requests (valid and invalid bodies, parameters and
headers) against a fresh database, on SQLite and PostgreSQL, with authentication on and a valid
token: no answer may be a 5xx, and every answer must match the document (status code declared,
body and headers as described, content type).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from lrtune.schemas.jobs import TrialMetric
from lrtune.service.app import create_app
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

FUZZ_EXAMPLES = int(os.environ.get("LRTUNE_FUZZ_EXAMPLES", "150"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def fuzzed_app(settings: Settings, store: Store, job_body: dict[str, Any]) -> Iterator[FastAPI]:
    """The API with auth on; a job with a trial, an epoch and a probe, so ids 1 name real rows."""
    # A small preview limit: the route's refusal is fuzzed too, and a million-point answer per
    # example would spend the time budget on JSON, not on finding faults.
    app = create_app(settings.model_copy(update={"auth": True, "max_preview_steps": 5000}))
    record, token = store.create_token(tenant="fuzz")
    from lrtune.schemas.jobs import JobSpec, TrialProbe

    job, _ = store.create_job(spec=JobSpec.model_validate(job_body), tenant_id=record.id)
    store.claim_next_job(worker_id="w", lease_seconds=60)
    trial = store.create_trial(
        job_id=job.id,
        policy="fixed",
        schedule={"policy": "fixed", "lr": 0.1},
        search_config={},
        seed=0,
    )
    store.record_trial_results(
        trial_id=trial.id,
        results=[
            TrialMetric(
                epoch=1,
                step=10,
                lr=0.1,
                train_loss=float("nan"),
                val_loss=1.0,
                metrics={"val_accuracy": 0.5},
                elapsed_s=0.1,
            )
        ],
    )
    store.record_trial_probes(
        trial_id=trial.id,
        probes=[
            TrialProbe(
                epoch=1,
                step=10,
                cooldown_steps=10,
                train_loss=0.8,
                val_loss=0.9,
                metrics={"val_accuracy": 0.6},
                elapsed_s=0.1,
                decision="continue",
            )
        ],
    )
    app.state.fuzz_token = token
    yield app


def _operations(app: FastAPI) -> dict[str, Any]:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    return {op.label: op for op in (r.ok() for r in loaded.get_all_operations())}


# Labels only (building an app opens no database); the operations are reloaded per test below.
OPERATIONS = sorted(_operations(create_app(Settings())))


@pytest.mark.parametrize("label", OPERATIONS)
def test_api_never_answers_5xx_and_matches_its_schema(label: str, fuzzed_app: FastAPI) -> None:
    # schemathesis' own pytest plugin does not run under this pytest; hypothesis drives it.
    operation = _operations(fuzzed_app)[label]
    headers = {"Authorization": f"Bearer {fuzzed_app.state.fuzz_token}"}

    @given(case=operation.as_strategy())
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    fuzz()
