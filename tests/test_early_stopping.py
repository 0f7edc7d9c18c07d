"""Cooldown-judged early stopping: the spec, the rungs, and Ray Tune's ASHA reading the probe.

The scheduler test runs real Tune experiments on the session's local Ray with a synthetic
population whose raw and probed rankings disagree; the service tests run real jobs through the
worker on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.early_stopping import (
    JUDGED_KEY,
    CooldownASHA,
    SearchASHA,
    judged_value,
    make_scheduler,
    probe_epochs,
    rung_epochs,
)
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler


def spec(**early_stopping: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "policies": ["fixed", "cosine"],
            "budget": {"epochs": 12, "trials_per_policy": 2},
            "early_stopping": early_stopping,
        }
    )


def test_asha_is_judged_by_cooldown_unless_raw_is_asked_for() -> None:
    judged = spec(kind="asha")
    assert judged.early_stopping.judge == "cooldown"
    assert judged.early_stopping.cooldown is not None
    assert type(make_scheduler(judged)) is CooldownASHA
    raw = spec(kind="asha", judge="raw")
    # Tune's own ASHA, leaving confirmation trials alone (they follow the search in its run).
    assert type(make_scheduler(raw)) is SearchASHA
    assert isinstance(make_scheduler(raw), AsyncHyperBandScheduler)
    assert raw.early_stopping.cooldown is None
    assert type(make_scheduler(spec())) is FIFOScheduler
    assert spec().early_stopping.judge is None


def test_probes_land_on_tunes_rungs_below_the_last_epoch() -> None:
    # max_t 12, grace 1, reduction factor 3: Tune's rungs are epochs 1, 3 and 9.
    assert rung_epochs(spec(kind="asha")) == {1, 3, 9}
    assert probe_epochs(spec(kind="asha")) == {1, 3, 9}
    assert probe_epochs(spec(kind="asha", grace_epochs=3)) == {3, 9}
    assert rung_epochs(spec(kind="asha", judge="raw")) == {1, 3, 9}
    assert probe_epochs(spec(kind="asha", judge="raw")) == frozenset()
    assert probe_epochs(spec()) == frozenset()


def test_a_diverged_probe_is_judged_the_worst_value() -> None:
    assert judged_value(math.nan, mode="max") == -math.inf
    assert judged_value(math.inf, mode="min") == math.inf
    assert judged_value(0.5, mode="max") == 0.5


def _population(values: dict[int, tuple[float, float]], *, judge: str, path: Path) -> set[int]:
    """Which trials of a synthetic population reach the last epoch under the job's ASHA.

    Trial i reports raw value raw_i every epoch and, at the rung (epoch 1), its probe's
    judged_i; trials run one at a time in index order, so ASHA's decisions are deterministic.
    """

    def trainable(config: dict[str, Any]) -> None:
        raw, judged = values[config["index"]]
        for epoch in range(1, 4):
            result = {"score": raw, "epoch": epoch}
            if epoch == 1:
                result[JUDGED_KEY] = judged
            tune.report(result)

    job = JobSpec.model_validate(
        {
            "workload": {"name": "digits"},
            "policies": ["fixed"],
            "budget": {"epochs": 3, "trials_per_policy": len(values)},
            "early_stopping": {"kind": "asha", "grace_epochs": 1, "judge": judge},
        }
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(sorted(values))},
        tune_config=tune.TuneConfig(
            metric="score", mode="max", scheduler=make_scheduler(job), max_concurrent_trials=1
        ),
        run_config=tune.RunConfig(storage_path=str(path), name=judge, verbose=0),
    )
    grid = tuner.fit()
    return {result.config["index"] for result in grid if result.metrics["training_iteration"] == 3}


@pytest.mark.ray
def test_asha_promotes_by_the_probe_when_raw_and_probed_rankings_disagree(
    ray_local: str, tmp_path: Path
) -> None:
    # Raw values fall with the index, probed values rise: each later trial looks worse raw
    # and better annealed than every trial before it.
    values = {i: (1.0 - 0.1 * i, 0.1 * i) for i in range(6)}

    by_probe = _population(values, judge="cooldown", path=tmp_path)
    raw = _population(values, judge="raw", path=tmp_path)

    assert by_probe == set(values)  # every trial beat the cutoff of those before it
    assert raw == {0}  # the same population judged raw: everyone after the first is cut


def _job_body(**early_stopping: Any) -> dict[str, Any]:
    return {
        "workload": {"name": "digits", "params": {"model": "mlp"}},
        "policies": ["fixed", "cosine"],
        "budget": {"epochs": 6, "trials_per_policy": 2},
        "early_stopping": early_stopping,
    }


@pytest.mark.parametrize(
    ("early_stopping", "field", "words"),
    [
        ({"kind": "asha", "cooldown": {"fraction": 0}}, "early_stopping.cooldown.fraction", ""),
        ({"kind": "asha", "cooldown": {"fraction": 2.5}}, "early_stopping.cooldown.fraction", ""),
        ({"kind": "asha", "cooldown": {"fraction": -1}}, "early_stopping.cooldown.fraction", ""),
        ({"kind": "asha", "cooldown": {"shape": "cosine"}}, "early_stopping.cooldown.shape", ""),
        ({"judge": "cooldown"}, "early_stopping.judge", "needs early stopping"),
        ({"kind": "none", "judge": "cooldown"}, "early_stopping.judge", "needs early stopping"),
        ({"kind": "asha", "judge": "fair"}, "early_stopping.judge", ""),
        (
            {"kind": "asha", "judge": "raw", "cooldown": {"fraction": 0.5}},
            "early_stopping.cooldown",
            "applies to judge",
        ),
        ({"kind": "horizon_halving", "min_epochs": 0}, "early_stopping.min_epochs", ""),
        ({"kind": "horizon_halving", "reduction_factor": 1}, "early_stopping.reduction_factor", ""),
        ({"kind": "horizon_halving", "min_epochs": 7}, "early_stopping.min_epochs", "above the"),
        ({"kind": "horizon_halving", "judge": "raw"}, "early_stopping.judge", "final value"),
        ({"kind": "asha", "min_epochs": 2}, "early_stopping.min_epochs", "horizon_halving"),
    ],
)
def test_bad_early_stopping_is_a_422_naming_the_field(
    api_client: TestClient, early_stopping: dict[str, Any], field: str, words: str
) -> None:
    response = api_client.post("/v1/jobs", json=_job_body(**early_stopping))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert [f["path"] for f in error["fields"]] == [field]
    assert words in error["message"]


def test_the_fraction_may_be_up_to_two(api_client: TestClient) -> None:
    body = _job_body(kind="asha", cooldown={"fraction": 2.0, "shape": "1-sqrt"})
    response = api_client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    stopping = response.json()["spec"]["early_stopping"]
    assert stopping["judge"] == "cooldown"
    assert stopping["cooldown"] == {"fraction": 2.0, "shape": "1-sqrt"}


def _run_job(settings: Settings, store: Store, body: dict[str, Any]) -> int:
    job, _ = store.create_job(spec=JobSpec.model_validate(body))
    run_worker(settings, once=True, store=store)
    done = store.get_job(job.id)
    assert done.status == "succeeded", done.error
    return job.id


@pytest.mark.ray
def test_a_job_judged_by_cooldown_probes_at_each_rung_and_trains_as_without_probes(
    ray_local: str, settings: Settings, store: Store, curves_by_key: Any
) -> None:
    body = {
        "workload": {"name": "digits", "params": {"model": "mlp"}},
        "metric": {"name": "val_accuracy", "mode": "max"},
        "policies": ["fixed", "cosine", "clr"],
        "budget": {"epochs": 4, "trials_per_policy": 3, "max_concurrent_trials": 2},
        "search": {"seed": 3},
        # Tune's ASHA, stopping Tune trials (populations halve their members themselves).
        "execution": "trials",
    }
    judged_id = _run_job(
        settings,
        store,
        {**body, "early_stopping": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 3}},
    )
    plain_id = _run_job(settings, store, body)

    judged, plain = curves_by_key(store, judged_id), curves_by_key(store, plain_id)
    assert judged.keys() == plain.keys()
    for key, curve in judged.items():
        # Probes, checkpoints and stopping change nothing of what a trial trained.
        assert curve == plain[key][: len(curve)], key

    trials = store.list_trials(job_id=judged_id, limit=100).items
    steps_per_epoch = plain[next(iter(plain))][0][1]
    by_status: dict[str, int] = {}
    for trial in trials:
        by_status[trial.status] = by_status.get(trial.status, 0) + 1
        probes = store.list_trial_probes(trial.id)
        # Rungs at epochs 1 and 3 (max_t 4, grace 1, factor 3); a trial probes each it reaches.
        assert [p.epoch for p in probes] == [e for e in (1, 3) if e <= trial.epochs_done]
        for probe in probes:
            assert probe.step == probe.epoch * steps_per_epoch
            assert probe.cooldown_steps == math.ceil(0.5 * probe.step)  # the default fraction
            assert probe.metrics["val_accuracy"] >= 0
        if trial.status == "pruned":
            # Where it was cut, the probe says what it had reached.
            assert probes[-1].epoch == trial.epochs_done
            assert probes[-1].decision == "stop"
        assert all(p.decision == "continue" for p in probes if p.epoch < trial.epochs_done)
        assert trial.restored_from_epoch is None
    assert by_status.get("pruned", 0) > 0
    assert store.list_trial_probes(trials[0].id) == store.list_trial_probes(trials[0].id)
    # The job has ended: no checkpoint is left in the run's storage.
    leftovers = list(Path(settings.resolved_storage).rglob("checkpoint_*"))
    assert leftovers == []
