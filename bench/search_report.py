"""Scoring on fresh seeds and the section "Search that picks right" of bench/RESULTS.md.

The gap of an arm: the best fresh mean among the oracle's 5 best configurations minus the
recommendation's fresh mean (each search seed's recommendation trained on every fresh seed,
averaged over the search seeds first), in accuracy points, or for a loss in % of the best's
loss. Its 95% interval is a paired t interval over the fresh seeds (bench/claims_stats.py:
the same seeds train both sides). The best of the 5 is chosen on those same seeds, which favours
it slightly: the gap is, if anything, overstated.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.claims_stats import Difference, difference
from bench.search_workloads import BenchWorkload

ORACLE_TOP = 5


@dataclass(frozen=True)
class Gap:
    """An arm's gap to the oracle's best on fresh seeds, with its interval."""

    mean: float  # the interval's centre: over fresh seeds, search seeds averaged
    low: float
    high: float
    worst: float  # the worst search seed's own gap
    method: str

    def within_noise_of_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def scaled(workload: BenchWorkload, values: dict[int, float], best_mean: float) -> dict[int, float]:
    """Values in the gap's unit: accuracy points, or a loss in % of the best's mean loss."""
    factor = 100.0 if workload.higher_is_better else 100.0 / best_mean
    return {seed: factor * value for seed, value in values.items()}


def gap(
    workload: BenchWorkload,
    *,
    best: dict[int, float],
    recommended: list[dict[int, float]],
) -> Gap:
    """`best`: the oracle's best configuration on each fresh seed; `recommended`: each search
    seed's recommendation on each fresh seed. Positive: the recommendation is worse."""
    best_mean = statistics.fmean(best.values())
    seeds = sorted(best)
    averaged = {f: statistics.fmean(r[f] for r in recommended) for f in seeds}
    diff: Difference = difference(
        scaled(workload, best, best_mean),
        scaled(workload, averaged, best_mean),
        higher_is_better=workload.higher_is_better,
    )
    worst = max(
        difference(
            scaled(workload, best, best_mean),
            scaled(workload, r, best_mean),
            higher_is_better=workload.higher_is_better,
        ).value
        for r in recommended
    )
    return Gap(diff.value, diff.low, diff.high, worst, diff.method)


def versus(
    workload: BenchWorkload,
    ours: list[dict[int, float]],
    theirs: list[dict[int, float]],
    *,
    best_mean: float,
) -> Difference:
    """Ours minus theirs in the better sense (positive: ours is better), paired over the fresh
    seeds, each side averaged over its search seeds first."""
    seeds = sorted(ours[0])
    a = {f: statistics.fmean(r[f] for r in ours) for f in seeds}
    b = {f: statistics.fmean(r[f] for r in theirs) for f in seeds}
    return difference(
        scaled(workload, a, best_mean),
        scaled(workload, b, best_mean),
        higher_is_better=workload.higher_is_better,
    )


def unit(workload: BenchWorkload) -> str:
    return "points" if workload.higher_is_better else "% of the best loss"


def target_bar(workload: BenchWorkload) -> float:
    """Within 0.5 accuracy points of the oracle's best, or 1% of its loss."""
    return 0.5 if workload.higher_is_better else 1.0


def fmt_value(workload: BenchWorkload, value: float) -> str:
    return f"{100 * value:.2f}%" if workload.higher_is_better else f"{value:.4f}"


def table(header: list[str], rows: list[list[str]], *, align: str | None = None) -> list[str]:
    """A markdown table; `align` one character per column: l or r."""
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(marks) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def fresh_means(values: dict[int, float] | None) -> float | None:
    return statistics.fmean(values.values()) if values else None


def summarize_targets(
    workload: BenchWorkload,
    *,
    default_gap: Gap | None,
    default_share: float | None,
    comparisons: dict[str, Difference],
) -> tuple[list[str], dict[str, Any]]:
    """The issue-25 targets for one workload: lines, and the facts the all-workload verdict
    needs (`ahead_of_all`, `behind_beyond_noise`)."""
    lines: list[str] = []
    facts: dict[str, Any] = {"ahead_of_all": None, "behind_beyond_noise": []}
    bar = target_bar(workload)
    if default_gap is None or default_share is None:
        lines.append("- lrtune's default: not measured yet (its arm or its fresh seeds missing).")
        return lines, facts
    close = default_gap.mean <= bar or default_gap.within_noise_of_zero()
    cheap = default_share <= 0.25
    verdict = "met" if close and cheap else "NOT met"
    misses = []
    if not close:
        misses.append(f"the gap by {default_gap.mean - bar:.2f} {unit(workload)} past {bar:g}")
    if not cheap:
        misses.append(f"the epochs by {100 * (default_share - 0.25):.1f} points of the reference")
    lines.append(
        f"- lrtune's default: gap {default_gap.mean:.2f} {unit(workload)} "
        f"[{default_gap.low:.2f}, {default_gap.high:.2f}] at {100 * default_share:.1f}% of the "
        f"reference epochs (bar: ≤ {bar:g} or an interval holding 0, at ≤ 25%): {verdict}"
        + (f" ({'; '.join(misses)})." if misses else ".")
    )
    if comparisons:
        ahead = [p for p, d in comparisons.items() if d.value > 0]
        level = [p for p, d in comparisons.items() if d.value == 0]  # the same recommendation
        behind = [p for p, d in comparisons.items() if d.value < 0]
        beyond_noise = [p for p, d in comparisons.items() if d.high < 0]
        facts["ahead_of_all"] = len(ahead) == len(comparisons)
        facts["behind_beyond_noise"] = beyond_noise
        parts = [
            f"{p} {d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" for p, d in comparisons.items()
        ]
        verdict = []
        if level:
            verdict.append(f"level with {', '.join(level)}")
        if behind:
            verdict.append(
                f"behind {', '.join(behind)}"
                + (f", beyond the noise against {', '.join(beyond_noise)}" if beyond_noise else "")
                + ("" if beyond_noise else ", within the noise")
            )
        lines.append(
            "- lrtune's default against each peer at equal epochs (its fresh mean minus the "
            f"peer's, {unit(workload)}, positive: ahead; paired t over the fresh seeds): "
            + "; ".join(parts)
            + (". Ahead of every peer." if facts["ahead_of_all"] else ". " + _sentence(verdict))
        )
    return lines, facts


def _sentence(parts: list[str]) -> str:
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."
