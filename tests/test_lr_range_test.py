"""The LR range test: its bounds on real workloads, and `suggest_bounds` on synthetic curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lrtune.schemas.recommendations import BoundSuggestion, RangeTestConfig
from lrtune.schemas.schedules import FixedSchedule, ParamGroupRule
from lrtune.schemas.search import DEFAULT_SEARCH_SPACES, validate_search_space
from lrtune.schemas.trials import OptimizerSpec, TrialConfig, TrialOutcome
from lrtune.schemas.workloads import WorkloadSpec
from lrtune.workers.lr_range_test import (
    derive_search_spaces,
    ramp_rates,
    run_range_test,
    suggest_bounds,
)
from lrtune.workers.trial import run_trial


def _train_fixed(workload: WorkloadSpec, optimizer: OptimizerSpec, lr: float) -> TrialOutcome:
    config = TrialConfig(
        workload=workload, optimizer=optimizer, schedule=FixedSchedule(lr=lr), epochs=2
    )
    return run_trial(config, lambda _result: None)


@pytest.mark.parametrize(
    ("workload", "momentum"),
    [
        (WorkloadSpec(name="digits"), 0.0),
        (WorkloadSpec(name="mnist1d", params={"n_train": 2000, "n_test": 500}), 0.9),
    ],
    ids=["digits", "mnist1d"],
)
def test_suggested_max_lr_trains_and_ten_times_it_diverges(
    workload: WorkloadSpec, momentum: float
) -> None:
    optimizer = OptimizerSpec(momentum=momentum)
    result = run_range_test(
        workload=workload,
        optimizer=optimizer,
        test=RangeTestConfig(min_lr=1e-4, max_lr=10.0, iterations=120),
    )
    bounds = result.suggestion
    assert len(result.lr) == len(result.loss) == len(result.smoothed_loss) == result.iterations
    assert 0 < bounds.min_lr < bounds.max_lr < 10.0

    below = _train_fixed(workload, optimizer, 0.9 * bounds.max_lr)
    assert below.status == "completed"
    assert below.last is not None
    first_loss = result.loss[0]
    assert below.last.train_loss < 0.8 * first_loss, (bounds, below.last)

    above = _train_fixed(workload, optimizer, 10 * bounds.max_lr)
    assert above.last is not None
    assert above.status == "diverged" or not above.last.train_loss < first_loss, (bounds, above)


def test_the_ramp_starts_and_ends_at_the_configured_rates() -> None:
    exponential = ramp_rates(RangeTestConfig(min_lr=1e-6, max_lr=1.0, iterations=7))
    assert exponential[0] == pytest.approx(1e-6)
    assert exponential[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(np.log10(exponential)), 1.0)
    linear = ramp_rates(RangeTestConfig(min_lr=0.1, max_lr=0.7, iterations=7, ramp="linear"))
    np.testing.assert_allclose(linear, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])


def test_smoothed_loss_is_the_debiased_ema_and_the_test_stops_on_a_blow_up() -> None:
    result = run_range_test(
        workload=WorkloadSpec(name="digits"),
        optimizer=OptimizerSpec(),
        test=RangeTestConfig(min_lr=1e-3, max_lr=1e3, iterations=60, smoothing=0.9),
    )
    average = 0.0
    for n, (loss, smoothed) in enumerate(zip(result.loss, result.smoothed_loss, strict=True)):
        average = 0.9 * average + 0.1 * loss
        assert smoothed == pytest.approx(average / (1 - 0.9 ** (n + 1)))
    assert result.stopped_early and result.iterations < 60
    last = result.smoothed_loss[-1]
    assert not math.isfinite(last) or last > 4 * min(result.smoothed_loss[:-1])


def test_a_linear_ramp_with_param_groups_records_the_base_rate() -> None:
    test = RangeTestConfig(min_lr=0.01, max_lr=0.5, iterations=30, ramp="linear")
    result = run_range_test(
        workload=WorkloadSpec(name="digits"),
        optimizer=OptimizerSpec(name="adam"),
        test=test,
        param_groups=[ParamGroupRule(match="head.", lr_mult=0.1)],
        seed=3,
    )
    assert result.ramp == "linear"
    np.testing.assert_allclose(result.lr, ramp_rates(test)[: result.iterations])
    # The loss never stopped falling here: the method says the ramp should go higher.
    if np.argmin(result.smoothed_loss) == result.iterations - 1:
        assert "still falling" in result.suggestion.max_method


def _synthetic_curve(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    # Flat at 2.3 until 1e-3, falls along a tanh in log lr (steepest at 1e-2), lowest near 0.3,
    # then climbs fast: the shape a range test draws.
    lrs = np.logspace(-6, 1, n)
    x = np.log10(lrs)
    loss = 2.3 - 1.0 * (1 + np.tanh((x + 2) * 2)) / 2 + np.where(x > -0.5, (x + 0.5) ** 2 * 8, 0)
    return lrs, loss


def test_suggestions_on_a_synthetic_curve() -> None:
    lrs, loss = _synthetic_curve()
    bounds = suggest_bounds(lrs=lrs.tolist(), smoothed=loss.tolist())
    lowest = lrs[np.argmin(loss)]
    assert 10**-0.7 < lowest < 10**-0.3
    assert bounds.minimum == pytest.approx(lowest / 10)
    assert bounds.max_lr == pytest.approx(lowest / 3)
    # The tanh falls fastest at 1e-2 (one grid step either side of the exact point).
    assert bounds.steep is not None and 10**-2.1 < bounds.steep < 10**-1.9
    # The longest descent runs from the plateau to the minimum; the valley is halfway down it.
    assert bounds.valley is not None and 1e-5 < bounds.valley < lowest
    assert bounds.min_lr < bounds.max_lr
    assert "lowest smoothed loss" in bounds.max_method
    assert "still falling" not in bounds.max_method
    falling = suggest_bounds(lrs=lrs[:50].tolist(), smoothed=loss[:50].tolist())
    assert "still falling" in falling.max_method


def test_suggestions_ignore_non_finite_points_and_reject_bad_input() -> None:
    lrs, loss = _synthetic_curve()
    with_blow_up = [*loss.tolist()[:-3], math.inf, math.nan, math.inf]
    clean = suggest_bounds(lrs=lrs[:-3].tolist(), smoothed=loss[:-3].tolist())
    assert suggest_bounds(lrs=lrs.tolist(), smoothed=with_blow_up) == clean
    with pytest.raises(ValueError, match="two finite points"):
        suggest_bounds(lrs=[0.1, 0.2], smoothed=[math.nan, 1.0])
    with pytest.raises(ValueError, match="increase"):
        suggest_bounds(lrs=[0.2, 0.1, 0.3], smoothed=[1.0, 0.9, 0.8])


def test_min_lr_moves_up_to_a_late_descent() -> None:
    # The loss only starts falling at 0.2 and is lowest at 3: a decade below max_lr (= 1) would be
    # on the plateau, so min_lr is where the descent starts instead.
    lrs = np.logspace(-3, 1, 60)
    x = np.log10(lrs)
    loss = np.where(x < -0.7, 2.0, 2.0 - (x + 0.7) * 0.5) + np.where(x > 0.5, (x - 0.5) * 10, 0)
    bounds = suggest_bounds(lrs=lrs.tolist(), smoothed=loss.tolist())
    assert bounds.min_method.startswith("start of the longest descent")
    assert 0.13 <= bounds.min_lr <= 0.25  # fastai counts the point just before the fall
    assert bounds.min_lr < bounds.max_lr


def test_derived_spaces_centre_on_the_bounds_and_keep_user_overrides() -> None:
    bounds = BoundSuggestion(
        min_lr=0.01, max_lr=0.3, min_method="m", max_method="M", valley=None, steep=None
    )
    policies = ["fixed", "exponential", "polynomial", "piecewise", "clr", "sgdr", "one_cycle"]
    spaces = derive_search_spaces(
        policies=policies,
        bounds=bounds,
        base_spaces=DEFAULT_SEARCH_SPACES,
        overrides={
            "clr": {"max_lr": 0.5, "step_size_epochs": 4},
            "fixed": {"lr": {"choice": [0.05, 0.1]}},
        },
    )
    assert spaces["fixed"] == {"lr": {"choice": [0.05, 0.1]}}
    # A decaying schedule's peak reaches 2x max_lr; a constant rate stops at max_lr.
    assert spaces["exponential"]["lr"]["loguniform"] == pytest.approx([0.1, 0.6])
    assert spaces["exponential"]["decay_rate"] == DEFAULT_SEARCH_SPACES["exponential"]["decay_rate"]
    assert spaces["polynomial"]["end_lr"] <= 0.001
    assert spaces["clr"]["base_lr"]["loguniform"] == pytest.approx([0.01, 0.1])
    assert spaces["clr"]["max_lr"] == 0.5  # the user's plain value wins
    assert spaces["clr"]["step_size_epochs"] == 4
    assert spaces["clr"]["mode"] == DEFAULT_SEARCH_SPACES["clr"]["mode"]
    assert spaces["sgdr"]["eta_max"]["loguniform"] == pytest.approx([0.15, 0.6])
    assert spaces["one_cycle"]["max_lr"]["loguniform"] == pytest.approx([0.15, 0.6])
    assert max(max(v) for v in spaces["piecewise"]["values"]["choice"]) <= 0.3
    for policy, space in spaces.items():
        validate_search_space(policy, space)  # still a valid space for the job spec
    assert DEFAULT_SEARCH_SPACES["fixed"] == {"lr": {"loguniform": [1e-3, 1.0]}}  # not mutated
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        derive_search_spaces(
            policies=["fixed"],
            bounds=bounds.model_copy(update={"min_lr": 0.5}),
            base_spaces=DEFAULT_SEARCH_SPACES,
        )
