"""The statistics of bench_claims: a sample's mean and spread, the interval of a difference
(paired by seed when both samples ran on the same seeds, else Welch's), and the verdict
"yes / no / within noise" read from that interval."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal

from scipy import stats

CONFIDENCE = 0.95
# "beats": the claim is that the first sample is better; "matches": that it is not worse.
ClaimKind = Literal["beats", "matches"]


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], *, percent: bool = False, digits: int = 2) -> str:
    """`mean ± std` of `values` (accuracies as percentages), with the number of seeds."""
    mean, spread = mean_spread(values)
    scale, unit = (100.0, "%") if percent else (1.0, "")
    return f"{mean * scale:.{digits}f}{unit} ± {spread * scale:.{digits}f} (n={len(values)})"


@dataclass(frozen=True)
class Difference:
    """`first - second` in the better sense (positive: the first is better), with its
    two-sided interval at CONFIDENCE and how it was computed."""

    value: float
    low: float
    high: float
    method: str


def difference(
    first: dict[int, float], second: dict[int, float], *, higher_is_better: bool
) -> Difference:
    """Compare two samples keyed by seed: paired (a t interval of the per-seed differences)
    when they hold the same seeds, else Welch's interval of the difference of means."""
    sign = 1.0 if higher_is_better else -1.0
    if set(first) == set(second) and len(first) > 1:
        diffs = [sign * (first[seed] - second[seed]) for seed in first]
        mean, spread = mean_spread(diffs)
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(diffs) - 1) * spread / math.sqrt(len(diffs))
        return Difference(mean, mean - half, mean + half, f"paired t, {len(diffs)} seeds")
    a, b = list(first.values()), list(second.values())
    mean = sign * (statistics.fmean(a) - statistics.fmean(b))
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, -math.inf, math.inf, "one seed: no interval")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(mean, mean, mean, "Welch, no spread")
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se
    return Difference(mean, mean - half, mean + half, f"Welch, n={len(a)} and {len(b)}")


def verdict(diff: Difference, kind: ClaimKind) -> str:
    """Whether a claim holds, from the interval of (claimed better) - (claimed worse).

    "beats": yes when the whole interval is above 0, no when it is at or below 0, else within
    noise. "matches" (not worse): no when the whole interval is below 0, else yes, "within
    noise" added when the interval holds 0.
    """
    if kind == "beats":
        if diff.low > 0:
            return "yes"
        if diff.high <= 0:
            return "no"
        return "within noise"
    if diff.high < 0:
        return "no"
    return "yes" if diff.low > 0 else "yes (within noise)"


def combine(verdicts: dict[str, str]) -> str:
    """One verdict for a claim measured several times (label: its verdict, e.g. per workload):
    yes when every part holds, the parts' word when they all agree (no, within noise), else
    each part's label and word."""
    words = list(verdicts.values())
    if all(v.startswith("yes") for v in words):
        return "yes" if all(v == "yes" for v in words) else "yes (within noise)"
    if len(set(words)) == 1:
        return words[0]
    return "partly: " + "; ".join(f"{label} {v}" for label, v in verdicts.items())
