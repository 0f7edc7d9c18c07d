"""Search that picks right (issue 25): the benchmark that decides lrtune's default search, every
arm judged on seeds that none of them searched with.

Workloads (`--workloads`): mnist1d mlp, digits cnn and mnist1d cnn1d (12 epochs, SGD momentum
0.9, val_accuracy), and charlm (12 epochs, AdamW, cosine / wsd / inverse_sqrt / one_cycle /
fixed with warmup, val_loss); see bench/search_workloads.py. Stages, per workload, each cached
task by task under bench/.cache/search/ (out of git), each resumable and runnable alone:

1. `oracle` (bench/search_oracle.py): a grid of 16 points per policy whose peak rates reach 4x
   the bounds' max, 3 seeds each, trained to the end with the raw metric and lrtune's default
   cooldown probe at epochs 1, 3 and 9, and as the whole schedule compressed to 1, 2, 3 and 4
   epochs; and lrtune's range test on 3 seeds.
2. `arms` (bench/search_arms.py): every arm, 3 search seeds, at 25% of the reference epochs
   (12 points per policy x the policies x 3 seeds x 12 epochs: 2,592 on mnist1d mlp).
3. `fresh`: every arm's recommendation and the oracle's 5 best configurations trained on 5 fresh
   seeds (no arm searched with them, the oracle did not use them).

Estimated stage times alone on the 2-core machine, from one oracle configuration's trainings
timed per workload (`seconds_per_epoch` in bench/search_workloads.py: build and probes
included) and 30 s per lrtune job besides; each stage prints its own estimate first, from its
cache's measured seconds per epoch once it has some:

| workload | oracle | arms | fresh |
| --- | ---: | ---: | ---: |
| mnist1d mlp | 6 min | 15 min | 1 min |
| digits cnn | 7 min | 17 min | 2 min |
| mnist1d cnn1d | 6 min | 15 min | 1 min |
| charlm | 39 min | 70 min | 10 min |

About 3.2 hours in all; about 20 minutes more once the horizon-halving arm runs.

`--write` writes the section "Search that picks right" of bench/RESULTS.md from whatever is
cached, saying what is missing (bench/search_report.py). `--tiny` is the smoke run: one grid
point per policy, 3 epochs, one seed of each kind, every arm that can run, cached apart
(bench/.cache/search/tiny/), never written to RESULTS.md.

    nice -n 10 .venv/bin/python -m bench.bench_search --tiny                     # a few minutes
    nice -n 10 .venv/bin/python -m bench.bench_search --stage oracle --workloads mnist1d-mlp
    nice -n 10 .venv/bin/python -m bench.bench_search --stage arms --workloads mnist1d-mlp
    nice -n 10 .venv/bin/python -m bench.bench_search --stage fresh --write
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from bench.search_arms import (
    ARM_NAMES,
    ARMS,
    LRTUNE_ARMS,
    POOL_ARMS,
    ArmRun,
    ArmUnavailable,
    job_spec,
    run_arm,
    run_peer,
)
from bench.search_oracle import (
    PROBE,
    Oracle,
    OraclePlan,
    best_rate_by_horizon,
    correlations,
    ladder_rows,
    plan_oracle,
    range_finding,
    range_test_task,
    steps_per_epoch,
)
from bench.search_report import (
    ORACLE_TOP,
    Gap,
    fmt_value,
    gap,
    summarize_targets,
    table,
    unit,
    versus,
)
from bench.search_training import make_task, measured_seconds_per_epoch, train_all
from bench.search_workloads import (
    FULL,
    TINY,
    WORKLOADS,
    BenchWorkload,
    Scale,
    arm_epochs,
    budget_epochs,
    digest,
    fresh_seeds,
    oracle_seeds,
    reference_epochs,
    search_spaces,
)
from bench.stage_cache import StageCache

STAGES = ("oracle", "arms", "fresh")
SECTION = "Search that picks right"
CACHE = Path(__file__).with_name(".cache") / "search"
# Seconds a job through the worker spends besides training (Ray, SQL, checkpoints), per job.
JOB_OVERHEAD_S = 30.0


def cache_for(stage: str, workload: BenchWorkload, scale: Scale) -> StageCache:
    return StageCache(CACHE / scale.name / f"{stage}-{workload.key}.jsonl")


def load_oracle(workload: BenchWorkload, scale: Scale, *, spe: int) -> tuple[Oracle, StageCache]:
    plan = plan_oracle(workload, scale, spe=spe)
    cache = cache_for("oracle", workload, scale)
    range_tests = [cache.get(k) for k in plan.range_tasks if k in cache]
    results = {k: cache.get(k) for k in plan.tasks if k in cache}
    return Oracle(plan, results, range_tests), cache


# --- the stages -----------------------------------------------------------------------------


def stage_oracle(plan: OraclePlan, cache: StageCache, *, pool: Executor, jobs: int) -> None:
    workload = plan.workload
    label = f"oracle {workload.key}"
    with cache.session():
        started = time.perf_counter()
        tests = {
            k: pool.submit(range_test_task, t)
            for k, t in plan.range_tasks.items()
            if k not in cache
        }
        for key, future in tests.items():
            cache.add(key, future.result())
        train_all(
            plan.tasks,
            cache=cache,
            pool=pool,
            label=label,
            seconds_per_epoch=workload.seconds_per_epoch,
            jobs=jobs,
        )
    print(f"[{label}] {time.perf_counter() - started:.0f} s ({cache.seconds:.0f} s in all)")


def arm_key(workload: BenchWorkload, scale: Scale, arm: str, seed: int) -> str:
    return digest(
        {
            "arm": arm,
            "seed": seed,
            "workload": workload.spec,
            "optimizer": workload.optimizer,
            "policies": list(workload.policies),
            "overrides": workload.overrides,
            "bounds": list(workload.bounds),
            # The spaces the bounds derive: a new derivation runs the arms again.
            "spaces": search_spaces(workload),
            "epochs": budget_epochs(workload, scale),
            "target": arm_epochs(workload, scale),
        }
    )


def unavailable(workload: BenchWorkload, arm: str) -> str | None:
    """Why `arm` cannot run here, or None."""
    try:
        if arm in LRTUNE_ARMS:
            job_spec(workload, arm=arm, trials=1, seed=0, epochs=workload.epochs)
        elif arm == "smac":
            import smac  # noqa: F401
    except ArmUnavailable as error:
        return str(error)
    except ImportError as error:
        return f"smac is not installed ({error}): pip install -e '.[dev]'"
    return None


def arm_runs(workload: BenchWorkload, scale: Scale, cache: StageCache, arm: str) -> list[ArmRun]:
    runs = []
    for seed in scale.search_seeds:
        found = cache.get(arm_key(workload, scale, arm, seed))
        if found is not None:
            runs.append(ArmRun(**found))
    return runs


def seconds_per_epoch(workload: BenchWorkload, scale: Scale) -> float:
    """As the workload's oracle measured it, else the prior."""
    cache = cache_for("oracle", workload, scale)
    measured = measured_seconds_per_epoch(
        [r for r in cache.results.values() if "seconds" in r and "epochs" in r]
    )
    return measured or workload.seconds_per_epoch


def estimate_arm_seconds(arm: str, target: int, rate: float, *, jobs: int) -> float:
    """An lrtune job trains 2 trials at once, random search in the pool; the other peers run
    one process each, `jobs` of them at once."""
    if arm in LRTUNE_ARMS:
        return target * rate / 2 + JOB_OVERHEAD_S
    return target * rate / (2 if arm == "random" else jobs)


def stage_arms(
    workload: BenchWorkload,
    scale: Scale,
    arms: list[str],
    *,
    spe: int,
    pool: Executor,
    jobs: int,
) -> None:
    cache = cache_for("arms", workload, scale)
    target = arm_epochs(workload, scale)
    reasons = {arm: unavailable(workload, arm) for arm in arms}
    for arm, reason in reasons.items():
        if reason:
            print(f"[arms {workload.key}] {arm} cannot run: {reason}", flush=True)
    todo = [
        (seed, arm)
        for seed in scale.search_seeds
        for arm in arms
        if not reasons[arm] and arm_key(workload, scale, arm, seed) not in cache
    ]
    rate = seconds_per_epoch(workload, scale)
    estimate = sum(estimate_arm_seconds(arm, target, rate, jobs=jobs) for _, arm in todo)
    print(
        f"[arms {workload.key}] {len(todo)} arm runs to go at {target} epochs each: about "
        f"{estimate / 60:.0f} min",
        flush=True,
    )

    def record(seed: int, arm: str, run: ArmRun | BaseException, seconds: float) -> None:
        if isinstance(run, BaseException):  # reported; the other arms still run
            print(f"[arms {workload.key}] {arm} seed {seed} FAILED: {run!r}", flush=True)
            return
        cache.add(arm_key(workload, scale, arm, seed), run.to_json())
        print(
            f"[arms {workload.key}] {arm} seed {seed}: {run.policy}, {run.epochs:.0f} epochs "
            f"(target {target}), {run.trials} trials, {seconds:.0f} s",
            flush=True,
        )

    with cache.session():
        started = time.perf_counter()
        for seed, arm in todo:
            if arm in POOL_ARMS:
                continue
            t0 = time.perf_counter()
            try:
                run: ArmRun | BaseException = run_arm(
                    workload,
                    arm=arm,
                    seed=seed,
                    target=target,
                    scale=scale,
                    spe=spe,
                    pool=pool,
                    earlier=arm_runs(workload, scale, cache, arm),
                )
            except Exception as error:
                run = error
            record(seed, arm, run, time.perf_counter() - t0)
        # The peers that train in one process each: `jobs` at once, after lrtune's jobs (which
        # use both cores), so no two compete for a core.
        futures = {
            pool.submit(
                run_peer, workload, arm=arm, seed=seed, target=target, scale=scale, spe=spe
            ): (seed, arm)
            for seed, arm in todo
            if arm in POOL_ARMS
        }
        for future in as_completed(futures):
            seed, arm = futures[future]
            failure = future.exception()
            record(seed, arm, failure or future.result(), time.perf_counter() - started)
    took = time.perf_counter() - started
    print(f"[arms {workload.key}] {took:.0f} s ({cache.seconds:.0f} s in all)")


def fresh_plan(
    workload: BenchWorkload, scale: Scale, oracle: Oracle, runs: dict[str, list[ArmRun]], spe: int
) -> dict[str, dict[str, Any]]:
    """Every schedule to score (the oracle's top and the recommendations) on every fresh seed."""
    from lrtune.schemas.schedules import parse_schedule

    schedules = [c.schedule for c in oracle.ranked()[:ORACLE_TOP]]
    schedules += [parse_schedule(r.schedule) for rs in runs.values() for r in rs]
    return {
        key: task
        for schedule in schedules
        for key, task in fresh_tasks(workload, scale, schedule, spe).values()
    }


def fresh_tasks(
    workload: BenchWorkload, scale: Scale, schedule: Any, spe: int
) -> dict[int, tuple[str, dict[str, Any]]]:
    """A schedule's training on each fresh seed: (cache key, task) by seed."""
    return {
        seed: make_task(
            workload,
            schedule,
            seed=seed,
            epochs=budget_epochs(workload, scale),
            steps_per_epoch=spe,
        )
        for seed in fresh_seeds(scale)
    }


def stage_fresh(
    workload: BenchWorkload,
    scale: Scale,
    tasks: dict[str, dict[str, Any]],
    *,
    pool: Executor,
    jobs: int,
) -> None:
    cache = cache_for("fresh", workload, scale)
    with cache.session():
        started = time.perf_counter()
        train_all(
            tasks,
            cache=cache,
            pool=pool,
            label=f"fresh {workload.key}",
            seconds_per_epoch=workload.seconds_per_epoch,
            jobs=jobs,
        )
    took = time.perf_counter() - started
    print(f"[fresh {workload.key}] {took:.0f} s ({cache.seconds:.0f} s in all)")


# --- the report -----------------------------------------------------------------------------


def fresh_values(
    workload: BenchWorkload, scale: Scale, cache: StageCache, schedule: Any, spe: int
) -> dict[int, float] | None:
    """The schedule's final value on each fresh seed; None while any is missing."""
    from lrtune.schemas.schedules import parse_schedule

    from bench.search_training import final_value

    if isinstance(schedule, dict):
        schedule = parse_schedule(schedule)
    values = {}
    for seed, (key, _) in fresh_tasks(workload, scale, schedule, spe).items():
        result = cache.get(key)
        if result is None:
            return None
        values[seed] = final_value(result, workload.worst)
    return values


def workload_section(
    workload: BenchWorkload, scale: Scale, arms: list[str], *, spe: int
) -> tuple[list[str], dict[str, Any], dict[str, float]]:
    """One workload's part of the section, its target facts and its stages' seconds."""
    oracle, oracle_cache = load_oracle(workload, scale, spe=spe)
    arms_cache = cache_for("arms", workload, scale)
    fresh_cache = cache_for("fresh", workload, scale)
    budget = budget_epochs(workload, scale)
    reference = reference_epochs(workload, scale)
    target = arm_epochs(workload, scale)
    seconds = {
        f"oracle {workload.key}": oracle_cache.seconds,
        f"arms {workload.key}": arms_cache.seconds,
        f"fresh {workload.key}": fresh_cache.seconds,
    }
    low, high = workload.bounds
    lines = [
        f"### {workload.label}",
        "",
        f"`{json.dumps(workload.spec)}`, {spe} steps per epoch, {budget} epochs, "
        f"{workload.optimizer['name']}, {workload.metric} ({workload.mode}); policies "
        f"{', '.join(workload.policies)}; lr_bounds min {low:g}, max {high:g}. Reference: "
        f"{reference} epochs; every arm gets {target} ({100 * scale.arm_share:g}%).",
        "",
    ]
    ranked = oracle.ranked()
    n_trials = oracle.trials()
    if not ranked:
        lines += [f"Oracle: missing ({oracle.missing} of {n_trials} trainings to go).", ""]
        return lines, {}, seconds
    best = ranked[0]
    best_json = json.dumps(best.schedule.model_dump(mode="json"))
    lines += [
        f"Oracle: {len(oracle.plan.configs)} configurations x {scale.oracle_seeds} seeds "
        f"({', '.join(map(str, oracle_seeds(scale)))}), {n_trials} trainings (full length with "
        f"probes, and compressed), {oracle.epochs():.0f} epochs probes included, "
        f"{oracle_cache.seconds:.0f} s"
        + (f"; **{oracle.missing} trainings missing**" if oracle.missing else "")
        + f". Best on its own seeds: {best.policy} at "
        f"{fmt_value(workload, oracle.final_mean(best))}, `{best_json}`.",
        "",
    ]
    rows = correlations(oracle)
    if rows:
        lines += [
            f"Spearman with the full-length {scale.oracle_seeds}-seed mean "
            f"({len(oracle.complete_configs())} configurations): per trial (one seed's value "
            "against its configuration's mean), and of the seed means:",
            "",
            *table(
                ["evidence", "epochs per trial", "Spearman per trial", "of the seed means"],
                [[name, f"{e:g}", f"{a:.2f}", f"{b:.2f}"] for name, e, a, b in rows],
                align="lrrr",
            ),
            "",
        ]
    found = range_finding(oracle)
    if found:
        lines += [
            "The range finding: each decaying policy's best configuration in the oracle, its "
            f"peak rate against the range test's max ({found[0]['range_max']:.3g}, median of "
            f"{len(oracle.range_tests)} seeds, lrtune's defaults):",
            "",
            *table(
                [
                    "policy",
                    "best peak rate",
                    "x the range test's max",
                    "today's space's top",
                    "oracle grid's top",
                    "its value",
                ],
                [
                    [
                        f["policy"],
                        f"{f['peak']:.3g}",
                        f"{f['ratio']:.3g}",
                        f"{f['space_top']:.3g}",
                        f"{f['grid_top']:.3g}",
                        fmt_value(workload, f["value"]),
                    ]
                    for f in found
                ],
                align="lrrrrr",
            ),
            "",
        ]
    shifts = best_rate_by_horizon(oracle)
    if shifts:
        budget = budget_epochs(workload, scale)
        columns = sorted({h for row in shifts for h in row["rates"]})
        lines += [
            "Rates across horizons: each policy's best peak rate (seed mean) run as the whole "
            "schedule compressed to each horizon, and at the budget:",
            "",
            *table(
                ["policy", *[f"{h} of {budget} epochs" for h in columns]],
                [
                    [row["policy"], *[f"{row['rates'].get(h, math.nan):.3g}" for h in columns]]
                    for row in shifts
                ],
                align="l" + "r" * len(columns),
            ),
            "",
        ]
        per_policy = (arm_epochs(workload, scale) - 2 * len(workload.policies) * budget) / len(
            workload.policies
        )
        lines += [
            "Ladders replayed on the oracle's own trainings (`simulate_ladder`; 400 draws, the "
            f"first rung as large as {per_policy:.0f} search epochs a policy allow, the "
            "confirmation's 2 more seeds apart): the winner's gap to the oracle's best on the "
            "oracle's seeds, and how often it is one of the oracle's top 3. Rungs 12 alone is "
            "random search. A rough guide on a 16-point grid; the arms below decide.",
            "",
            *table(
                ["rungs", "r", "first rung", "judge", f"gap ({unit(workload)})", "top 3"],
                ladder_rows(oracle, per_policy_epochs=per_policy),
                align="lrrlrr",
            ),
            "",
        ]
    # Fresh seeds.
    top = [
        (c, fresh_values(workload, scale, fresh_cache, c.schedule, spe))
        for c in ranked[:ORACLE_TOP]
    ]
    scored_top = [(c, v) for c, v in top if v is not None]
    if not scored_top:
        lines += ["Fresh seeds: the oracle's top 5 are not scored yet (stage fresh).", ""]
        return lines, {}, seconds
    best_config, best_values = min(
        scored_top,
        key=lambda cv: (-1 if workload.higher_is_better else 1) * statistics.fmean(cv[1].values()),
    )
    lines += [
        f"The oracle's {ORACLE_TOP} best on {scale.fresh_seeds} fresh seeds "
        f"({', '.join(map(str, fresh_seeds(scale)))}):",
        "",
        *table(
            [
                "rank",
                "policy",
                "peak rate",
                "oracle's seeds",
                "fresh seeds (mean)",
                "fresh (worst seed)",
            ],
            [
                [
                    str(i + 1),
                    c.policy,
                    f"{_peak(c.schedule):.3g}",
                    fmt_value(workload, oracle.final_mean(c)),
                    fmt_value(workload, statistics.fmean(v.values())) if v else "missing",
                    fmt_value(workload, _worst(workload, v)) if v else "",
                ]
                for i, (c, v) in enumerate(top)
            ],
            align="rlrrrr",
        ),
        "",
    ]
    gaps: dict[str, Gap] = {}
    scored: dict[str, list[dict[int, float]]] = {}
    arm_rows = []
    for arm in arms:
        runs = arm_runs(workload, scale, arms_cache, arm)
        if not runs:
            reason = unavailable(workload, arm) or "not run yet (stage arms)"
            arm_rows.append([ARM_NAMES[arm], reason, *[""] * 7])
            continue
        values = [fresh_values(workload, scale, fresh_cache, r.schedule, spe) for r in runs]
        epochs = statistics.fmean(r.epochs for r in runs)
        spent = f"{epochs:.0f} ({epochs / target:.2f}x)" + (
            "" if abs(epochs / target - 1) <= 0.1 else " ⚠"
        )
        wall = f"{statistics.fmean(r.seconds for r in runs):.0f} s"
        pruned = statistics.fmean(r.pruned for r in runs)
        trials = f"{statistics.fmean(r.trials for r in runs):.0f} ({pruned:.0f})"
        picked = ", ".join(r.policy for r in runs)
        if any(v is None for v in values):
            arm_rows.append(
                [
                    ARM_NAMES[arm],
                    "fresh seeds missing",
                    "",
                    "",
                    picked,
                    spent,
                    f"{100 * epochs / reference:.1f}%",
                    trials,
                    wall,
                ]
            )
            continue
        complete = [v for v in values if v is not None]
        scored[arm] = complete
        found_gap = gap(workload, best=best_values, recommended=complete)
        gaps[arm] = found_gap
        arm_rows.append(
            [
                ARM_NAMES[arm]
                + (
                    f" ({len(runs)} of {len(scale.search_seeds)} seeds)"
                    if len(runs) < len(scale.search_seeds)
                    else ""
                ),
                f"{found_gap.mean:.2f}",
                f"[{found_gap.low:.2f}, {found_gap.high:.2f}]",
                f"{found_gap.worst:.2f}",
                picked,
                spent,
                f"{100 * epochs / reference:.1f}%",
                trials,
                wall,
            ]
        )
    lines += [
        f"Arms on the fresh seeds. Gap: the best fresh mean among the oracle's top "
        f"{ORACLE_TOP} ({best_config.policy}, "
        f"{fmt_value(workload, statistics.fmean(best_values.values()))}) "
        f"minus the recommendation's fresh mean, in {unit(workload)}, search seeds averaged; its "
        "95% interval a paired t over the fresh seeds; worst: the worst search seed's own gap. "
        "Epochs: the arm's mean (x the arms' target; ⚠ past 10%), probes and confirmation "
        "included; wall: seconds per search seed.",
        "",
        *table(
            [
                "arm",
                "gap",
                "95% interval",
                "worst",
                "recommended",
                "epochs",
                "of the reference",
                "trials (pruned)",
                "wall",
            ],
            arm_rows,
            align="lrrrlrrrr",
        ),
        "",
    ]
    comparisons = {}
    if "default" in scored:
        best_mean = statistics.fmean(best_values.values())
        comparisons = {
            arm: versus(workload, scored["default"], theirs, best_mean=best_mean)
            for arm, theirs in scored.items()
            if arm != "default"
        }
    default_runs = arm_runs(workload, scale, arms_cache, "default")
    share = statistics.fmean(r.epochs for r in default_runs) / reference if default_runs else None
    checks, facts = summarize_targets(
        workload, default_gap=gaps.get("default"), default_share=share, comparisons=comparisons
    )
    lines += ["Targets:", "", *checks, ""]
    return lines, facts, seconds


def _peak(schedule: Any) -> float:
    from bench.search_workloads import peak_rate

    return peak_rate(schedule)


def _worst(workload: BenchWorkload, values: dict[int, float]) -> float:
    return min(values.values()) if workload.higher_is_better else max(values.values())


def write_report(
    workloads: list[BenchWorkload], scale: Scale, arms: list[str], *, write: bool
) -> None:
    from bench.results_file import machine_line, write_section

    load = os.getloadavg()
    sections: list[str] = []
    all_facts: dict[str, dict[str, Any]] = {}
    all_seconds: dict[str, float] = {}
    for workload in workloads:
        lines, facts, seconds = workload_section(
            workload, scale, arms, spe=steps_per_epoch(workload)
        )
        sections += lines
        all_facts[workload.key] = facts
        all_seconds.update(seconds)
    ahead = [k for k, f in all_facts.items() if f.get("ahead_of_all")]
    measured = [k for k, f in all_facts.items() if f.get("ahead_of_all") is not None]
    behind = {
        k: f["behind_beyond_noise"] for k, f in all_facts.items() if f.get("behind_beyond_noise")
    }
    verdict = (
        f"At equal epochs lrtune's default is ahead of every peer on {len(ahead)} of "
        f"{len(measured)} workloads measured ({', '.join(ahead) or 'none'}; bar: 3 of 4)"
        + (
            "; behind beyond the noise on "
            + "; ".join(f"{k} (against {', '.join(v)})" for k, v in behind.items())
            if behind
            else "; nowhere behind beyond the noise"
        )
        + (": met." if len(ahead) >= 3 and not behind and len(measured) == 4 else ": NOT met.")
    )
    header = [
        f"Machine: {machine_line()}; 1-minute load average {load[0]:.1f} (5-minute "
        f"{load[1]:.1f}) when this was written; stage times are each stage's sessions summed.",
        "",
        "Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in all_seconds.items()) + ".",
        "",
        verdict,
        "",
        f"Probe: lrtune's default cooldown ({PROBE[1]}, fraction {PROBE[0]:g}). Fresh seeds: "
        f"{scale.fresh_seeds}, apart from the oracle's {scale.oracle_seeds} and every arm's "
        "trial seeds. The default arm names no early_stopping, so it is whatever lrtune's "
        "default is when it ran (since this run: horizon halving at a quarter of the budget, "
        "reduction factor 4).",
        "",
    ]
    body = "\n".join(header + sections) + (
        "\nReproduce (each stage resumes from bench/.cache/search/): `nice -n 10 "
        ".venv/bin/python -m bench.bench_search --stage oracle` (then `--stage arms`, "
        "`--stage fresh`), and `--write`.\n"
    )
    print(body)
    if write:
        write_section(SECTION, body)


# --- the command ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=None)
    parser.add_argument(
        "--stage",
        choices=[*STAGES, "all", "none"],
        default="all",
        help="the stage to run ('none': only --write)",
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--jobs", type=int, default=2, help="processes for the trainings")
    parser.add_argument("--tiny", action="store_true", help="the smoke run (never written)")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    if args.tiny and args.write:
        parser.error("--tiny never writes bench/RESULTS.md")
    scale = TINY if args.tiny else FULL
    keys = args.workloads or (["mnist1d-mlp"] if args.tiny else list(WORKLOADS))
    workloads = [WORKLOADS[k] for k in keys]
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import torch

    torch.set_num_threads(1)
    stages = STAGES if args.stage == "all" else () if args.stage == "none" else (args.stage,)
    started = time.perf_counter()
    pool = ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")
    )
    with pool:
        for workload in workloads:
            spe = steps_per_epoch(workload)
            if "oracle" in stages:
                oracle, cache = load_oracle(workload, scale, spe=spe)
                stage_oracle(oracle.plan, cache, pool=pool, jobs=args.jobs)
            if "arms" in stages:
                stage_arms(workload, scale, args.arms, spe=spe, pool=pool, jobs=args.jobs)
            if "fresh" in stages:
                oracle, _ = load_oracle(workload, scale, spe=spe)
                if oracle.missing:
                    print(
                        f"[fresh {workload.key}] the oracle misses {oracle.missing} trainings: "
                        "its top 5 are those of the configurations it has",
                        flush=True,
                    )
                runs = {
                    arm: arm_runs(workload, scale, cache_for("arms", workload, scale), arm)
                    for arm in args.arms
                }
                tasks = fresh_plan(workload, scale, oracle, runs, spe)
                stage_fresh(workload, scale, tasks, pool=pool, jobs=args.jobs)
    if stages:
        print(f"[bench_search] {' '.join(sys.argv[1:])}: {time.perf_counter() - started:.0f} s")
    if args.write or args.tiny or args.stage == "none":
        write_report(workloads, scale, args.arms, write=args.write)


if __name__ == "__main__":
    main()
