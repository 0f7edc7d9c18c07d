"""Successive halving over training length: the rungs of a job's ladder and who goes on.

Pure bookkeeping, like Ray Tune's `_Bracket`: the job spec counts its planned trials with it
and the worker's searcher (`lrtune.workers.experiment.HorizonHalvingSearcher`) promotes with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RungCandidate:
    """One point judged at a rung: its id (the first rung's trial key), its policy and the final
    value of the job's metric at the rung's horizon (None: it failed or diverged)."""

    point_id: str
    policy: str
    value: float | None


@dataclass(frozen=True)
class HorizonLadder:
    """The rungs of `budget_epochs`: the budget divided by r, r², ... rounded to whole epochs,
    down to `min_epochs`, then the budget itself (a budget below `min_epochs` is one rung)."""

    budget_epochs: int
    min_epochs: int
    reduction_factor: int

    @property
    def horizons(self) -> list[int]:
        """Each rung's training length in epochs, shortest first; the last is the budget."""
        shorter: set[int] = set()
        power = 1
        while (epochs := round(self.budget_epochs / self.reduction_factor**power)) >= max(
            self.min_epochs, 1
        ):
            shorter.add(epochs)
            power += 1
        return [*sorted(shorter - {self.budget_epochs}), self.budget_epochs]

    def survivors(self, candidates: int) -> int:
        """How many of a policy's `candidates` at a rung go on: the top 1/r, at least one."""
        return max(1, candidates // self.reduction_factor) if candidates else 0

    def trials_per_policy(self, first_rung: int) -> int:
        """Every rung's trials of one policy that starts the ladder with `first_rung` points."""
        total, candidates = 0, first_rung
        for _ in self.horizons:
            total += candidates
            candidates = self.survivors(candidates)
        return total

    def last_rung_trials(self, first_rung: int) -> int:
        """A policy's full-length trials when every promoted candidate runs."""
        candidates = first_rung
        for _ in self.horizons[1:]:
            candidates = self.survivors(candidates)
        return candidates

    def promote(
        self, candidates: Iterable[RungCandidate], *, mode: Literal["min", "max"]
    ) -> set[str]:
        """The point ids that go on to the next rung. Per policy, best value first under `mode`
        and ties by point id, so the decision depends on the values alone, never on which
        trial finished first; the top `survivors` go on, of those that have a finite value."""
        by_policy: dict[str, list[RungCandidate]] = {}
        for candidate in candidates:
            by_policy.setdefault(candidate.policy, []).append(candidate)
        promoted: set[str] = set()
        for group in by_policy.values():
            # NaN sorts nowhere in particular: only finite values are ranked.
            ranked = sorted(
                (-c.value if mode == "max" else c.value, c.point_id)
                for c in group
                if c.value is not None and math.isfinite(c.value)
            )
            promoted.update(point_id for _, point_id in ranked[: self.survivors(len(group))])
        return promoted


# --- ranges that follow the optimum ---------------------------------------------------------

# The fields that carry a policy's peak rate (one per policy that searches one).
PEAK_RATE_FIELDS = ("lr", "max_lr", "eta_max")
# "At the edge": within this share of a peak-rate range's width on a log scale.
EDGE_SHARE = 0.15
# An edge is moved this far out (x2 up, /2 down), once per job.
EXTENSION_FACTOR = 2.0


@dataclass(frozen=True)
class RangeEdge:
    """A rung's best candidate of a policy sits at an edge of its peak-rate range.

    `blocked` says a candidate beyond the best (on that side) failed or diverged: the search
    stops there instead of extending into rates that do not train."""

    policy: str
    field: str
    side: Literal["upper", "lower"]
    best: float
    low: float
    high: float
    blocked: bool

    @property
    def extended(self) -> tuple[float, float]:
        """The range with this edge moved out by EXTENSION_FACTOR."""
        if self.side == "upper":
            return self.low, self.high * EXTENSION_FACTOR
        return self.low / EXTENSION_FACTOR, self.high


def range_edge(
    policy: str,
    field: str,
    bounds: tuple[float, float],
    rated: Iterable[tuple[float, float | None]],
    *,
    mode: Literal["min", "max"],
) -> RangeEdge | None:
    """Where the best of a rung's candidates (`rated`: each one's peak rate and final value,
    None when it failed or diverged) sits within EDGE_SHARE of either end of `bounds` on a log
    scale; None when it sits inside, or nothing has a value. Ties go to the lower rate."""
    rated = list(rated)
    finite = [(rate, v) for rate, v in rated if v is not None and math.isfinite(v)]
    if not finite:
        return None
    best, _ = min(finite, key=lambda rv: (-rv[1] if mode == "max" else rv[1], rv[0]))
    low, high = bounds
    position = math.log(best / low) / math.log(high / low)
    if position >= 1 - EDGE_SHARE:
        side: Literal["upper", "lower"] = "upper"
        beyond = [v for rate, v in rated if rate > best]
    elif position <= EDGE_SHARE:
        side = "lower"
        beyond = [v for rate, v in rated if rate < best]
    else:
        return None
    blocked = any(v is None or not math.isfinite(v) for v in beyond)
    return RangeEdge(policy, field, side, best, low, high, blocked)
