"""Schedule-aware search (issue 11): the benchmark that decides how lrtune's early stopping
judges a trial, and whether the search it drives finds what an exhaustive grid finds.

Workloads (`--workloads`): mnist1d mlp, digits cnn and mnist1d cnn1d at their default sizes,
12 epochs, SGD momentum 0.9 with weight decay 5e-4, metric val_accuracy (max). Policies: fixed,
exponential, cosine, clr, sgdr and one_cycle, each over a FIXED search space per workload: the
policy's default space with its rates derived from explicit `lr_bounds` (the service's own
`raw_space(entry, bounds=explicit_bounds(...))`), so the oracle's grid and every search arm
sample the same spaces (the lrtune jobs' recorded `search_spaces` are checked against them).

1. Oracle (cached in bench/.cache/, out of git; `--skip-oracle` insists on the cache). A grid of
   `--grid` points per policy (the service's `grid_points`), each on 3 seeds to the end, no
   early stopping, in `--jobs` processes. At the rung epochs of ASHA with max_t 12, grace 1 and
   reduction factor 3 (epochs 1, 3, 9) every trial records its raw metric and the cooldown probes
   of `PROBE_VARIANTS` (fractions 0.1, 0.2, 0.5, 1.0 linear, 0.2 1-sqrt). One training per
   (configuration, seed) serves all variants: run_trial's probe hook is wrapped so that each rung
   runs `lrtune.workers.trial.cooldown_probe` once per variant; a probe is a branch (copied model
   and optimizer, RNG states put back), so each is exactly what a run with that single probe
   would record and the main trial is the same as without probes. Reported per workload: the
   Spearman correlation (scipy) at every rung of the raw metric and of each probe with the
   configuration's 3-seed final mean, per seed (216 pairs: one trial's value is what ASHA sees)
   and, in parentheses, of the 3-seed means (72 configurations); how many of the 3 best
   configurations survive a rung-3 cut to the top third judged by one trial each; and the
   cheapest linear fraction within 0.03 of the best one's correlation (averaged over the
   workloads and rungs run): the default cooldown fraction.
2. Arms (`--arms`), each with the search seeds of `--seeds` (`search.seed`), at equal trial
   budgets (`--trials` per policy):
   - cooldown: an lrtune job through the real worker (temporary SQLite, `run_worker(once=True,
     num_cpus=2)`, 2 concurrent trials): random search, ASHA (grace `--grace`, default 1; rf 3)
     judged by cooldown probes (`--cooldown`, default the oracle's recommended fraction,
     linear), confirmation of each policy's best on 3 seeds; its recommendation is the job's
     winner;
   - raw: the same job with `judge: "raw"` (Ray Tune's ASHA as it is);
   - random: random search without early stopping at the cooldown arm's epochs (that seed's
     epochs / 12 trials, round robin over the policies, the service's own random points and trial
     seeds), in `--jobs` processes; the best final value wins;
   - tpe: Optuna TPE with its MedianPruner (defaults), one study over all policies in this
     process, each policy's parameters its own (conditional) dimensions, the policy of trial i
     fixed round robin (`enqueue_trial`) so every policy gets the same number of trials as in the
     lrtune jobs; `trial.report` every epoch, stopped when `trial.should_prune()`; the best
     completed trial wins.
   Each arm's recommendation is retrained on the oracle's 3 seeds; reported: the gap to the
   oracle's best mean in accuracy points (mean and worst over the search seeds), and the epochs
   spent (probe steps counted as epochs, confirmation included; no range test: the bounds are
   given) against the oracle's (grid x 3 seeds x 12, its probes not counted), and wall-clock.
3. `--write` records the section "Schedule-aware search (issue 11)" of bench/RESULTS.md: the
   machine and its load, every workload's correlation and arms tables, and the target checks
   (and marks the older "Search efficiency (issue 5)" section as superseded, in one line). With
   another `--grace` (an alternative to the issue's grace 1) it records the arms alone, in the
   section "Schedule-aware search (issue 11), alternative: ASHA grace N".

    nice -n 5 .venv/bin/python -m bench.bench_search --arms none          # the oracle alone
    nice -n 5 .venv/bin/python -m bench.bench_search --skip-oracle --write
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.worker_job import worker_job

POLICIES = ["fixed", "exponential", "cosine", "clr", "sgdr", "one_cycle"]
OPTIMIZER = {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0005}
METRIC = "val_accuracy"
EPOCHS = 12
GRACE_EPOCHS = 1
REDUCTION_FACTOR = 3
# ASHA's rungs below max_t for max_t 12, grace 1, reduction factor 3 (Ray's _Bracket milestones).
RUNGS = (1, 3, 9)
# The cooldown probes the oracle records at every rung: (fraction of the steps so far, shape).
PROBE_VARIANTS: tuple[tuple[float, str], ...] = (
    (0.1, "linear"),
    (0.2, "linear"),
    (0.5, "linear"),
    (1.0, "linear"),
    (0.2, "1-sqrt"),
)
ORACLE_SEEDS = 3
# The oracle's seeds come from a stream of their own (no search seed's trials share them).
ORACLE_SEED_BASE = 1000
# "Keeps the rank correlation": within this of the best fraction's (mean over workloads, rungs).
FRACTION_TOLERANCE = 0.03
ARMS = ("cooldown", "raw", "random", "tpe")
CACHE = Path(__file__).with_name(".cache")
SECTION = "Schedule-aware search (issue 11)"
OLD_SECTION = "Search efficiency (issue 5)"


@dataclass(frozen=True)
class BenchWorkload:
    key: str
    label: str
    spec: dict[str, Any]
    # Explicit lr_bounds (min, max): one range test each (100 and 300 iterations, seeds 0 and 1,
    # SGD momentum 0.9) suggested max_lr 0.20-0.25 (mlp), 0.15-0.25 (digits cnn), 0.14-0.53
    # (cnn1d) with min_lr = max_lr / 10; these are their medians, rounded.
    bounds: tuple[float, float]


WORKLOADS = {
    w.key: w
    for w in (
        BenchWorkload(
            "mnist1d-mlp",
            "mnist1d (mlp)",
            {"name": "mnist1d", "params": {"model": "mlp"}},
            (0.025, 0.25),
        ),
        BenchWorkload(
            "digits-cnn",
            "digits (cnn)",
            {"name": "digits", "params": {"model": "cnn"}},
            (0.025, 0.25),
        ),
        BenchWorkload(
            "mnist1d-cnn1d",
            "mnist1d (cnn1d)",
            {"name": "mnist1d", "params": {"model": "cnn1d"}},
            (0.02, 0.2),
        ),
    )
}


def variant_label(fraction: float, shape: str) -> str:
    return f"{shape} {fraction:g}"


def oracle_seeds() -> list[int]:
    from lrtune.workers.experiment import trial_seed

    return [trial_seed(ORACLE_SEED_BASE, index) for index in range(ORACLE_SEEDS)]


def search_spaces(workload: BenchWorkload) -> dict[str, dict[str, Any]]:
    """Each policy's search space as JSON: its default, rates derived from the explicit bounds
    exactly as a job with those `lr_bounds` derives them."""
    from lrtune.schemas.jobs import LrBounds, PolicySearch
    from lrtune.workers.experiment import explicit_bounds, raw_space

    low, high = workload.bounds
    bounds = explicit_bounds(LrBounds(min=low, max=high))
    return {p: raw_space(PolicySearch(policy=p), bounds=bounds) for p in POLICIES}


def steps_per_epoch(workload: BenchWorkload) -> int:
    from lrtune.workers.workloads import build_workload

    spec = workload.spec
    return build_workload(spec["name"], _resolved_params(workload), seed=0).steps_per_epoch


def _resolved_params(workload: BenchWorkload) -> dict[str, Any]:
    from lrtune.schemas.workloads import WorkloadSpec

    return dict(WorkloadSpec.model_validate(workload.spec).params)


def _schedule(policy: str, point: dict[str, Any], spe: int, *, epochs: int = EPOCHS) -> Any:
    from lrtune.schemas.search import resolve_schedule

    return resolve_schedule(policy, point, steps_per_epoch=spe, total_steps=spe * epochs)


# --- one trial, in a worker process -------------------------------------------------------


@contextlib.contextmanager
def several_probes(
    variants: Sequence[tuple[float, str]], record: Callable[[tuple[float, str], Any], None]
) -> Iterator[None]:
    """While active, every probe run_trial makes runs once per variant instead (each recorded
    with `record(variant, probe)`). Exact: a probe copies the model and the optimizer and puts
    the RNG states back, so each variant's probe equals a run probing that variant alone."""
    from lrtune.schemas.jobs import Cooldown
    from lrtune.workers import trial as trial_module

    original = trial_module.cooldown_probe

    def probe_each(*args: Any, cooldown: Any, **kwargs: Any) -> Any:
        results = []
        for fraction, shape in variants:
            result = original(*args, cooldown=Cooldown(fraction=fraction, shape=shape), **kwargs)
            record((fraction, shape), result)
            results.append(result)
        return results[0]

    trial_module.cooldown_probe = probe_each
    try:
        yield
    finally:
        trial_module.cooldown_probe = original


def _finite(value: float) -> float:
    # A blown-up trial or probe ranks last: accuracy 0 (NaN would leave the ranking undefined).
    return value if math.isfinite(value) else 0.0


def train_task(task: dict[str, Any]) -> dict[str, Any]:
    """One trial to `epochs` (a worker-process entry point): its metric every epoch, and its
    probes of every variant at the rung epochs when `variants` are given; with `pruner`, not
    used here (in-process only)."""
    from lrtune.schemas.jobs import Cooldown
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trial import Probing, run_trial

    torch.set_num_threads(1)
    config = TrialConfig.model_validate(task["config"])
    variants = [tuple(v) for v in task.get("variants", [])]
    history: list[float] = []
    probes: dict[str, dict[str, dict[str, float]]] = {}
    probe_seconds = 0.0

    def report(result: Any) -> None:
        history.append(_finite(result.metrics[METRIC]))

    def record(variant: tuple[float, str], probe: Any) -> None:
        nonlocal probe_seconds
        probe_seconds += probe.elapsed_s
        probes.setdefault(variant_label(*variant), {})[str(probe.epoch)] = {
            "value": _finite(probe.metrics[METRIC]),
            "cooldown_steps": probe.cooldown_steps,
        }

    started = time.perf_counter()
    probing = None
    if variants:
        fraction, shape = variants[0]
        probing = Probing(
            epochs=frozenset(task["rungs"]),
            cooldown=Cooldown(fraction=fraction, shape=shape),
            on_probe=lambda _probe: None,  # recorded by several_probes, every variant
        )
    with several_probes(variants, record) if variants else contextlib.nullcontext():
        outcome = run_trial(config, report, probing=probing)
    if variants and outcome.status == "completed":
        # The wrapper must have run: every variant probed at every rung.
        expected = {str(r) for r in task["rungs"] if r <= len(history)}
        for fraction, shape in variants:
            got = set(probes.get(variant_label(fraction, shape), {}))
            assert got == expected, f"probes of {variant_label(fraction, shape)}: {got}"
    return {
        "history": history,
        "status": outcome.status,
        "probes": probes,
        "seconds": time.perf_counter() - started,
        "probe_seconds": probe_seconds,
    }


def trial_config(
    workload: BenchWorkload, schedule: Any, *, seed: int, epochs: int = EPOCHS
) -> dict[str, Any]:
    return {
        "workload": workload.spec,
        "optimizer": OPTIMIZER,
        "schedule": schedule.model_dump(mode="json"),
        "epochs": epochs,
        "seed": seed,
        "metric": METRIC,
        "mode": "max",
    }


def final_value(history: Sequence[float]) -> float:
    """A trial's final metric; a diverged trial stops early and its last value stands."""
    return history[-1] if history else 0.0


# --- the oracle -----------------------------------------------------------------------------


def oracle_fingerprint(workload: BenchWorkload, *, grid: int) -> dict[str, Any]:
    return {
        "workload": workload.spec,
        "bounds": list(workload.bounds),
        "optimizer": OPTIMIZER,
        "epochs": EPOCHS,
        "grid": grid,
        "policies": POLICIES,
        "seeds": oracle_seeds(),
        "rungs": list(RUNGS),
        "variants": [list(v) for v in PROBE_VARIANTS],
        "spaces": search_spaces(workload),
    }


def _cache_path(fingerprint: dict[str, Any], key: str) -> Path:
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return CACHE / f"oracle-{key}-{digest}.json"


def run_oracle(workload: BenchWorkload, *, grid: int, pool: Executor, skip: bool) -> dict[str, Any]:
    """The oracle of `workload` from the cache, else trained (and cached)."""
    from lrtune.workers.experiment import grid_points, parse_space

    fingerprint = oracle_fingerprint(workload, grid=grid)
    path = _cache_path(fingerprint, workload.key)
    if path.exists():
        cached = json.loads(path.read_text())
        if cached["fingerprint"] == fingerprint:
            print(f"[oracle] {workload.key}: cached in {path}", flush=True)
            return cached
    if skip:
        raise SystemExit(f"--skip-oracle: no cached oracle for {workload.key} ({path})")
    spe = steps_per_epoch(workload)
    seeds = oracle_seeds()
    configs: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    for policy, raw in search_spaces(workload).items():
        for point in grid_points(parse_space(policy, raw), budget=grid):
            try:
                schedule = _schedule(policy, point, spe)
            except ValueError:
                continue  # e.g. a CLR point whose base_lr lies above its max_lr
            configs.append(
                {"policy": policy, "point": point, "schedule": schedule.model_dump(mode="json")}
            )
            for seed in seeds:
                tasks.append(
                    {
                        "config": trial_config(workload, schedule, seed=seed),
                        "variants": [list(v) for v in PROBE_VARIANTS],
                        "rungs": list(RUNGS),
                    }
                )
    print(f"[oracle] {workload.key}: {len(tasks)} trials ...", flush=True)
    started = time.perf_counter()
    results = list(pool.map(train_task, tasks, chunksize=4))
    seconds = time.perf_counter() - started
    for index, config in enumerate(configs):
        config["seeds"] = results[index * len(seeds) : (index + 1) * len(seeds)]
    oracle = {
        "fingerprint": fingerprint,
        "steps_per_epoch": spe,
        "configs": configs,
        "seconds": seconds,
        "load": os.getloadavg()[0],
    }
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(oracle))
    print(f"[oracle] {workload.key}: {seconds:.0f} s, cached in {path}", flush=True)
    return oracle


def oracle_best(oracle: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    best = max(oracle["configs"], key=lambda c: _config_mean(c))
    return _config_mean(best), best


def _config_mean(config: dict[str, Any]) -> float:
    return statistics.mean(final_value(s["history"]) for s in config["seeds"])


def oracle_epochs(oracle: dict[str, Any]) -> int:
    return sum(len(s["history"]) for c in oracle["configs"] for s in c["seeds"])


def _at(seed_result: dict[str, Any], rung: int, judge: str | None) -> float:
    """A trial's value at `rung`: its raw metric (judge None) or its probe's. A trial that
    diverged before the rung carries its last value forward (that is what it ended with); one
    without a probe there (diverged at the rung) is judged by its raw value."""
    history = seed_result["history"]
    raw = history[min(rung, len(history)) - 1] if history else 0.0
    if judge is None:
        return raw
    probe = seed_result["probes"].get(judge, {}).get(str(rung))
    return probe["value"] if probe is not None else raw


def correlations(oracle: dict[str, Any]) -> dict[str | None, dict[int, tuple[float, float]]]:
    """Spearman of each judge's value at each rung with the 3-seed final mean: (per seed,
    of the 3-seed means). Judges: None (the raw metric), each probe variant, and "final" (the
    final value itself, per seed: the noise ceiling of a single trial, its own seed included)."""
    from scipy.stats import spearmanr

    judges: list[str | None] = [None, *(variant_label(*v) for v in PROBE_VARIANTS)]
    finals = [_config_mean(c) for c in oracle["configs"]]
    table: dict[str | None, dict[int, tuple[float, float]]] = {}
    for judge in judges:
        table[judge] = {}
        for rung in RUNGS:
            per_seed_x, per_seed_y, means = [], [], []
            for config, final in zip(oracle["configs"], finals, strict=True):
                values = [_at(s, rung, judge) for s in config["seeds"]]
                per_seed_x += values
                per_seed_y += [final] * len(values)
                means.append(statistics.mean(values))
            table[judge][rung] = (
                float(spearmanr(per_seed_x, per_seed_y).statistic),
                float(spearmanr(means, finals).statistic),
            )
    per_seed_final = [final_value(s["history"]) for c in oracle["configs"] for s in c["seeds"]]
    repeated = [f for f in finals for _ in range(ORACLE_SEEDS)]
    ceiling = float(spearmanr(per_seed_final, repeated).statistic)
    table["final"] = {EPOCHS: (ceiling, 1.0)}
    return table


def kept_best(oracle: dict[str, Any], judge: str | None, *, rung: int, best: int = 3) -> float:
    """ASHA's cut as a test: of the `best` configurations by 3-seed final mean, how many are in
    the top 1/REDUCTION_FACTOR at `rung` when each configuration is judged by one trial (one
    seed); the mean over the seeds."""
    configs = oracle["configs"]
    order = sorted(range(len(configs)), key=lambda i: _config_mean(configs[i]), reverse=True)
    top = set(order[:best])
    keep = max(1, len(configs) // REDUCTION_FACTOR)
    counts = []
    for seed in range(ORACLE_SEEDS):
        ranked = sorted(
            range(len(configs)),
            key=lambda i: _at(configs[i]["seeds"][seed], rung, judge),
            reverse=True,
        )
        counts.append(len(top & set(ranked[:keep])))
    return statistics.mean(counts)


def probe_cost(oracle: dict[str, Any], label: str) -> float:
    """Mean probe epochs per trial probed at every rung (cooldown steps / steps per epoch)."""
    spe = oracle["steps_per_epoch"]
    totals = [
        sum(p["cooldown_steps"] for p in s["probes"].get(label, {}).values()) / spe
        for c in oracle["configs"]
        for s in c["seeds"]
        if len(s["probes"].get(label, {})) == len(RUNGS)
    ]
    return statistics.mean(totals) if totals else math.nan


def recommend_fraction(
    tables: dict[str, dict[str | None, dict[int, tuple[float, float]]]],
) -> tuple[float, dict[float, float]]:
    """The cheapest linear fraction whose per-seed Spearman, averaged over the workloads and
    rungs, is within FRACTION_TOLERANCE of the best linear fraction's; and every average."""
    fractions = sorted(f for f, shape in PROBE_VARIANTS if shape == "linear")
    averages = {
        f: statistics.mean(
            table[variant_label(f, "linear")][rung][0]
            for table in tables.values()
            for rung in RUNGS
        )
        for f in fractions
    }
    best = max(averages.values())
    chosen = next(f for f in fractions if averages[f] >= best - FRACTION_TOLERANCE)
    return chosen, averages


def _per_rung(tables: dict[str, dict[str | None, Any]]) -> str:
    """Each rung's mean per-trial Spearman over the workloads, by linear fraction."""
    fractions = sorted(f for f, shape in PROBE_VARIANTS if shape == "linear")
    parts = []
    for rung in RUNGS:
        means = {
            f: statistics.mean(t[variant_label(f, "linear")][rung][0] for t in tables.values())
            for f in fractions
        }
        raw = statistics.mean(t[None][rung][0] for t in tables.values())
        cells = ", ".join(f"{f:g}: {v:.2f}" for f, v in means.items())
        parts.append(f"rung {rung}: raw {raw:.2f}, {cells}")
    return " (per rung, mean over the workloads: " + "; ".join(parts) + ")"


def correlation_lines(
    workload: BenchWorkload, oracle: dict[str, Any], table: dict[str | None, Any]
) -> list[str]:
    best_mean, best = oracle_best(oracle)
    diverged = sum(s["status"] == "diverged" for c in oracle["configs"] for s in c["seeds"])
    n = len(oracle["configs"])
    counts = ", ".join(f"{p} {sum(c['policy'] == p for c in oracle['configs'])}" for p in POLICIES)
    lines = [
        f"Oracle: {n} configurations ({counts}) "
        f"x {ORACLE_SEEDS} seeds = {n * ORACLE_SEEDS} trials, {oracle_epochs(oracle)} epochs "
        f"({diverged} diverged), trained with every probe in {oracle['seconds']:.0f} s "
        f"(load {oracle['load']:.1f}). Best: {best['policy']} at "
        f"{100 * best_mean:.2f}% (mean of 3 seeds), `{json.dumps(best['schedule'])}`.",
        "",
        f"Spearman with the 3-seed final mean, per trial ({n * ORACLE_SEEDS} pairs; in "
        f"parentheses: of the 3-seed means, {n} configurations):",
        "",
        "| judged by | probe epochs per trial (rungs 1, 3, 9) | rung 1 | rung 3 | rung 9 "
        "| best 3 kept in the top third at rung 3 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for judge, values in table.items():
        if judge == "final":
            continue
        name = "raw metric" if judge is None else f"cooldown probe, {judge}"
        cost = "0" if judge is None else f"{probe_cost(oracle, judge):.1f}"
        cells = " | ".join(f"{values[r][0]:.2f} ({values[r][1]:.2f})" for r in RUNGS)
        kept = kept_best(oracle, judge, rung=3)
        lines.append(f"| {name} | {cost} | {cells} | {kept:.1f} of 3 |")
    lines += [
        "",
        f"Noise ceiling: the final value of one trial against its configuration's 3-seed mean "
        f"(its own seed included): {table['final'][EPOCHS][0]:.2f}. Best 3 kept: the 3 best "
        "configurations by final mean found in the top third of a rung-3 cut by one trial each "
        "(mean over the 3 seeds).",
        "",
    ]
    return lines


# --- the search arms ------------------------------------------------------------------------


@dataclass
class ArmRun:
    """One arm with one search seed: its recommended schedule and what it spent."""

    arm: str
    seed: int
    policy: str
    schedule: Any
    epochs: float
    trials: int
    seconds: float
    detail: dict[str, float] = field(default_factory=dict)
    pruned: int = 0
    on_oracle_seeds: float = math.nan


def job_spec(
    workload: BenchWorkload,
    *,
    judge: str,
    cooldown: tuple[float, str] | None,
    trials: int,
    seed: int,
    grace: int = GRACE_EPOCHS,
) -> Any:
    from lrtune.schemas.jobs import JobSpec

    stopping: dict[str, Any] = {
        "kind": "asha",
        "grace_epochs": grace,
        "reduction_factor": REDUCTION_FACTOR,
        "judge": judge,
    }
    if judge == "cooldown" and cooldown is not None:
        stopping["cooldown"] = {"fraction": cooldown[0], "shape": cooldown[1]}
    low, high = workload.bounds
    return JobSpec.model_validate(
        {
            "name": f"bench_search {workload.key} {judge} seed {seed}",
            "workload": workload.spec,
            "optimizer": OPTIMIZER,
            "metric": {"name": METRIC, "mode": "max"},
            "policies": POLICIES,
            "lr_bounds": {"min": low, "max": high},
            "budget": {"epochs": EPOCHS, "trials_per_policy": trials, "max_concurrent_trials": 2},
            "early_stopping": stopping,
            "search": {"algorithm": "random", "seed": seed},
            "confirm": {"top_k": 1, "seeds": ORACLE_SEEDS},
        }
    )


def run_lrtune(
    workload: BenchWorkload,
    *,
    judge: str,
    cooldown: tuple[float, str] | None,
    trials: int,
    seed: int,
    spe: int,
    grace: int = GRACE_EPOCHS,
) -> ArmRun:
    """The job through the real worker: its winner and the epochs it spent."""
    from lrtune.service.recommendations import job_recommendation

    spec = job_spec(workload, judge=judge, cooldown=cooldown, trials=trials, seed=seed, grace=grace)
    with worker_job(spec, num_cpus=2) as (store, done, seconds):
        assert done.status == "succeeded", done.error
        same = json.loads(json.dumps(search_spaces(workload)))
        assert done.search_spaces == same, "the job searched other spaces than the oracle"
        listed = store.list_trials(job_id=done.id, limit=10_000).items
        probe_steps = 0
        probes = 0
        for trial in listed:
            found = store.list_trial_probes(trial.id)
            probes += len(found)
            probe_steps += sum(p.cooldown_steps for p in found)
        winner = job_recommendation(store, job_id=done.id, tenant_id=None).winner
        assert winner is not None
    search = sum(t.epochs_done for t in listed if t.phase == "search")
    confirm = sum(t.epochs_done for t in listed if t.phase == "confirm")
    probe_epochs = probe_steps / spe
    if judge == "cooldown":
        assert probes > 0, "a cooldown-judged job recorded no probes"
    return ArmRun(
        arm=judge,
        seed=seed,
        policy=winner.policy,
        schedule=winner.schedule,
        epochs=search + confirm + probe_epochs,
        trials=sum(t.phase == "search" for t in listed),
        seconds=seconds,
        detail={"search": search, "probes": probe_epochs, "confirm": confirm},
        pruned=sum(t.status == "pruned" for t in listed),
    )


def run_random(
    workload: BenchWorkload, *, n_trials: int, seed: int, spe: int, pool: Executor
) -> ArmRun:
    """Random search to the full 12 epochs: the i-th trial of each policy is lrtune's own
    i-th random point and seed (round robin over the policies); the best final value wins."""
    from lrtune.workers.experiment import parse_space, random_point, trial_seed

    spaces = {p: parse_space(p, raw) for p, raw in search_spaces(workload).items()}
    picks: list[tuple[str, Any]] = []
    tasks = []
    for i in range(n_trials):
        policy, index = POLICIES[i % len(POLICIES)], i // len(POLICIES)
        point = random_point(spaces[policy], base_seed=seed, index=index)
        try:
            schedule = _schedule(policy, point, spe)
        except ValueError:
            continue
        picks.append((policy, schedule))
        tasks.append({"config": trial_config(workload, schedule, seed=trial_seed(seed, index))})
    started = time.perf_counter()
    results = list(pool.map(train_task, tasks))
    seconds = time.perf_counter() - started
    finals = [final_value(r["history"]) for r in results]
    best = max(range(len(finals)), key=finals.__getitem__)
    epochs = sum(len(r["history"]) for r in results)
    return ArmRun(
        arm="random",
        seed=seed,
        policy=picks[best][0],
        schedule=picks[best][1],
        epochs=epochs,
        trials=len(tasks),
        seconds=seconds,
        detail={"search": epochs},
    )


def run_tpe(
    workload: BenchWorkload,
    *,
    trials: int,
    seed: int,
    spe: int,
    epochs: int = EPOCHS,
    max_epochs: int | None = None,
) -> ArmRun:
    """Optuna TPE with its MedianPruner over all policies: the policy of trial i fixed round
    robin (every policy gets `trials`), its parameters sampled by TPE from that policy's space
    (the service's domains as Optuna distributions); pruned when `should_prune()` says so.
    Each trial trains `epochs`; with `max_epochs` the study stops once it has trained that many
    epochs in all (a comparison at equal epochs)."""
    import optuna
    from lrtune.schemas.search import Choice, IntRange, LogUniform, Uniform
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.experiment import decode_point, parse_space, trial_seed
    from lrtune.workers.trial import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = {p: parse_space(p, raw) for p, raw in search_spaces(workload).items()}
    counts = dict.fromkeys(POLICIES, 0)
    epochs_run = 0
    schedules: dict[int, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs_run
        policy = trial.suggest_categorical("policy", POLICIES)
        space = spaces[policy]
        encoded: dict[str, Any] = {}
        for key, domain in space.domains.items():
            name = f"{policy}.{key}"
            if isinstance(domain, Choice):
                encoded[key] = trial.suggest_categorical(name, list(range(len(domain.choice))))
            elif isinstance(domain, LogUniform):
                encoded[key] = trial.suggest_float(name, *domain.loguniform, log=True)
            elif isinstance(domain, Uniform):
                encoded[key] = trial.suggest_float(name, *domain.uniform)
            else:
                assert isinstance(domain, IntRange)
                encoded[key] = trial.suggest_int(name, *domain.int)
        point = decode_point(space, encoded)
        index = counts[policy]
        counts[policy] += 1
        try:
            schedule = _schedule(policy, point, spe, epochs=epochs)
        except ValueError as error:
            raise optuna.TrialPruned(str(error)) from error
        schedules[trial.number] = (policy, schedule)
        config = TrialConfig.model_validate(
            trial_config(workload, schedule, seed=trial_seed(seed, index), epochs=epochs)
        )
        history: list[float] = []

        def report(result: Any) -> bool:
            nonlocal epochs_run
            epochs_run += 1
            value = _finite(result.metrics[METRIC])
            history.append(value)
            trial.report(value, result.epoch)
            # should_prune() may answer numpy's bool, and run_trial stops on `True` only.
            return bool(trial.should_prune())

        outcome = run_trial(config, report)
        if outcome.status == "stopped":
            raise optuna.TrialPruned()
        return final_value(history)

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    total = trials * len(POLICIES)
    for i in range(total):
        study.enqueue_trial({"policy": POLICIES[i % len(POLICIES)]}, skip_if_exists=False)

    def enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if max_epochs is not None and epochs_run >= max_epochs:
            study.stop()

    started = time.perf_counter()
    study.optimize(objective, n_trials=total, callbacks=[enough])
    seconds = time.perf_counter() - started
    policy, schedule = schedules[study.best_trial.number]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return ArmRun(
        arm="tpe",
        seed=seed,
        policy=policy,
        schedule=schedule,
        epochs=epochs_run,
        trials=len(study.trials),
        seconds=seconds,
        detail={"search": epochs_run, "best": _best_value(study)},
        pruned=pruned,
    )


def _best_value(study: Any) -> float:
    """The study's best trial's value; NaN when no trial completed."""
    try:
        return float(study.best_value)
    except ValueError:
        return math.nan


def retrain(workload: BenchWorkload, schedule: Any, *, pool: Executor) -> float:
    """The schedule on the oracle's 3 seeds: the mean final value."""
    tasks = [{"config": trial_config(workload, schedule, seed=s)} for s in oracle_seeds()]
    return statistics.mean(final_value(r["history"]) for r in pool.map(train_task, tasks))


ARM_NAMES = {
    "cooldown": "lrtune, ASHA judged by cooldown",
    "raw": "lrtune, ASHA judged raw (Ray Tune's ASHA)",
    "random": "random search, no early stopping",
    "tpe": "Optuna TPE + MedianPruner",
}


def arm_lines(
    arms: dict[str, list[ArmRun]],
    *,
    best_mean: float,
    oracle_total: int,
    oracle_seconds: float,
    oracle_load: float,
    cooldown: tuple[float, str],
    trials: int,
) -> list[str]:
    # The grid a user would run instead: the oracle's, one seed (its wall-clock over its seeds;
    # its probes included, so the grid is, if anything, slower than a plain one).
    grid_seconds = oracle_seconds / ORACLE_SEEDS
    lines = [
        f"Arms: {trials} trials per policy ({trials * len(POLICIES)} in all) for lrtune and "
        "TPE; lrtune confirms each policy's best on 3 seeds (18 trials more); random search "
        "gets the cooldown arm's epochs. Gap: the oracle's best mean minus the recommendation's "
        "mean on the oracle's 3 seeds, in accuracy points, over the search seeds "
        f"({', '.join(str(r.seed) for r in next(iter(arms.values())))}). Wall: the arm's "
        "seconds (a job: through the worker, confirmation included; bounds given, no range "
        "test) against "
        f"the grid's, the oracle's grid on one seed: {grid_seconds:.0f} s for "
        f"{oracle_total // ORACLE_SEEDS} epochs ({oracle_seconds:.0f} s for its "
        f"{ORACLE_SEEDS} seeds, at load {oracle_load:.1f} when it was trained and cached).",
        "",
        "| arm | gap: mean | gap: worst | recommended | epochs (mean) | of the oracle's "
        "| search / probes / confirm | trials (pruned) | wall (mean) | wall vs grid |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for arm, runs in arms.items():
        gaps = [100 * (best_mean - r.on_oracle_seeds) for r in runs]
        epochs = statistics.mean(r.epochs for r in runs)
        parts = " / ".join(
            f"{statistics.mean(r.detail.get(k, 0.0) for r in runs):.0f}"
            for k in ("search", "probes", "confirm")
        )
        name = ARM_NAMES[arm]
        if arm == "cooldown":
            name += f" ({variant_label(*cooldown)})"
        lines.append(
            f"| {name} | {statistics.mean(gaps):.2f} | {max(gaps):.2f} | "
            f"{', '.join(r.policy for r in runs)} | {epochs:.0f} | "
            f"{100 * epochs / oracle_total:.1f}% | {parts} | "
            f"{statistics.mean(r.trials for r in runs):.0f} "
            f"({statistics.mean(r.pruned for r in runs):.0f}) | "
            f"{statistics.mean(r.seconds for r in runs):.0f} s | "
            f"{statistics.mean(r.seconds for r in runs) / grid_seconds:.2f}x |"
        )
    lines.append("")
    return lines


def target_lines(
    workload: BenchWorkload,
    table: dict[str | None, Any] | None,
    arms: dict[str, list[ArmRun]],
    *,
    best_mean: float | None,
    oracle_total: int | None,
    cooldown: tuple[float, str],
) -> tuple[list[str], list[bool]]:
    """The three targets of issue 11 for one workload, each met or by how much not."""
    lines: list[str] = []
    met: list[bool] = []
    judged = variant_label(*cooldown)
    if table is not None and judged in table:
        raw3, probe3 = table[None][3][0], table[judged][3][0]
        if raw3 >= 0.5:
            lines.append(
                f"- (a) rung 3: raw Spearman {raw3:.2f} is not below 0.5, so no bar applies "
                f"(cooldown {judged}: {probe3:.2f})."
            )
        else:
            ok = probe3 >= 0.75
            met.append(ok)
            lines.append(
                f"- (a) rung 3: raw {raw3:.2f} < 0.5; cooldown {judged} {probe3:.2f} "
                + ("≥ 0.75: met." if ok else f"< 0.75: NOT met, by {0.75 - probe3:.2f}.")
            )
    if "cooldown" in arms and best_mean is not None and oracle_total:
        runs = arms["cooldown"]
        gap = statistics.mean(100 * (best_mean - r.on_oracle_seeds) for r in runs)
        share = statistics.mean(r.epochs for r in runs) / oracle_total
        ok = gap <= 0.5 and share <= 0.35
        met.append(ok)
        misses = []
        if gap > 0.5:
            misses.append(f"the gap by {gap - 0.5:.2f} points")
        if share > 0.35:
            misses.append(f"the epochs by {100 * (share - 0.35):.1f} points of the oracle's")
        lines.append(
            f"- (b) lrtune (cooldown) {gap:.2f} points behind the oracle's best using "
            f"{100 * share:.1f}% of its epochs (bar: ≤ 0.5 points, ≤ 35%): "
            + ("met." if ok else f"NOT met ({'; '.join(misses)}).")
        )
        peers = [p for p in ("raw", "tpe") if p in arms]
        if peers:
            verdicts = []
            all_ok = len(peers) == 2
            for peer in peers:
                peer_gap = statistics.mean(
                    100 * (best_mean - r.on_oracle_seeds) for r in arms[peer]
                )
                ratio = statistics.mean(r.epochs for r in runs) / statistics.mean(
                    r.epochs for r in arms[peer]
                )
                ahead = gap < peer_gap
                equal = ratio <= 1.05
                all_ok = all_ok and ahead and equal
                verdicts.append(
                    f"{peer} gap {peer_gap:.2f} ({'ahead' if ahead else 'behind'} by "
                    f"{abs(peer_gap - gap):.2f} points), with {ratio:.2f}x its epochs"
                )
            met.append(all_ok)
            verdict = "met" if all_ok else "NOT met"
            if not all_ok:
                verdict += " (ahead means a smaller mean gap at ≤ 1.05x the peer's epochs)"
            lines.append(
                f"- (c) lrtune (cooldown) against its peers: {'; '.join(verdicts)}: {verdict}."
            )
    return lines, met


# --- the whole run --------------------------------------------------------------------------


def _parse_cooldown(text: str) -> tuple[float, str]:
    fraction, _, shape = text.partition(":")
    return float(fraction), shape or "linear"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="search seeds")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=[*ARMS, "none"],
        default=list(ARMS),
        help="search arms to run ('none': the oracle's correlations only)",
    )
    parser.add_argument("--skip-oracle", action="store_true", help="use the cached oracle only")
    parser.add_argument("--grid", type=int, default=12, help="oracle grid points per policy")
    parser.add_argument("--trials", type=int, default=20, help="search trials per policy")
    parser.add_argument(
        "--cooldown",
        type=_parse_cooldown,
        default=None,
        help="FRACTION[:SHAPE] of the cooldown arm (default: the oracle's recommendation)",
    )
    parser.add_argument(
        "--grace",
        type=int,
        default=GRACE_EPOCHS,
        help="ASHA grace epochs of the lrtune arms (1: rungs 1, 3, 9; 3: rungs 3, 9)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes for in-process training")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    arms_wanted = [a for a in ARMS if a in args.arms]
    # Another grace is an alternative to the setting: its own section, arms only.
    alternative = args.grace != GRACE_EPOCHS
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    workloads = [WORKLOADS[k] for k in args.workloads]

    import multiprocessing

    pool = ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")
    )
    stage_seconds: dict[str, float] = {}
    with pool:
        started = time.perf_counter()
        load_before = os.getloadavg()
        oracles = {
            w.key: run_oracle(w, grid=args.grid, pool=pool, skip=args.skip_oracle)
            for w in workloads
        }
        # The oracle's training time as measured when it ran (this run may have read the cache).
        for key, oracle in oracles.items():
            stage_seconds[f"oracle {key}"] = oracle["seconds"]
        print(f"[oracle] ready in {time.perf_counter() - started:.0f} s", flush=True)
        tables = {key: correlations(o) for key, o in oracles.items()}
        fraction, averages = recommend_fraction(tables)
        cooldown = args.cooldown or (fraction, "linear")
        recommendation = [
            "Cooldown fraction (linear), per-trial Spearman averaged over "
            f"{len(tables)} workload(s) x rungs {', '.join(map(str, RUNGS))}: "
            + ", ".join(f"{f:g}: {v:.3f}" for f, v in averages.items())
            + f". Cheapest within {FRACTION_TOLERANCE} of the best: **{fraction:g}**"
            + _per_rung(tables)
            + (
                f" (the cooldown arm ran {variant_label(*cooldown)}, as asked)."
                if args.cooldown and args.cooldown != (fraction, "linear")
                else " (the default; the cooldown arm ran it)."
            ),
            "",
        ]
        print("\n".join(recommendation), flush=True)

        sections: list[str] = []
        all_met: list[bool] = []
        for workload in workloads:
            oracle = oracles[workload.key]
            table = tables[workload.key]
            best_mean, _best = oracle_best(oracle)
            total = oracle_epochs(oracle)
            spe = oracle["steps_per_epoch"]
            lines = [f"### {workload.label}", ""]
            low, high = workload.bounds
            lines += [
                f"Params {json.dumps(_resolved_params(workload))}, {spe} steps per epoch; "
                f"lr_bounds min {low:g}, max {high:g}.",
                "",
            ]
            if alternative:
                lines += [f"Oracle's best: {100 * best_mean:.2f}%, {total} epochs (see above).", ""]
            else:
                lines += correlation_lines(workload, oracle, table)
            print("\n".join(lines), flush=True)
            arms: dict[str, list[ArmRun]] = {}
            arm_started = time.perf_counter()
            for seed in args.seeds if arms_wanted else []:
                for arm in arms_wanted:
                    t0 = time.perf_counter()
                    if arm in ("cooldown", "raw"):
                        run = run_lrtune(
                            workload,
                            judge=arm,
                            cooldown=cooldown if arm == "cooldown" else None,
                            trials=args.trials,
                            seed=seed,
                            spe=spe,
                            grace=args.grace,
                        )
                    elif arm == "random":
                        reference = next(
                            (
                                arms[a][-1]
                                for a in ("cooldown", "raw")
                                if a in arms and arms[a][-1].seed == seed
                            ),
                            None,
                        )
                        budget = reference.epochs if reference is not None else 0.3 * total
                        run = run_random(
                            workload,
                            n_trials=max(len(POLICIES), round(budget / EPOCHS)),
                            seed=seed,
                            spe=spe,
                            pool=pool,
                        )
                    else:
                        run = run_tpe(workload, trials=args.trials, seed=seed, spe=spe)
                    run.on_oracle_seeds = retrain(workload, run.schedule, pool=pool)
                    arms.setdefault(arm, []).append(run)
                    print(
                        f"[{workload.key} {arm} seed {seed}] {run.policy} "
                        f"{100 * run.on_oracle_seeds:.2f}% on the oracle's seeds "
                        f"(best {100 * best_mean:.2f}%), {run.epochs:.0f} epochs, "
                        f"{run.seconds:.0f} s ({time.perf_counter() - t0:.0f} s with retraining)",
                        flush=True,
                    )
            if arms:
                stage_seconds[f"arms {workload.key}"] = time.perf_counter() - arm_started
                lines += arm_lines(
                    arms,
                    best_mean=best_mean,
                    oracle_total=total,
                    oracle_seconds=oracle["seconds"],
                    oracle_load=oracle["load"],
                    cooldown=cooldown,
                    trials=args.trials,
                )
            checks, met = target_lines(
                workload, table, arms, best_mean=best_mean, oracle_total=total, cooldown=cooldown
            )
            all_met += met
            lines += ["Targets:", "", *checks, ""]
            print("\n".join(lines[-len(checks) - 3 :]), flush=True)
            sections += lines

    load_after = os.getloadavg()
    header = [
        f"Machine: {_machine()}; 1-minute load average {load_before[0]:.1f} at the start, "
        f"{load_after[0]:.1f} at the end (other work shares the 2 cores; wall-clock only "
        "indicative).",
        "",
        f"{EPOCHS} epochs, SGD momentum 0.9, weight decay 5e-4, {METRIC} (max); policies "
        f"{', '.join(POLICIES)}, spaces derived from explicit lr_bounds (per workload below) "
        f"exactly as a job derives them. Oracle: a grid of {args.grid} per policy "
        f"(`grid_points`), 3 seeds each (seeds {', '.join(map(str, oracle_seeds()))}), no early "
        f"stopping, probes at the rungs {', '.join(map(str, RUNGS))} of ASHA (max_t 12, grace 1, "
        "rf 3) of every variant in one training per trial. The lrtune arms' ASHA: grace "
        f"{args.grace}, rf 3. Wall-clock of the lrtune arms: 2 "
        "concurrent Ray trials, checkpoints and SQL included; random search: "
        f"{args.jobs} processes; TPE: 1 process.",
        "",
        *recommendation,
        "Stage times (the oracle's when it was trained, every probe variant included): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items())
        + ".",
        "",
    ]
    command = " ".join(sys.argv[1:])
    body = "\n".join(header + sections) + (
        f"\nReproduce: `nice -n 5 .venv/bin/python -m bench.bench_search {command}` (the oracle "
        "is cached in bench/.cache/; `--skip-oracle` insists on it).\n"
    )
    print("\n".join(header[:2] + header[-2:]))
    if args.write:
        from bench.results_file import write_section

        if alternative:
            write_section(f"{SECTION}, alternative: ASHA grace {args.grace}", body)
        else:
            write_section(SECTION, body)
            _mark_superseded()


def _mark_superseded() -> None:
    """One line at the top of the issue-5 section: kept as history, superseded by this one."""
    from bench.results_file import RESULTS

    text = RESULTS.read_text()
    heading = f"## {OLD_SECTION}\n\n"
    note = (
        f'Superseded by "{SECTION}" below (same question, fixed spaces, four arms, three '
        "workloads); kept as history, its command is that of an older bench_search.py.\n\n"
    )
    if heading in text and note not in text:
        RESULTS.write_text(text.replace(heading, heading + note, 1))


def _machine() -> str:
    from bench.results_file import machine_line

    return machine_line()


if __name__ == "__main__":
    main()
