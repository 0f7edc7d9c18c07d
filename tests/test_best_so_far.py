""" "Best so far" is the recommendation's leader wherever it is shown: the job's `best` in the API
(what the job page and the jobs list draw), `lrtune status`, `lrtune jobs` and `lrtune watch`, all
naming the recommendation's winner with its value, on SQLite and PostgreSQL. The jobs are written
through the store: one whose best single epoch (sgdr's) is not its final one, and a
horizon_halving job before any trial has trained the whole budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import httpx
import pytest
from lrtune.client import commands
from lrtune.schemas.recommendations import mean_and_spread
from lrtune.service.cli import app as cli
from lrtune.service.recommendations import publish_recommendation
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from typer.testing import CliRunner

from tests.conftest import JobSeeder, LiveService

SGDR = {"policy": "sgdr", "eta_max": 0.1, "t_0": 40, "t_mult": 1}
EXPONENTIAL = {"policy": "exponential", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 40}
runner = CliRunner()


@pytest.fixture
def service_url(settings: Settings) -> Iterator[str]:
    with LiveService(settings) as live:
        yield live.url


def run(url: str, *args: str) -> str:
    # As wide as a wide terminal, so that no table cell wraps.
    with patch.object(commands.out, "_width", 200):
        result = runner.invoke(cli, [*args, "--url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def seed_best_epoch_not_final(seed_job: JobSeeder) -> tuple[int, int]:
    """A running job: sgdr peaks at 0.8378 in epoch 2 and ends at 0.70; exponential's two seeds
    end at 0.78 and 0.76, their best. Returns the job and the sgdr trial."""
    job_id = seed_job.job(
        {
            "workload": {"name": "digits"},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": ["sgdr", "exponential"],
            "budget": {"epochs": 4, "trials_per_policy": 2},
        }
    )
    epoch = seed_job.epoch
    sgdr = seed_job.trial(
        job_id,
        policy="sgdr",
        schedule=SGDR,
        epochs=[epoch(e, v) for e, v in enumerate([0.6, 0.8378, 0.75, 0.70], start=1)],
    )
    for seed, last in ((0, 0.78), (1, 0.76)):
        seed_job.trial(
            job_id,
            policy="exponential",
            schedule=EXPONENTIAL,
            seed=seed,
            epochs=[epoch(e, v) for e, v in enumerate([0.5, 0.6, 0.7, last], start=1)],
        )
    return job_id, sgdr


def assert_best_is_the_winner(best: dict[str, Any], recommendation: dict[str, Any]) -> None:
    winner = recommendation["winner"]
    assert best["policy"] == winner["policy"]
    assert best["value"] == winner["metric_mean"] and best["std"] == winner["metric_std"]
    assert best["n_seeds"] == winner["n_seeds"]
    assert str(best["trial_id"]) in winner["trial_ids"]
    assert best["horizon_epochs"] == recommendation["horizon_epochs"]


def test_the_best_so_far_is_the_recommendations_leader_not_the_best_epoch(
    service_url: str, store: Store, seed_job: JobSeeder
) -> None:
    job_id, sgdr = seed_best_epoch_not_final(seed_job)
    # What "best so far" used to show: the best single epoch of any trial, sgdr's.
    assert store.get_trial(sgdr).best_metric == pytest.approx(0.8378)

    for final in (False, True):
        if final:
            store.mark_job_succeeded(job_id=job_id)
            assert publish_recommendation(store, job_id=job_id) is not None
        recommendation = httpx.get(f"{service_url}/v1/jobs/{job_id}/recommendation").json()
        assert recommendation["final"] is final
        winner = recommendation["winner"]
        assert winner["policy"] == "exponential"
        assert winner["metric_mean"] == pytest.approx(0.77)
        # The job page's data (its progress line) and the jobs list's.
        job = httpx.get(f"{service_url}/v1/jobs/{job_id}").json()
        (listed,) = httpx.get(f"{service_url}/v1/jobs").json()["items"]
        assert_best_is_the_winner(job["best"], recommendation)
        assert_best_is_the_winner(listed["best"], recommendation)

        # The CLI prints it to the spread's precision, as the recommendation's winner is.
        shown = mean_and_spread(winner["metric_mean"], winner["metric_std"])
        assert shown == "0.770 ± 0.014"
        status = run(service_url, "status", str(job_id))
        assert f"best      {shown}  exponential, trial {job['best']['trial_id']}" in status
        assert "0.8378" not in status and "sgdr" not in status.split("best", 1)[1]
        assert f"{shown} (exponential)" in run(service_url, "jobs")
    watched = run(service_url, "watch", str(job_id), "--interval", "0.05")
    assert f"job {job_id} succeeded; best {shown} (exponential)" in watched


def test_under_horizon_halving_the_leader_is_the_longest_rungs_best_with_its_horizon(
    service_url: str, seed_job: JobSeeder
) -> None:
    job_id = seed_job.job(
        {
            "workload": {"name": "digits"},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": ["fixed", "cosine"],
            "budget": {"epochs": 4, "trials_per_policy": 2},
            "early_stopping": {"kind": "horizon_halving", "min_epochs": 1, "reduction_factor": 2},
        }
    )

    def rung_trial(point: str, rung: int, horizon: int, values: list[float]) -> int:
        lr = {"fixed-0": 0.01, "fixed-1": 0.02}[point]
        return seed_job.trial(
            job_id,
            policy="fixed",
            schedule={"policy": "fixed", "lr": lr},
            search_config={"lr": lr, "horizon_epochs": horizon, "rung": rung, "point_id": point},
            ray_trial_id=f"{point}-h{horizon}",
            epochs=[seed_job.epoch(e, v) for e, v in enumerate(values, start=1)],
        )

    rung_trial("fixed-0", 0, 1, [0.9])  # the best value so far, at the shortest horizon
    rung_trial("fixed-1", 0, 1, [0.7])
    longest = rung_trial("fixed-1", 1, 2, [0.6, 0.8])

    def views() -> tuple[dict[str, Any], dict[str, Any], str]:
        recommendation = httpx.get(f"{service_url}/v1/jobs/{job_id}/recommendation").json()
        best = httpx.get(f"{service_url}/v1/jobs/{job_id}").json()["best"]
        return recommendation, best, run(service_url, "status", str(job_id))

    recommendation, best, status = views()
    assert recommendation["horizon_epochs"] == 2
    assert_best_is_the_winner(best, recommendation)
    assert best["trial_id"] == longest and best["value"] == pytest.approx(0.8)
    assert f"best      0.8  fixed at 2 of 4 epochs, trial {longest}" in status

    full = rung_trial("fixed-1", 2, 4, [0.6, 0.7, 0.8, 0.75])
    recommendation, best, status = views()
    assert recommendation["horizon_epochs"] is None
    assert_best_is_the_winner(best, recommendation)
    assert best["trial_id"] == full and best["value"] == pytest.approx(0.75)
    assert f"best      0.75  fixed, trial {full}" in status
