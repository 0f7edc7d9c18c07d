"""bench_claims' verdicts: the interval of a difference (paired by seed or Welch's) and the
words "yes / no / within noise" read from it."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def claims_stats(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is not installed, it runs from the root
    import bench.claims_stats

    return bench.claims_stats


def test_same_seeds_are_paired(claims_stats: ModuleType) -> None:
    # Each seed is 0.02 better, whatever the seed's own level: paired, no spread at all.
    first = {1: 0.52, 2: 0.72, 3: 0.42}
    second = {1: 0.50, 2: 0.70, 3: 0.40}
    diff = claims_stats.difference(first, second, higher_is_better=True)
    assert diff.value == pytest.approx(0.02)
    assert diff.low == pytest.approx(0.02) and diff.high == pytest.approx(0.02)
    assert diff.method.startswith("paired")
    assert claims_stats.verdict(diff, "beats") == "yes"


def test_paired_interval_is_the_t_interval_of_the_differences(claims_stats: ModuleType) -> None:
    first, second = {1: 0.60, 2: 0.55, 3: 0.70}, {1: 0.50, 2: 0.58, 3: 0.61}
    diffs = [0.10, -0.03, 0.09]
    mean = sum(diffs) / 3
    se = stats.tstd(diffs) / math.sqrt(3)
    half = stats.t.ppf(0.975, 2) * se
    diff = claims_stats.difference(first, second, higher_is_better=True)
    assert (diff.low, diff.high) == pytest.approx((mean - half, mean + half))
    assert claims_stats.verdict(diff, "beats") == "within noise"
    assert claims_stats.verdict(diff, "matches") == "yes (within noise)"


def test_other_seeds_use_welch_and_lower_is_better_flips_the_sign(
    claims_stats: ModuleType,
) -> None:
    first, second = {1: 1.0, 2: 1.1, 3: 1.2}, {4: 2.0, 5: 2.2, 6: 2.1}
    diff = claims_stats.difference(first, second, higher_is_better=False)
    assert diff.method.startswith("Welch")
    assert diff.value == pytest.approx(1.0)  # first's loss is 1.0 lower: 1.0 better
    welch = stats.ttest_ind([1.0, 1.1, 1.2], [2.0, 2.2, 2.1], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert (diff.low, diff.high) == pytest.approx((-high, -low))
    assert claims_stats.verdict(diff, "beats") == "yes"
    reverse = claims_stats.difference(second, first, higher_is_better=False)
    assert claims_stats.verdict(reverse, "beats") == "no"
    assert claims_stats.verdict(reverse, "matches") == "no"


def test_no_difference_at_all_does_not_beat(claims_stats: ModuleType) -> None:
    same = {1: 1.0, 2: 1.0, 3: 1.0}
    diff = claims_stats.difference(same, dict(same), higher_is_better=True)
    assert claims_stats.verdict(diff, "beats") == "no"
    assert claims_stats.verdict(diff, "matches") == "yes (within noise)"


def test_combined_verdicts(claims_stats: ModuleType) -> None:
    assert claims_stats.combine({"a": "yes", "b": "yes"}) == "yes"
    assert claims_stats.combine({"a": "yes", "b": "yes (within noise)"}) == "yes (within noise)"
    assert claims_stats.combine({"a": "no", "b": "no"}) == "no"
    assert claims_stats.combine({"a": "within noise", "b": "within noise"}) == "within noise"
    assert claims_stats.combine({"a": "yes", "b": "no"}) == "partly: a yes; b no"
