"""The search benchmark's workloads, spaces, seeds and schedules, compressed ones included.

Pure: lrtune's schemas only (no Ray, no torch at import), so tests/test_bench_search.py runs it in
the unit tier. The spaces are the service's own: each policy's default space with its rates
derived from explicit `lr_bounds` (`raw_space(entry, bounds=explicit_bounds(...))`, imported when
called, since lrtune.workers.experiment imports Ray).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from lrtune.schemas.schedules import ScheduleSpec, WsdSchedule, parse_schedule
from lrtune.schemas.search import resolve_schedule

# The fixed reference every arm's epochs are counted against (issue 25): the oracle of issue 11,
# 12 grid points per policy x the policies x 3 seeds x the budget's epochs. A wider oracle grid
# does not move it.
REFERENCE_POINTS = 12
REFERENCE_SEEDS = 3
# The oracle's rate axis reaches this many times the bounds' max, past every space of today.
RATE_REACH = 4.0
# The fields that are a policy's peak rate (the ones a range test's max speaks to).
PEAK_FIELDS = ("lr", "max_lr", "eta_max")
# The whole schedule compressed to these shares of the budget (issue 25, the correlation table).
COMPRESSIONS = (1 / 12, 1 / 6, 1 / 4, 1 / 3)
# The rungs at which the oracle records the raw metric and the cooldown probe: ASHA's with max_t
# 12, grace 1 and reduction factor 3 (Ray's _Bracket milestones), scaled to other budgets.
RUNG_SHARES = (1 / 12, 3 / 12, 9 / 12)
# Seed streams of their own: no search seed's trials (SeedSequence([seed, index]) for seeds 0,
# 1, 2) and no confirmation seed share them.
ORACLE_SEED_BASE = 1000
FRESH_SEED_BASE = 2000

SGD = {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0005}
ADAMW = {"name": "adamw", "weight_decay": 0.01}
SGD_POLICIES = ("fixed", "exponential", "cosine", "clr", "sgdr", "one_cycle")
# charlm trains as transformers do: AdamW, a warmup in front of every schedule (one_cycle's is
# its rising phase, inverse_sqrt and wsd bring their own).
CHARLM_POLICIES = ("cosine", "wsd", "inverse_sqrt", "one_cycle", "fixed")
CHARLM_WARMUP = {"cosine": {"warmup_steps_frac": 0.05}, "fixed": {"warmup_steps_frac": 0.05}}


@dataclass(frozen=True)
class BenchWorkload:
    key: str
    label: str
    spec: dict[str, Any]
    # Explicit lr_bounds (min, max), from range tests of the workload (see WORKLOADS).
    bounds: tuple[float, float]
    optimizer: dict[str, Any] = field(default_factory=lambda: dict(SGD))
    policies: tuple[str, ...] = SGD_POLICIES
    # Each policy's fields the job sets itself, laid over its default space.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric: str = "val_accuracy"
    mode: str = "max"
    epochs: int = 12
    # What a diverged trial counts as: chance accuracy 0, or a uniform guess's loss.
    worst: float = 0.0
    # Seconds per epoch in one process (one torch thread) on the 2-core machine, probes and the
    # build of each (often short) training included: the estimates' prior until a stage has
    # measured its own. Measured on one oracle configuration (its full training with probes and
    # its 4 compressed ones) at load 4: 2.6, 3.1, 2.6 and 19.6 s for 28.5 epochs.
    seconds_per_epoch: float = 0.1

    @property
    def higher_is_better(self) -> bool:
        return self.mode == "max"

    def value(self, raw: float | None) -> float:
        """A reported value, a blown-up one (NaN, inf, missing) counted as the worst."""
        if raw is None or not math.isfinite(raw):
            return self.worst
        return raw if self.higher_is_better else min(raw, self.worst)

    def best(self, values: dict[Any, float]) -> Any:
        """The key of the best of `values`."""
        pick = max if self.higher_is_better else min
        return pick(values, key=values.__getitem__)


WORKLOADS = {
    w.key: w
    for w in (
        # One range test each (100 and 300 iterations, seeds 0 and 1, SGD momentum 0.9) suggested
        # max_lr 0.20-0.25 (mlp), 0.15-0.25 (digits cnn), 0.14-0.53 (cnn1d), min_lr = max / 10.
        BenchWorkload(
            "mnist1d-mlp",
            "mnist1d (mlp)",
            {"name": "mnist1d", "params": {"model": "mlp"}},
            (0.025, 0.25),
            seconds_per_epoch=0.09,
        ),
        BenchWorkload(
            "digits-cnn",
            "digits (cnn)",
            {"name": "digits", "params": {"model": "cnn"}},
            (0.025, 0.25),
            seconds_per_epoch=0.11,
        ),
        BenchWorkload(
            "mnist1d-cnn1d",
            "mnist1d (cnn1d)",
            {"name": "mnist1d", "params": {"model": "cnn1d"}},
            (0.02, 0.2),
            seconds_per_epoch=0.09,
        ),
        # Smaller than charlm's defaults (d_model 64, 512 windows: 16 steps per epoch, about
        # 0.6 s an epoch in one process here) so its oracle takes about 40 minutes and the whole
        # benchmark fits in about 4 hours. Bounds set by hand: lrtune's range test (AdamW, its
        # defaults, seeds 0-2) suggested max_lr 0.17-0.20, but 4-epoch cosine runs stop learning
        # at 0.02 (val_loss 3.08, the unigram level) and do best near 2e-3 to 6e-3 (2.84), where
        # fastai's valley (7.6e-4 to 9.1e-4) points; so max 6e-3, min = max / 10.
        BenchWorkload(
            "charlm",
            "charlm (transformer, AdamW)",
            {
                "name": "charlm",
                "params": {"d_model": 64, "n_layers": 2, "n_heads": 4, "limit_train": 512},
            },
            (6e-4, 6e-3),
            optimizer=dict(ADAMW),
            policies=CHARLM_POLICIES,
            overrides=CHARLM_WARMUP,
            metric="val_loss",
            mode="min",
            worst=math.log(97),  # a uniform guess over charlm's 97 tokens
            seconds_per_epoch=0.69,
        ),
    )
}


@dataclass(frozen=True)
class Scale:
    """How big a run is: the full benchmark, or the smoke run of `--tiny`."""

    name: str
    grid: int  # oracle grid points per policy
    oracle_seeds: int
    fresh_seeds: int
    search_seeds: tuple[int, ...]
    # The arms' epochs as a share of the reference (issue 25: the default at <= 25%).
    arm_share: float
    epochs: int | None = None  # None: each workload's own budget


FULL = Scale("full", grid=16, oracle_seeds=3, fresh_seeds=5, search_seeds=(0, 1, 2), arm_share=0.25)
TINY = Scale(
    "tiny", grid=1, oracle_seeds=1, fresh_seeds=2, search_seeds=(0,), arm_share=0.05, epochs=3
)


def budget_epochs(workload: BenchWorkload, scale: Scale) -> int:
    return scale.epochs or workload.epochs


def reference_epochs(workload: BenchWorkload, scale: Scale = FULL) -> int:
    """12 points per policy x the policies x 3 seeds x the budget: 2,592 on mnist1d mlp."""
    return (
        REFERENCE_POINTS * len(workload.policies) * REFERENCE_SEEDS * budget_epochs(workload, scale)
    )


def arm_epochs(workload: BenchWorkload, scale: Scale) -> int:
    """The epochs every arm gets (each within 10% of it)."""
    return round(scale.arm_share * reference_epochs(workload, scale))


def horizons(budget: int) -> list[int]:
    """The compressed horizons in whole epochs: 1, 2, 3, 4 for a budget of 12."""
    return [max(1, round(budget * share)) for share in COMPRESSIONS]


def rungs(budget: int) -> list[int]:
    """The epochs at which raw values and probes are recorded: 1, 3, 9 for a budget of 12."""
    return sorted({min(budget, max(1, round(budget * share))) for share in RUNG_SHARES})


def _seeds(base: int, count: int) -> list[int]:
    from lrtune.workers.experiment import trial_seed  # imports Ray: called, not imported

    return [trial_seed(base, index) for index in range(count)]


def oracle_seeds(scale: Scale) -> list[int]:
    return _seeds(ORACLE_SEED_BASE, scale.oracle_seeds)


def fresh_seeds(scale: Scale) -> list[int]:
    """Seeds no arm searched with and the oracle did not use."""
    return _seeds(FRESH_SEED_BASE, scale.fresh_seeds)


def search_spaces(workload: BenchWorkload) -> dict[str, dict[str, Any]]:
    """Each policy's space as a job with these `lr_bounds` (and overrides) derives it."""
    from lrtune.schemas.jobs import LrBounds, PolicySearch
    from lrtune.workers.experiment import explicit_bounds, raw_space

    low, high = workload.bounds
    bounds = explicit_bounds(LrBounds(min=low, max=high))
    return {
        p: raw_space(PolicySearch(policy=p, search=workload.overrides.get(p)), bounds=bounds)
        for p in workload.policies
    }


def widen_rates(spaces: dict[str, dict[str, Any]], *, top: float) -> dict[str, dict[str, Any]]:
    """The spaces with every peak-rate range reaching `top` (its lower end kept)."""
    wider: dict[str, dict[str, Any]] = {}
    for policy, space in spaces.items():
        wider[policy] = dict(space)
        for key in PEAK_FIELDS:
            domain = space.get(key)
            if isinstance(domain, dict) and "loguniform" in domain:
                low, high = domain["loguniform"]
                wider[policy][key] = {"loguniform": [low, max(high, top)]}
    return wider


def oracle_spaces(workload: BenchWorkload) -> dict[str, dict[str, Any]]:
    """The search spaces with their peak rates reaching RATE_REACH x the bounds' max."""
    return widen_rates(search_spaces(workload), top=RATE_REACH * workload.bounds[1])


def peak_rate(schedule: ScheduleSpec) -> float:
    return float(next(getattr(schedule, f) for f in PEAK_FIELDS if hasattr(schedule, f)))


def resolve(
    policy: str, point: dict[str, Any], *, steps_per_epoch: int, epochs: int
) -> ScheduleSpec:
    """A search point's schedule over `epochs`, as a job of that many epochs trains it."""
    return resolve_schedule(
        policy, point, steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs
    )


def compress_schedule(schedule: ScheduleSpec, *, horizon: int, budget: int) -> ScheduleSpec:
    """The whole schedule run in `horizon` epochs instead of `budget`: every step-valued field
    (warmup, decay_steps, total_steps, t_0, step_size, milestones, boundaries, timescale) times
    horizon / budget, rounded to whole steps, at least 1 (a warmup of 0 stays 0). Fields a
    space gives in epochs scale too, so the shape is the same at every horizon.

    Issue 25's horizon halving compresses the same way; this copy is the benchmark's until the
    service has one (the lead unifies them). ValidationError when the short schedule is invalid
    (e.g. one-cycle's rising phase under a step).
    """
    if horizon >= budget:
        return schedule
    ratio = horizon / budget
    fields = schedule.model_dump()
    for name in type(schedule).durations():
        value = fields.get(name)
        if value is None or (name == "warmup_steps" and value == 0):
            continue
        if isinstance(value, list):
            fields[name] = _scaled_increasing(value, ratio)
        else:
            fields[name] = max(1, round(value * ratio))
    if isinstance(schedule, WsdSchedule) and schedule.decay_frac is not None:
        fields["decay_steps"] = None  # round(decay_frac x total_steps) again
    return parse_schedule(fields)


def _scaled_increasing(values: list[int], ratio: float) -> list[int]:
    scaled: list[int] = []
    for value in values:
        step = max(1, round(value * ratio))
        scaled.append(max(step, scaled[-1] + 1) if scaled else step)
    return scaled


def trial_config(
    workload: BenchWorkload, schedule: ScheduleSpec, *, seed: int, epochs: int
) -> dict[str, Any]:
    return {
        "workload": workload.spec,
        "optimizer": workload.optimizer,
        "schedule": schedule.model_dump(mode="json"),
        "epochs": epochs,
        "seed": seed,
        "metric": workload.metric,
        "mode": workload.mode,
    }


def digest(data: Any) -> str:
    """A short content key: the same inputs find the same cached result."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
