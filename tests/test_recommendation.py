"""The recommendation: confirmation picks, statistics over seeds, anytime evidence, rationale."""

from __future__ import annotations

import json
import math

import pytest
from lrtune.schemas.schedules import ScheduleSpec, parse_schedule
from lrtune.workers.recommendation import (
    TrialSummary,
    build_recommendation,
    select_for_confirmation,
)

CLR = parse_schedule({"policy": "clr", "base_lr": 0.01, "max_lr": 0.3, "step_size": 100})
CLR_2 = parse_schedule({"policy": "clr", "base_lr": 0.02, "max_lr": 0.3, "step_size": 100})
CLR_3 = parse_schedule({"policy": "clr", "base_lr": 0.03, "max_lr": 0.3, "step_size": 100})
SGDR = parse_schedule({"policy": "sgdr", "eta_max": 0.2, "t_0": 100})
FIXED = parse_schedule({"policy": "fixed", "lr": 0.1})
FIXED_HIGH = parse_schedule({"policy": "fixed", "lr": 3.0})


def _trial(
    trial_id: str,
    schedule: ScheduleSpec,
    curve: list[float],
    *,
    seed: int = 0,
    status: str = "completed",
    confirmation: bool = False,
) -> TrialSummary:
    return TrialSummary(
        trial_id=trial_id,
        policy=schedule.policy,
        schedule=schedule,
        seed=seed,
        metric_values=curve,
        status=status,
        is_confirmation=confirmation,
    )


def _job() -> list[TrialSummary]:
    # Three seeds each. Final values: clr .91/.92/.93 (mean .92, sd .01), sgdr .88/.89/.90
    # (mean .89, sd .01), fixed .85/.86/.87 (mean .86). Epoch means: clr .6, .87, .92;
    # fixed .5, .8, .86.
    trials = []
    for seed, (clr_mid, clr_end) in enumerate([(0.85, 0.91), (0.87, 0.92), (0.89, 0.93)]):
        trials.append(_trial(f"c{seed}", CLR, [0.6, clr_mid, clr_end], seed=seed))
    for seed, end in enumerate([0.88, 0.89, 0.90]):
        trials.append(_trial(f"s{seed}", SGDR, [0.5, 0.7, end], seed=seed))
    for seed, end in enumerate([0.85, 0.86, 0.87]):
        trials.append(_trial(f"f{seed}", FIXED, [0.5, 0.8, end], seed=seed))
    # A diverged fixed rate (NaN accuracy) and a failed trial: neither may win anything.
    trials.append(_trial("f-high", FIXED_HIGH, [math.nan], status="diverged"))
    trials.append(_trial("broken", CLR_2, [0.99], status="failed"))
    return trials


def test_winner_stats_and_welch_interval_by_hand() -> None:
    rec = build_recommendation(
        job_id="job-1", trials=_job(), metric="val_accuracy", mode="max", final=True
    )
    assert rec.winner is not None and rec.winner.policy == "clr"
    assert rec.winner.metric_mean == pytest.approx(0.92)
    assert rec.winner.metric_std == pytest.approx(0.01)
    assert rec.winner.n_seeds == 3 and rec.winner.trial_ids == ["c0", "c1", "c2"]
    assert [e.policy for e in rec.by_policy] == ["clr", "sgdr", "fixed"]
    fixed = rec.by_policy[2]
    assert fixed.schedule == FIXED and fixed.metric_mean == pytest.approx(0.86)

    comparison = rec.comparison
    assert comparison is not None
    assert (comparison.winner, comparison.runner_up) == ("clr", "sgdr")
    assert comparison.difference == pytest.approx(0.03)
    # Equal spreads and seeds: Welch gives 4 degrees of freedom, t(.975, 4) = 2.776445;
    # standard error sqrt(2 * .01**2 / 3) = .0081650, half width .022670.
    assert comparison.ci_low == pytest.approx(0.03 - 0.022670, abs=1e-5)
    assert comparison.ci_high == pytest.approx(0.03 + 0.022670, abs=1e-5)
    assert "4.0 degrees of freedom" in comparison.method

    # Anytime evidence against the best fixed rate's final .86.
    assert rec.winner.epochs_to_baseline == 2
    assert fixed.epochs_to_baseline == 3
    assert rec.by_policy[1].epochs_to_baseline == 3
    assert rec.winner.auc == pytest.approx((0.6 + 0.87 + 0.92) / 3)

    text = rec.rationale
    assert "clr has the best mean val_accuracy, 92.0% ± 1.0 points over 3 seeds" in text
    assert "clr beats sgdr (89.0%) by 3.0 points, 95% CI 0.7 to 5.3 points, over 3 seeds" in text
    assert "excludes 0" in text
    assert "final val_accuracy (86.0%) after 2 epochs; the fixed rate needed 3" in text
    assert "CyclicLR(" in rec.code["pytorch"]


def test_min_mode_ranks_lower_first_and_a_diverged_seed_is_the_worst() -> None:
    trials = [
        _trial("a0", CLR, [1.0, 0.5], seed=0),
        _trial("a1", CLR, [1.0, math.inf], seed=1, status="diverged"),
        _trial("b0", SGDR, [1.0, 0.7], seed=0),
        _trial("b1", SGDR, [1.0, 0.9], seed=1),
    ]
    rec = build_recommendation(job_id="j", trials=trials, metric="val_loss", mode="min", final=True)
    assert rec.winner is not None and rec.winner.policy == "sgdr"
    assert rec.winner.metric_mean == pytest.approx(0.8)
    clr = rec.by_policy[1]
    assert clr.metric_mean == math.inf and clr.auc == math.inf
    assert rec.comparison is not None and rec.comparison.difference == math.inf
    assert rec.comparison.ci_low is None and "diverged" in rec.comparison.method
    # JSON has no inf: the read model writes the documented string.
    dumped = json.loads(rec.model_dump_json())
    assert dumped["by_policy"][1]["metric_mean"] == "Infinity"


def test_one_seed_says_there_is_no_spread_estimate_and_unfinished_jobs_say_so() -> None:
    trials = [_trial("a", CLR, [0.7, 0.9]), _trial("b", SGDR, [0.6, 0.8])]
    rec = build_recommendation(
        job_id="j", trials=trials, metric="val_accuracy", mode="max", final=False
    )
    assert rec.final is False
    assert rec.winner is not None and rec.winner.metric_std is None
    assert rec.comparison is not None and rec.comparison.ci_low is None
    assert "one seed only, so there is no spread estimate" in rec.rationale
    assert rec.rationale.startswith("Best so far (the job is still running)")
    assert rec.comparison.difference == pytest.approx(0.1)
    # No fixed policy in the job: no baseline to reach.
    assert rec.winner.epochs_to_baseline is None


def test_an_interval_that_includes_zero_is_called_a_tie() -> None:
    trials = [
        *(_trial(f"a{i}", CLR, [v], seed=i) for i, v in enumerate([0.80, 0.90, 0.85])),
        *(_trial(f"b{i}", SGDR, [v], seed=i) for i, v in enumerate([0.86, 0.82, 0.84])),
    ]
    rec = build_recommendation(
        job_id="j", trials=trials, metric="val_accuracy", mode="max", final=True
    )
    assert rec.comparison is not None and rec.comparison.ci_low is not None
    assert rec.comparison.ci_low < 0 < rec.comparison.difference
    assert "cannot be told apart" in rec.rationale


def test_no_finished_trial_means_no_winner() -> None:
    rec = build_recommendation(
        job_id="j",
        trials=[_trial("x", CLR, [0.5], status="failed")],
        metric="val_accuracy",
        mode="max",
        final=False,
    )
    assert rec.winner is None and rec.by_policy == [] and rec.code == {}
    assert "No trial has finished yet" in rec.rationale


def test_select_for_confirmation_takes_each_policys_top_k() -> None:
    trials = [
        _trial("a", CLR, [0.90]),
        _trial("b", CLR_2, [0.95]),
        _trial("c", CLR_3, [math.nan], status="diverged"),
        _trial("d", CLR_3, [0.99], status="pruned"),  # not a full-budget result
        _trial("e", SGDR, [0.80]),
        _trial("f", FIXED, [0.99], status="failed"),
    ]
    assert select_for_confirmation(trials, top_k=2, mode="max") == {
        "clr": [CLR_2, CLR],
        "sgdr": [SGDR],
    }
    assert select_for_confirmation(trials, top_k=5, mode="max")["clr"] == [CLR_2, CLR, CLR_3]
    # In min mode the lowest value is best, and the diverged one is still last.
    assert select_for_confirmation(trials, top_k=3, mode="min")["clr"] == [CLR, CLR_2, CLR_3]
    with pytest.raises(ValueError, match="top_k"):
        select_for_confirmation(trials, top_k=0, mode="max")


def test_confirmation_seeds_join_their_configuration() -> None:
    # One lucky search trial (sgdr .95) loses once its confirmation seeds are averaged in.
    trials = [
        _trial("s", SGDR, [0.95]),
        _trial("s1", SGDR, [0.80], seed=1, confirmation=True),
        _trial("s2", SGDR, [0.81], seed=2, confirmation=True),
        _trial("c", CLR, [0.90]),
        _trial("c1", CLR, [0.89], seed=1, confirmation=True),
        _trial("c2", CLR, [0.91], seed=2, confirmation=True),
    ]
    rec = build_recommendation(
        job_id="j", trials=trials, metric="val_accuracy", mode="max", final=True
    )
    assert rec.winner is not None and rec.winner.policy == "clr"
    assert rec.winner.trial_ids == ["c", "c1", "c2"]
    assert rec.by_policy[1].metric_mean == pytest.approx((0.95 + 0.80 + 0.81) / 3)
