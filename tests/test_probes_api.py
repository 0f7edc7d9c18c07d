"""Cooldown probes and rungs through HTTP (GET /v1/trials/{id}/probes, GET /v1/jobs/{id}/rungs),
on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import TrialMetric, TrialProbe
from lrtune.service.store import Store


def _store(app: FastAPI) -> Store:
    store: Store = app.state.store
    return store


def _probed_job(app: FastAPI, api_client: TestClient, job_body: dict[str, Any]) -> dict[str, int]:
    """A running job (val_accuracy, max) with two probed trials at epoch 1; the clr trial diverged
    in its probe."""
    job = api_client.post("/v1/jobs", json=job_body).json()["id"]
    store = _store(app)
    store.claim_next_job(worker_id="w", lease_seconds=60)
    ids = {"job": job}
    for policy, raw, judged, decision in (
        ("fixed", 0.5, 0.7, "continue"),
        ("clr", 0.6, math.nan, "stop"),
    ):
        trial = store.create_trial(
            job_id=job, policy=policy, schedule={"policy": policy}, search_config={}, seed=0
        )
        store.record_trial_results(
            trial_id=trial.id,
            results=[
                TrialMetric(epoch=1, step=10, lr=0.1, metrics={"val_accuracy": raw}, elapsed_s=1.0)
            ],
        )
        store.record_trial_probes(
            trial_id=trial.id,
            probes=[
                TrialProbe.model_validate(
                    {
                        "epoch": 1,
                        "step": 10,
                        "cooldown_steps": 5,
                        "train_loss": 0.4 if decision == "continue" else math.inf,
                        "val_loss": 0.5 if decision == "continue" else math.nan,
                        "metrics": {"val_accuracy": judged},
                        "elapsed_s": 0.2,
                        "decision": decision,
                    }
                )
            ],
        )
        ids[policy] = trial.id
    return ids


def test_a_trials_probes(app: FastAPI, api_client: TestClient, job_body: dict[str, Any]) -> None:
    ids = _probed_job(app, api_client, job_body)
    answer = api_client.get(f"/v1/trials/{ids['fixed']}/probes")
    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {
            "epoch": 1,
            "step": 10,
            "cooldown_steps": 5,
            "train_loss": 0.4,
            "val_loss": 0.5,
            "metrics": {"val_accuracy": 0.7},
            "elapsed_s": 0.2,
            "decision": "continue",
        }
    ]
    [diverged] = api_client.get(f"/v1/trials/{ids['clr']}/probes").json()
    assert diverged["train_loss"] == "Infinity" and diverged["val_loss"] == "NaN"
    assert diverged["metrics"] == {"val_accuracy": "NaN"} and diverged["decision"] == "stop"
    # Restoring shows on the trial.
    assert api_client.get(f"/v1/trials/{ids['clr']}").json()["restored_from_epoch"] is None
    _store(app).set_restored_from_epoch(trial_id=ids["clr"], epoch=1)
    assert api_client.get(f"/v1/trials/{ids['clr']}").json()["restored_from_epoch"] == 1


def test_a_jobs_rungs(app: FastAPI, api_client: TestClient, job_body: dict[str, Any]) -> None:
    ids = _probed_job(app, api_client, job_body)
    answer = api_client.get(f"/v1/jobs/{ids['job']}/rungs")
    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {
            "epoch": 1,
            "trials": [
                {
                    "trial_id": ids["fixed"],
                    "policy": "fixed",
                    "raw": 0.5,
                    "judged": 0.7,
                    "decision": "continue",
                },
                {
                    "trial_id": ids["clr"],
                    "policy": "clr",
                    "raw": 0.6,
                    "judged": "NaN",
                    "decision": "stop",
                },
            ],
            "rung": None,  # probed rungs are ASHA's, not a horizon_halving ladder's
        }
    ]
    # A job no trial was probed in has no rungs.
    queued = api_client.post("/v1/jobs", json=job_body).json()["id"]
    assert api_client.get(f"/v1/jobs/{queued}/rungs").json() == []


@pytest.mark.parametrize("path", ["/v1/trials/999/probes", "/v1/jobs/999/rungs"])
def test_unknown_ids_are_404(api_client: TestClient, path: str) -> None:
    answer = api_client.get(path)
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"
    assert "999" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/trials/0/probes", "/v1/jobs/abc/rungs"])
def test_ids_out_of_range_are_422(api_client: TestClient, path: str) -> None:
    assert api_client.get(path).status_code == 422
