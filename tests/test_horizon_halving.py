"""Successive halving over training length (early stopping "horizon_halving").

Pure: the ladder's horizons and promotion counts, the compressed schedules, the spec's planned
trials and its 422s. Through the real worker and Ray on SQLite and PostgreSQL: every rung trial
trains its point's whole schedule compressed to the rung's horizon (its rates the preview's),
promotion is the top 1/r of each policy by final value, the ladder is served at /rungs, the job
runs to its recommendation with trials and with populations, a train function gets the
horizon as `ctx.epochs`, cancel mid-ladder, and kill -9 mid-ladder resumes without rerunning a
finished rung trial.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.halving import HorizonLadder, RungCandidate, range_edge
from lrtune.schemas.jobs import CANCELLED_TRIAL_ERROR, Job, JobSpec, Trial, default_early_stopping
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.search import LogUniform, compress_schedule, resolve_schedule
from lrtune.service.app import create_app
from lrtune.service.recommendations import job_recommendation
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import StoreSink, run_worker
from lrtune.workers.experiment import policy_space, quasi_random_point, raw_space
from lrtune.workers.schedule_math import learning_rate
from pydantic import ValidationError

from tests.conftest import JobSeeder, wait_until
from tests.test_faults import Processes, kill_9, processes  # noqa: F401  (a fixture)
from tests.test_own_code_ray import code, code_settings, write_loop  # noqa: F401  (fixtures)

# Rungs of 1, 2 and 4 epochs; 4 points per policy, then 2, then 1.
HALVING: dict[str, Any] = {
    "name": "horizon halving",
    "workload": {"name": "digits", "params": {"model": "mlp", "batch_size": 128}},
    "metric": {"name": "val_accuracy", "mode": "max"},
    # Rates that train without diverging, so every rung trial has a value.
    "policies": [
        {"policy": "fixed", "search": {"lr": {"loguniform": [0.01, 0.3]}}},
        {"policy": "cosine", "search": {"lr": {"loguniform": [0.01, 0.3]}}},
    ],
    "budget": {"epochs": 4, "trials_per_policy": 4, "max_concurrent_trials": 2},
    "search": {"algorithm": "random", "seed": 0},
    "early_stopping": {"kind": "horizon_halving", "min_epochs": 1, "reduction_factor": 2},
}
LADDER_TRIALS = 2 * (4 + 2 + 1)
# What a rung trial's search config records beside its point.
NOT_THE_POINT = ("horizon_epochs", "rung", "point_id", "decision", "population", "shuffle_seed")

# ---- the ladder, pure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "factor", "least", "horizons"),
    [
        (9, 3, 1, [1, 3, 9]),
        (12, 3, 1, [1, 4, 12]),
        (4, 2, 1, [1, 2, 4]),
        (10, 3, 2, [3, 10]),
        (27, 3, 3, [3, 9, 27]),
        (3, 3, 3, [3]),
        (2, 3, 5, [2]),  # a budget below min_epochs is one rung
    ],
)
def test_rung_horizons_divide_the_budget_down_to_min_epochs(
    budget: int, factor: int, least: int, horizons: list[int]
) -> None:
    ladder = HorizonLadder(budget_epochs=budget, min_epochs=least, reduction_factor=factor)
    assert ladder.horizons == horizons


def test_a_synthetic_population_is_promoted_the_top_third_per_policy_whatever_the_order() -> None:
    ladder = HorizonLadder(budget_epochs=9, min_epochs=1, reduction_factor=3)
    rng = random.Random(0)
    candidates = [
        RungCandidate(point_id=f"{policy}-{i}", policy=policy, value=rng.random())
        for policy in ("fixed", "cosine")
        for i in range(9)
    ]
    # One policy with a tie at the cut, one with failed points.
    candidates.append(RungCandidate(point_id="clr-1", policy="clr", value=0.5))
    candidates.append(RungCandidate(point_id="clr-0", policy="clr", value=0.5))
    candidates.append(RungCandidate(point_id="clr-2", policy="clr", value=None))
    candidates.append(RungCandidate(point_id="clr-3", policy="clr", value=float("nan")))
    promoted = ladder.promote(candidates, mode="max")
    for policy in ("fixed", "cosine"):
        mine = sorted((-(c.value or 0.0), c.point_id) for c in candidates if c.policy == policy)
        assert {point for _, point in mine[:3]} == {p for p in promoted if p.startswith(policy)}
    assert {p for p in promoted if p.startswith("clr")} == {"clr-0"}  # 4 // 3 = 1, tie by id
    for _ in range(5):
        rng.shuffle(candidates)
        assert ladder.promote(candidates, mode="max") == promoted
    lowest = ladder.promote(candidates, mode="min")
    assert len(lowest) == 3 + 3 + 1 and not lowest & {"clr-2", "clr-3"}
    # Every candidate failing promotes none.
    assert ladder.promote([RungCandidate("sgdr-0", "sgdr", None)], mode="max") == set()
    # Per policy: 9 candidates, 3, then 1 at the budget.
    assert [ladder.survivors(n) for n in (9, 3, 1, 0)] == [3, 1, 1, 0]
    assert ladder.trials_per_policy(9) == 13 and ladder.last_rung_trials(9) == 1


def test_a_schedule_compressed_keeps_its_shape_in_fewer_steps() -> None:
    cosine = parse_schedule(
        {"policy": "cosine", "lr": 0.1, "decay_steps": 1200, "warmup_steps": 60, "alpha": 0.1}
    )
    short = compress_schedule(cosine, epochs=4, budget_epochs=12)
    assert short.model_dump() == {**cosine.model_dump(), "decay_steps": 400, "warmup_steps": 20}
    # Rates at the same share of the training are the same.
    for share in (0.0, 0.25, 0.5, 0.9):
        assert learning_rate(short, round(share * 420)) == pytest.approx(
            learning_rate(cosine, round(share * 1260)), rel=1e-9
        )
    multistep = parse_schedule({"policy": "multistep", "lr": 0.1, "milestones": [600, 900]})
    assert compress_schedule(multistep, epochs=1, budget_epochs=12).model_dump()["milestones"] == [
        50,
        75,
    ]
    clr = parse_schedule({"policy": "clr", "base_lr": 0.001, "max_lr": 0.1, "step_size": 5})
    assert compress_schedule(clr, epochs=1, budget_epochs=12).model_dump()["step_size"] == 1
    wsd = parse_schedule({"policy": "wsd", "lr": 0.1, "total_steps": 1200, "decay_frac": 0.2})
    assert compress_schedule(wsd, epochs=3, budget_epochs=12).model_dump() == {
        **wsd.model_dump(),
        "total_steps": 300,
        "decay_steps": 60,
    }
    fixed = parse_schedule({"policy": "fixed", "lr": 0.1})
    assert compress_schedule(fixed, epochs=1, budget_epochs=12) == fixed
    piecewise = parse_schedule({"policy": "piecewise", "boundaries": [1, 2], "values": [1, 2, 3]})
    with pytest.raises(ValidationError):  # both boundaries round onto step 1
        compress_schedule(piecewise, epochs=1, budget_epochs=12)


def test_planned_trials_count_every_rung_trial_and_the_confirmation() -> None:
    spec = JobSpec.model_validate(HALVING)
    assert spec.horizon_ladder is not None and spec.horizon_ladder.horizons == [1, 2, 4]
    assert spec.planned_trials == LADDER_TRIALS
    confirmed = JobSpec.model_validate({**HALVING, "confirm": {"top_k": 2, "seeds": 3}})
    # One full-length point per policy, so top_k 2 confirms one.
    assert confirmed.planned_trials == LADDER_TRIALS + 2 * 1 * 3
    assert JobSpec.model_validate({**HALVING, "early_stopping": {}}).horizon_ladder is None


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (
            {"early_stopping": {"kind": "horizon_halving", "min_epochs": 5}},
            "early_stopping.min_epochs",
            "above the budget",
        ),
        ({"policies": ["sgdr"], "snapshots": 2}, "early_stopping.kind", "snapshot"),
        ({"policies": ["wsd"], "horizons": [2, 4]}, "horizons", "no early stopping"),
    ],
)
def test_halving_that_cannot_run_is_a_422_naming_the_field(
    api_client: TestClient, change: dict[str, Any], path: str, words: str
) -> None:
    answer = api_client.post("/v1/jobs", json={**HALVING, **change})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert [f["path"] for f in error["fields"]] == [path]
    assert words in error["message"]


def test_the_max_trials_limit_counts_every_rung_trial(settings: Settings) -> None:
    # 14 rung trials from 8 first-rung points: within a limit of 14, not of 13.
    for limit, status in ((LADDER_TRIALS - 1, 422), (LADDER_TRIALS, 201)):
        app = create_app(settings.model_copy(update={"max_trials_per_job": limit}))
        with TestClient(app) as client:
            answer = client.post("/v1/jobs", json=HALVING)
        assert answer.status_code == status, answer.text
    assert answer.json()["progress"]["planned"] == LADDER_TRIALS


# ---- the ladder in SQL: decisions, /rungs, the live leader --------------------------------


def test_the_ladder_in_sql_decides_serves_its_rungs_and_leads_with_the_longest_rung(
    seed_job: JobSeeder, store: Store, api_client: TestClient
) -> None:
    job_id = seed_job.job(HALVING)
    sink = StoreSink(store, job_id=job_id)

    def rung_trial(point: str, rung: int, horizon: int, values: list[float]) -> int:
        return seed_job.trial(
            job_id,
            policy=point.split("-")[0],
            schedule={"policy": "fixed", "lr": {"fixed-0": 0.01, "fixed-1": 0.02}[point]},
            search_config={"lr": 0.1, "horizon_epochs": horizon, "rung": rung, "point_id": point},
            ray_trial_id=f"{point}-h{horizon}",
            epochs=[seed_job.epoch(e + 1, v) for e, v in enumerate(values)],
        )

    first = {
        "fixed-0": rung_trial("fixed-0", 0, 1, [0.5]),
        "fixed-1": rung_trial("fixed-1", 0, 1, [0.7]),
    }
    assert sink.rung_values(["fixed-0-h1", "fixed-1-h1", "fixed-2-h1"]) == {
        "fixed-0-h1": 0.5,
        "fixed-1-h1": 0.7,
    }
    # No full-length trial yet: the leader is the first rung's best, labelled with its horizon.
    leader = job_recommendation(store, job_id=job_id, tenant_id=None)
    assert leader.horizon_epochs == 1 and not leader.final
    assert leader.winner is not None and leader.winner.trial_ids == [str(first["fixed-1"])]
    for _ in range(2):  # deciding again (a resumed job) changes nothing
        sink.record_rung_decisions({"fixed-0-h1": "stop", "fixed-1-h1": "continue"})
        stopped, kept = store.get_trial(first["fixed-0"]), store.get_trial(first["fixed-1"])
        assert (stopped.status, stopped.search_config["decision"]) == ("pruned", "stop")
        assert (kept.status, kept.search_config["decision"]) == ("completed", "continue")
    # A pruned rung trial is still judged by its value.
    assert sink.rung_values(["fixed-0-h1"]) == {"fixed-0-h1": 0.5}
    rung_trial("fixed-1", 1, 2, [0.6, 0.8])
    assert job_recommendation(store, job_id=job_id, tenant_id=None).horizon_epochs == 2
    full = rung_trial("fixed-1", 2, 4, [0.6, 0.7, 0.8, 0.75])
    found = job_recommendation(store, job_id=job_id, tenant_id=None)
    # Only full-length trials are ranked once one exists (the 2-epoch 0.8 is not).
    assert found.horizon_epochs is None
    assert found.winner is not None and found.winner.trial_ids == [str(full)]
    assert found.winner.metric_mean == pytest.approx(0.75)

    rungs = api_client.get(f"/v1/jobs/{job_id}/rungs").json()
    assert [(r["rung"], r["epoch"]) for r in rungs] == [(0, 1), (1, 2), (2, 4)]
    assert rungs[0]["trials"] == [
        {
            "trial_id": first["fixed-1"],
            "policy": "fixed",
            "raw": 0.7,
            "judged": 0.7,
            "decision": "continue",
        },
        {
            "trial_id": first["fixed-0"],
            "policy": "fixed",
            "raw": 0.5,
            "judged": 0.5,
            "decision": "stop",
        },
    ]


# ---- jobs through the worker and Ray ------------------------------------------------------


def _trials(store: Store, job_id: int) -> list[Trial]:
    return sorted(store.list_trials(job_id=job_id, limit=500).items, key=lambda t: t.id)


def _run(settings: Settings, store: Store, body: dict[str, Any]) -> Job:
    job, _ = store.create_job(spec=JobSpec.model_validate(body))
    run_worker(settings, once=True, store=store)
    return store.get_job(job.id)


def _assert_a_ladder(store: Store, job: Job, *, steps_per_epoch: int) -> list[Trial]:
    """Every rung trial trains its point's schedule compressed to its horizon, on the
    preview's rates; each rung promotes the top half of each policy by final value, ties by
    point id, the others pruned. The search's trials, rung by rung."""
    spec = job.spec
    ladder = spec.horizon_ladder
    assert ladder is not None
    budget = spec.budget.epochs
    rungs: dict[int, list[Trial]] = {}
    for trial in _trials(store, job.id):
        if trial.phase == "search":
            rungs.setdefault(trial.search_config["rung"], []).append(trial)
    assert sorted(rungs) == list(range(len(ladder.horizons)))
    points: set[str] | None = None
    for rung, horizon in enumerate(ladder.horizons):
        trials = rungs[rung]
        ids = {t.search_config["point_id"] for t in trials}
        if points is not None:
            assert ids == points, rung  # the previous rung's promoted points, and only they
        for trial in trials:
            config = trial.search_config
            assert config["horizon_epochs"] == horizon
            assert trial.ray_trial_id == f"{config['point_id']}-h{horizon}"
            assert trial.epochs_done == horizon
            point = {k: v for k, v in config.items() if k not in NOT_THE_POINT}
            full = resolve_schedule(
                trial.policy,
                point,
                steps_per_epoch=steps_per_epoch,
                total_steps=budget * steps_per_epoch,
                metric_mode=spec.metric_mode,
            )
            compressed = compress_schedule(full, epochs=horizon, budget_epochs=budget)
            assert trial.schedule == compressed.model_dump(mode="json"), trial.ray_trial_id
            schedule = parse_schedule(trial.schedule)
            rows = store.list_trial_metrics(trial_id=trial.id)
            assert [row.epoch for row in rows] == list(range(1, horizon + 1))
            for row in rows:
                assert row.step == row.epoch * steps_per_epoch
                assert row.lr == pytest.approx(learning_rate(schedule, row.step - 1))
        if rung == len(ladder.horizons) - 1:
            assert all(
                t.status == "completed" and "decision" not in t.search_config for t in trials
            )
            break
        points = set()
        for policy in {t.policy for t in trials}:
            mine = [t for t in trials if t.policy == policy]
            ranked = sorted(
                mine, key=lambda t: (-(t.last_metric or 0.0), t.search_config["point_id"])
            )
            kept = ranked[: ladder.survivors(len(mine))]
            for trial in mine:
                promoted = trial in kept
                assert trial.search_config["decision"] == ("continue" if promoted else "stop")
                assert trial.status == ("completed" if promoted else "pruned")
            points |= {t.search_config["point_id"] for t in kept}
    return [t for r in rungs.values() for t in r]


@pytest.mark.ray
def test_a_halving_job_trains_compressed_schedules_promotes_and_confirms_full_length(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    body = {**HALVING, "confirm": {"top_k": 1, "seeds": 1}, "execution": "trials"}
    job = _run(settings, store, body)
    assert job.status == "succeeded", job.error
    steps_per_epoch = store.list_trial_metrics(trial_id=_trials(store, job.id)[0].id)[0].step
    searched = _assert_a_ladder(store, job, steps_per_epoch=steps_per_epoch)
    assert len(searched) == LADDER_TRIALS
    trials = _trials(store, job.id)
    assert job.progress.planned == len(trials) == LADDER_TRIALS + 2
    # The confirmation reruns each policy's full-length point (not a shorter rung's schedule).
    full_length = {t.policy: t.schedule for t in searched if t.search_config["rung"] == 2}
    confirmed = [t for t in trials if t.phase == "confirm"]
    assert {t.policy: t.schedule for t in confirmed} == full_length
    assert all(t.epochs_done == 4 and t.status == "completed" for t in confirmed)

    recommendation = job_recommendation(store, job_id=job.id, tenant_id=None)
    assert recommendation.final and recommendation.horizon_epochs is None
    assert recommendation.winner is not None
    assert recommendation.winner.schedule.model_dump(mode="json") in full_length.values()

    answer = api_client.get(f"/v1/jobs/{job.id}/rungs")
    assert answer.status_code == 200, answer.text
    rungs = answer.json()
    assert [(r["rung"], r["epoch"], len(r["trials"])) for r in rungs] == [
        (0, 1, 8),
        (1, 2, 4),
        (2, 4, 2),
    ]
    by_id = {t.id: t for t in trials}
    for rung in rungs[:2]:
        for row in rung["trials"]:
            trial = by_id[row["trial_id"]]
            assert row["judged"] == pytest.approx(trial.last_metric)
            assert row["decision"] == trial.search_config["decision"]
        assert (
            sum(row["decision"] == "continue" for row in rung["trials"]) == len(rung["trials"]) // 2
        )


@pytest.mark.ray
@pytest.mark.parametrize("database_kind", ["sqlite"])
def test_a_halving_job_runs_to_its_recommendation_as_populations(
    ray_local: str, settings: Settings, store: Store
) -> None:
    job = _run(settings, store, {**HALVING, "execution": "population"})
    assert job.status == "succeeded", job.error
    steps_per_epoch = store.list_trial_metrics(trial_id=_trials(store, job.id)[0].id)[0].step
    searched = _assert_a_ladder(store, job, steps_per_epoch=steps_per_epoch)
    assert len(searched) == job.progress.planned == LADDER_TRIALS
    # The same trials as one at a time would store: the first rung's points, and the ladder.
    assert all("population" in t.search_config for t in searched)
    first = {t.ray_trial_id for t in searched if t.search_config["rung"] == 0}
    assert first == {f"{p}-{i}-h1" for p in ("fixed", "cosine") for i in range(4)}
    recommendation = job_recommendation(store, job_id=job.id, tenant_id=None)
    assert recommendation.winner is not None and recommendation.horizon_epochs is None


@pytest.mark.ray
@pytest.mark.parametrize("database_kind", ["sqlite"])
def test_a_train_functions_rung_trials_get_the_horizon_as_ctx_epochs(
    ray_local: str,
    code_settings: Settings,  # noqa: F811
    store: Store,
    code: Path,  # noqa: F811
) -> None:
    write_loop(code, "loop_halving", body="MARK = ctx.epochs")
    body = {
        "workload": {"entrypoint": "loop_halving:make", "params": {}},
        "metric": {"name": "val_loss", "mode": "min"},
        "policies": ["cosine"],
        "lr_bounds": {"min": 0.001, "max": 0.05},
        "budget": {"epochs": 4, "trials_per_policy": 2, "max_concurrent_trials": 2},
        "search": {"algorithm": "random", "seed": 0},
        "early_stopping": {"kind": "horizon_halving", "reduction_factor": 2},
    }
    job = _run(code_settings, store, body)
    assert job.status == "succeeded", job.error
    trials = _trials(store, job.id)
    assert sorted(t.search_config["horizon_epochs"] for t in trials) == [1, 1, 2, 4]
    for trial in trials:
        horizon = trial.search_config["horizon_epochs"]
        rows = store.list_trial_metrics(trial_id=trial.id)
        # The loop ran ctx.epochs epochs and reported ctx.epochs as its mark.
        assert [row.epoch for row in rows] == list(range(1, horizon + 1))
        assert all(row.metrics["mark"] == horizon for row in rows)
        schedule = parse_schedule(trial.schedule)
        assert schedule.decay_steps == horizon * 4  # type: ignore[union-attr]  # resolved at it
        assert [row.lr for row in rows] == pytest.approx(
            [learning_rate(schedule, row.step - 1) for row in rows], rel=1e-12
        )


def _rung_trials(store: Store, job_id: int, rung: int) -> list[Trial]:
    return [t for t in _trials(store, job_id) if t.search_config.get("rung") == rung]


# Slower epochs (a CNN at batch size 8, about a second each), so a job is mid-ladder when it
# is cancelled or killed.
# Lone trials: each rung trial its own Tune trial, to cancel or kill mid-rung (populations train
# the ladder fast enough to end before the kill).
SLOW = {
    **HALVING,
    "workload": {"name": "digits", "params": {"model": "cnn", "batch_size": 8}},
    "execution": "trials",
}


@pytest.mark.ray
@pytest.mark.parametrize("database_kind", ["sqlite"])
def test_cancel_mid_ladder_ends_the_running_rung_and_starts_no_other(
    ray_local: str, settings: Settings, store: Store
) -> None:
    job, _ = store.create_job(spec=JobSpec.model_validate(SLOW))
    worker = threading.Thread(
        target=run_worker, args=(settings,), kwargs={"once": True, "store": store}
    )
    worker.start()
    wait_until(lambda: _rung_trials(store, job.id, 1) != [], timeout=180, what="a second rung")
    store.cancel_job(job.id)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert store.get_job(job.id).status == "cancelled"
    assert _rung_trials(store, job.id, 2) == []
    assert len(_rung_trials(store, job.id, 0)) == 8
    for trial in _rung_trials(store, job.id, 0):
        assert trial.status in ("completed", "pruned")  # decided before the cancel
    second = _rung_trials(store, job.id, 1)
    cut = [t for t in second if t.status == "failed"]
    assert all(t.error == CANCELLED_TRIAL_ERROR for t in cut)
    assert all(t.status in ("completed", "failed") for t in second)
    # The rung did not run to its end: trials cut short, or some never started.
    assert cut or len(second) < 4, [(t.ray_trial_id, t.status) for t in second]
    assert all("decision" not in t.search_config for t in second)  # never decided


@pytest.mark.ray
@pytest.mark.parametrize("database_kind", ["sqlite"])
def test_kill_9_mid_ladder_resumes_without_rerunning_a_finished_rung_trial(
    processes: Processes,  # noqa: F811
    store: Store,
    tmp_path: Path,
) -> None:
    processes.env["LRTUNE_CHECKPOINT_EVERY_EPOCHS"] = "1"
    job, _ = store.create_job(spec=JobSpec.model_validate(SLOW))
    worker = processes.recording_worker(tmp_path / "started-0.txt")
    wait_until(
        lambda: any(t.epochs_done >= 1 for t in _rung_trials(store, job.id, 1)),
        timeout=180,
        what="the second rung under way",
        logs=processes.tail,
    )
    # Tune snapshots its experiment state (and the searcher's) every 2 s.
    time.sleep(2.5)
    kill_9(worker)
    assert store.get_job(job.id).status == "running", "the job ended before the kill"
    finished = {t.id for t in _trials(store, job.id) if t.status in ("completed", "pruned")}
    assert finished
    processes.recording_worker(tmp_path / "started-1.txt")
    wait_until(
        lambda: store.get_job(job.id).status != "running",
        timeout=240,
        what="the resumed job",
        logs=processes.tail,
    )
    final = store.get_job(job.id)
    assert final.status == "succeeded", (final.error, processes.tail())
    rerun = finished & {int(x) for x in (tmp_path / "started-1.txt").read_text().split()}
    assert not rerun, f"finished rung trials ran again: {rerun}"
    trials = _trials(store, job.id)
    assert len(trials) == final.progress.planned == LADDER_TRIALS, processes.tail()
    assert len({t.ray_trial_id for t in trials}) == LADDER_TRIALS  # no trial made twice
    for trial in trials:
        stored = [m.epoch for m in store.list_trial_metrics(trial_id=trial.id)]
        assert stored == list(range(1, trial.search_config["horizon_epochs"] + 1))
    # The ladder decided on the values alone, as an uninterrupted run would.
    steps_per_epoch = store.list_trial_metrics(trial_id=trials[0].id)[0].step
    _assert_a_ladder(store, final, steps_per_epoch=steps_per_epoch)


# ---- ranges that follow the optimum, the searcher driven directly ---------------------------


class _LadderSink:
    """Answers what the halving searcher asks: each rung trial's value is `value(point)`."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.configs: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.spaces: list[dict[str, Any]] = []
        self.decisions: dict[str, str] = {}

    def should_stop(self) -> bool:
        return False

    def rung_values(self, trial_keys: Any) -> dict[str, float | None]:
        return {k: self.value(self.configs[k]["point"]) for k in trial_keys if k in self.configs}

    def record_rung_decisions(self, decisions: dict[str, str]) -> None:
        self.decisions.update(decisions)

    def save_search_spaces(self, spaces: dict[str, Any]) -> None:
        self.spaces.append(spaces)

    def add_note(self, note: str) -> None:
        self.notes.append(note)

    def set_planned_trials(self, planned: int) -> None:
        pass


def _run_ladder(spec: JobSpec, sink: _LadderSink, tmp_path: Path) -> list[dict[str, Any]]:
    """Every trial the job's searcher suggests, each ended as soon as none can be suggested."""
    from lrtune.workers.experiment import job_searcher, plan_experiment
    from lrtune.workers.results import sink_registered
    from ray.tune.search import Searcher

    plan = plan_experiment(spec, job_key="edge", storage_path=tmp_path, steps_per_epoch=10)
    searcher = job_searcher(plan)
    suggested: list[dict[str, Any]] = []
    running: list[str] = []
    with sink_registered("edge", sink):  # type: ignore[arg-type]  # the parts it asks for
        while True:
            config = searcher.suggest(f"t{len(suggested)}")
            if config == Searcher.FINISHED:
                return suggested
            if config is None:
                for trial_id in running:
                    searcher.on_trial_complete(trial_id, result={})
                running.clear()
                continue
            sink.configs[config["trial_key"]] = config
            suggested.append(config)
            running.append(f"t{len(suggested) - 1}")


def _edge_spec(**overrides: Any) -> JobSpec:
    data: dict[str, Any] = {
        "workload": {"name": "digits"},
        "metric": {"name": "val_accuracy", "mode": "max"},
        "policies": ["cosine"],
        "budget": {"epochs": 9, "trials_per_policy": 8},
        "search": {"algorithm": "random", "seed": 3},
        "early_stopping": {"kind": "horizon_halving", "min_epochs": 3, "reduction_factor": 3},
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def test_a_range_whose_best_sits_at_its_upper_edge_is_extended_for_the_later_points_and_noted(
    tmp_path: Path,
) -> None:
    """The higher the rate the better: the first 4 points' best lies in the top 15% of the range
    (log scale), so the other 4 come from a fresh quasi-random sequence over a range twice as
    high, and the job's spaces and notes say so. Without an edge, nothing moves."""
    spec = _edge_spec()
    space = policy_space(spec.policies[0])
    low, high = space.domains["lr"].loguniform  # type: ignore[union-attr]
    sink = _LadderSink(lambda point: point["lr"])
    trials = _run_ladder(spec, sink, tmp_path)
    first = [t for t in trials if t["point"]["rung"] == 0]
    assert len(first) == 8 and len(trials) == 8 + 2
    wave, later = first[:4], first[4:]
    best = max(t["point"]["lr"] for t in wave)
    assert math.log(best / low) / math.log(high / low) >= 0.85, "the seed puts one at the edge"
    wider = replace(space, domains={**space.domains, "lr": LogUniform(loguniform=(low, 2 * high))})
    assert [t["point"]["lr"] for t in later] == [
        quasi_random_point(wider, base_seed=3, index=i, stream=1)["lr"] for i in range(4, 8)
    ]
    assert sink.spaces == [
        {"cosine": {**raw_space(spec.policies[0]), "lr": {"loguniform": [low, 2 * high]}}}
    ]
    (note,) = sink.notes
    assert note.startswith("cosine: the best of its 4 candidates at 3 epochs (lr ")
    assert f"lies at the upper end of its range {low:.3g}..{high:.3g}" in note
    assert note.endswith(f"its other 4 are drawn over {low:.3g}..{2 * high:.3g}")
    # The rung ranks both waves together: the best of all 8 goes on.
    promoted = [t for t in trials if t["point"]["rung"] == 1]
    assert promoted[0]["point"]["lr"] == max(t["point"]["lr"] for t in first)

    # The same job where the middle of the range is best: no edge, nothing moves.
    middle = math.sqrt(low * high)
    quiet = _LadderSink(lambda point: -abs(math.log(point["lr"] / middle)))
    _run_ladder(spec, quiet, tmp_path / "quiet")
    assert quiet.spaces == [] and quiet.notes == []


def test_a_range_the_user_set_stays_and_the_note_says_whose_it_is(tmp_path: Path) -> None:
    bounded = _edge_spec(lr_bounds={"min": 0.01, "max": 0.25})
    kept = _LadderSink(lambda point: point["lr"])
    trials = _run_ladder(bounded, kept, tmp_path)
    assert kept.spaces == []
    # A decaying schedule's peak searches up to 2x the bounds' max.
    assert all(t["point"]["lr"] <= 0.5 for t in trials)
    (note,) = kept.notes
    assert note.startswith("cosine: the best of its 8 candidates at 3 epochs")
    assert note.endswith(
        "lies at the upper end of its range 0.0833..0.5; the range stays, as it comes from "
        "your lr_bounds"
    )


@pytest.mark.parametrize(
    ("rated", "side", "blocked"),
    [
        ([(0.01, 0.5), (0.5, 0.9), (0.95, 0.8)], "upper", False),  # 0.5: 90% up the range
        ([(0.01, 0.5), (0.9, 0.9), (0.2, 0.8)], "upper", False),
        ([(0.01, 0.5), (0.9, 0.9), (0.95, None)], "upper", True),  # beyond it, one diverged
        ([(0.01, 0.5), (0.9, 0.9), (0.95, float("nan"))], "upper", True),
        ([(0.0011, 0.9), (0.5, 0.8), (0.001, None)], "lower", True),
        ([(0.0011, 0.9), (0.5, 0.8), (0.9, None)], "lower", False),
        ([(0.03, 0.9), (0.9, None)], None, False),  # 0.03: 49% up
        ([(0.1, 0.9), (0.01, 0.8)], None, False),  # 67% up
        ([(0.9, None)], None, False),
    ],
)
def test_an_edge_is_the_best_rate_within_15_percent_of_a_log_range(
    rated: list[tuple[float, float | None]], side: str | None, blocked: bool
) -> None:
    edge = range_edge("cosine", "lr", (0.001, 1.0), rated, mode="max")
    assert (edge.side if edge else None) == side
    if edge is not None:
        assert edge.blocked is blocked
        assert edge.extended == ((0.001, 2.0) if side == "upper" else (0.0005, 1.0))


def _spaces(spec: JobSpec) -> dict[str, Any]:
    from lrtune.workers.experiment import raw_space

    return {entry.policy: raw_space(entry) for entry in spec.policies}


# ---- lrtune's default early stopping ---------------------------------------------------------


def _default_spec(**overrides: Any) -> JobSpec:
    data: dict[str, Any] = {
        "workload": {"name": "digits"},
        "policies": ["cosine", "sgdr"],
        "budget": {"epochs": 12, "trials_per_policy": 8},
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def test_a_job_that_names_no_early_stopping_gets_one_halving_at_a_quarter_of_its_budget() -> None:
    spec = _default_spec()
    stopping = spec.early_stopping
    assert (stopping.kind, stopping.min_epochs, stopping.reduction_factor) == (
        "horizon_halving",
        3,
        4,
    )
    assert stopping.chosen_by == "lrtune"
    assert spec.horizon_ladder is not None and spec.horizon_ladder.horizons == [3, 12]
    # 8 points per policy at 3 epochs, the top 2 at 12.
    assert spec.planned_trials == 2 * (8 + 2)
    # Stored and read back (the worker re-validates the stored spec), it stays what it was.
    again = JobSpec.model_validate(spec.model_dump(mode="json"))
    assert again.early_stopping == stopping
    _, note = default_early_stopping(spec)
    assert note == (
        "early stopping: horizon halving, lrtune's default (the job named none): each point "
        "trains its whole schedule compressed to 3 epochs, and the top 1/4 of each policy's "
        "train it to the budget's 12"
    )
    # Named, it is the job's own, kind "none" included.
    named = _default_spec(early_stopping={"kind": "none"})
    assert (named.early_stopping.kind, named.early_stopping.chosen_by) == ("none", "job")
    assert _default_spec(budget={"epochs": 40, "trials_per_policy": 4}).horizon_ladder == (
        HorizonLadder(budget_epochs=40, min_epochs=10, reduction_factor=4)
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"budget": {"epochs": 12, "trials_per_policy": 3}}, "trials_per_policy is 3"),
        ({"budget": {"epochs": 3, "trials_per_policy": 8}}, "not a whole epoch"),
        ({"policies": ["wsd"], "horizons": [6, 12]}, "a sweep trains every horizon"),
        ({"policies": ["sgdr"], "snapshots": 2}, "snapshot ensembles"),
        (
            {"policies": ["sgdr"], "snapshots": 2, "metric": {"name": "ensemble_val_loss"}},
            "snapshot ensembles",
        ),
        ({"kind": "range_test", "policies": []}, "a range test is one run"),
    ],
)
def test_where_halving_cannot_apply_the_default_is_none_and_the_note_says_why(
    change: dict[str, Any], why: str
) -> None:
    spec = _default_spec(**change)
    assert (spec.early_stopping.kind, spec.early_stopping.chosen_by) == ("none", "lrtune")
    _, note = default_early_stopping(spec)
    assert note.startswith("early stopping: none (lrtune's default here: ") and why in note
