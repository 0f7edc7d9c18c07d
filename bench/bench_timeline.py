"""Time to recommendation (issue 16): where the wall-clock of one mnist1d job goes, phase by
phase, and how much of each trial's wall-clock was start-up rather than training.

The job (mnist1d mlp, the search benchmark's six policies and optimizer, lr_bounds "auto" so the
range test runs, ASHA, confirmation of each policy's best on 3 seeds) goes through the real
worker (`run_worker(once=True)`, a temporary SQLite, 2 concurrent trials); its timeline is read
back from SQL (`Store.job_timeline`, what `GET /v1/jobs/{id}/timeline` answers). Ray is started
before the job is submitted (a worker's Ray lives across jobs), so `queued` is the claim alone.

    .venv/bin/python -m bench.bench_timeline --trials 6 --epochs 8 --write
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from typing import Any

from bench.bench_search import OPTIMIZER, POLICIES, WORKLOADS, search_spaces, steps_per_epoch
from bench.results_file import write_section
from bench.worker_job import worker_job

SECTION = "Time to recommendation (issue 16)"
CONCURRENT_TRIALS = 2
CONFIRM_SEEDS = 3


# The exhaustive grid a job is measured against: this many points per policy (6 policies x 16
# x 8 epochs = 768 epochs, the grid of the issue), each trained to the end by a plain loop.
GRID_POINTS = 16


def job_spec(
    *, trials: int, epochs: int, seed: int, workload: str = "mnist1d-mlp", execution: str = "trials"
) -> Any:
    from lrtune.schemas.jobs import JobSpec

    return JobSpec.model_validate(
        {
            "name": f"bench_timeline {workload} seed {seed}",
            "execution": execution,
            "workload": WORKLOADS[workload].spec,
            "optimizer": OPTIMIZER,
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": POLICIES,
            "lr_bounds": "auto",
            "budget": {
                "epochs": epochs,
                "trials_per_policy": trials,
                "max_concurrent_trials": CONCURRENT_TRIALS,
            },
            "early_stopping": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 3},
            "search": {"algorithm": "random", "seed": seed},
            "confirm": {"top_k": 1, "seeds": CONFIRM_SEEDS},
        }
    )


def run_job(spec: Any) -> tuple[Any, float]:
    """The job through the real worker: its timeline as the store answers it, and the mean
    metric of its recommended schedule over the confirmation seeds."""
    from lrtune.service.recommendations import job_recommendation

    with worker_job(spec) as (store, done, _):
        assert done.status == "succeeded", done.error
        winner = job_recommendation(store, job_id=done.id, tenant_id=None).winner
        assert winner is not None
        return store.job_timeline(done.id), winner.metric_mean


def _grid_trial(task: tuple[str, str, dict[str, Any], int]) -> float:
    """One grid point trained to its end in this process (one torch thread, as a trial)."""
    import torch
    from lrtune.schemas.search import resolve_schedule
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trial import run_trial

    torch.set_num_threads(1)
    key, policy, point, epochs = task
    workload = WORKLOADS[key]
    spe = steps_per_epoch(workload)
    schedule = resolve_schedule(
        policy, point, steps_per_epoch=spe, total_steps=spe * epochs, metric_mode="max"
    )
    config = TrialConfig.model_validate(
        {
            "workload": workload.spec,
            "optimizer": OPTIMIZER,
            "schedule": schedule.model_dump(mode="json"),
            "epochs": epochs,
            "metric": "val_accuracy",
            "mode": "max",
        }
    )
    values: list[float] = []
    run_trial(config, lambda result: values.append(result.metrics["val_accuracy"]))
    return values[-1] if values and math.isfinite(values[-1]) else 0.0


def run_grid(key: str, *, epochs: int) -> tuple[float, float, int]:
    """The exhaustive grid, `GRID_POINTS` per policy, in `CONCURRENT_TRIALS` processes: (its
    wall-clock, the best final val_accuracy, the epochs trained)."""
    from concurrent.futures import ProcessPoolExecutor

    from lrtune.workers.experiment import grid_points, parse_space

    tasks = [
        (key, policy, point, epochs)
        for policy, space in search_spaces(WORKLOADS[key]).items()
        for point in grid_points(parse_space(policy, space), budget=GRID_POINTS)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(CONCURRENT_TRIALS) as pool:
        finals = list(pool.map(_grid_trial, tasks))
    return time.perf_counter() - started, max(finals), len(tasks) * epochs


def report(timeline: Any, *, spec: Any, load_before: float, load_after: float) -> str:
    total = timeline.phases_s
    lines = [
        f"Machine: {time.strftime('%Y-%m-%d')}, {platform.machine()}, nproc "
        f"{len(os.sched_getaffinity(0))}, Python {platform.python_version()}; 1-minute load "
        f"average (as `uptime` shows it) {load_before:.1f} before the job, {load_after:.1f} "
        "after (other work shares the cores: the seconds are indicative).",
        "",
        f"The job (execution {spec.execution}): {spec.workload.label} {spec.workload.params}, "
        f"{spec.budget.epochs} epochs, "
        f"{len(spec.policies)} policies x "
        f"{spec.budget.trials_per_policy} trials ({', '.join(p.policy for p in spec.policies)}), "
        'SGD momentum 0.9, lr_bounds "auto" (the range test), ASHA (grace 1, rf 3), each '
        f"policy's best confirmed on {CONFIRM_SEEDS} seeds, {CONCURRENT_TRIALS} concurrent trials, "
        "through `run_worker(once=True)` on a temporary SQLite, Ray started beforehand. "
        "Reproduce: `.venv/bin/python -m bench.bench_timeline --write`.",
        "",
        "| phase | seconds | share |",
        "| --- | ---: | ---: |",
    ]
    for phase in timeline.phases:
        lines.append(f"| {phase.phase} | {phase.seconds:.2f} | {_share(phase.seconds, total)} |")
    lines += [
        f"| **submission to recommendation** | **{total:.2f}** | 100% |",
        "",
        f"Job wall-clock (created_at to finished_at): {timeline.wall_clock_s:.2f} s; the phases "
        f"add up to {total:.2f} s (the recommendation phase follows finished_at).",
        "",
        "Per trial (`busy`: the trial's own clock up to its last epoch, workload build included; "
        "`start-up`: the rest of its wall-clock from Ray Tune starting it, actor up, to its end):",
        "",
        "| trials | count | epochs | start-up s (sum) | busy s (sum) | of it first epochs s | "
        "wall s (sum) | start-up share | start-up per trial |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, phase in (("search", "search"), ("confirmation", "confirm"), ("all", None)):
        chosen = [t for t in timeline.trials if phase is None or t.phase == phase]
        if not chosen:
            continue
        start_up = sum(t.start_up_s or 0.0 for t in chosen)
        busy = sum(t.busy_s for t in chosen)
        first = sum(t.first_epoch_s for t in chosen)
        wall = sum(t.wall_s or 0.0 for t in chosen)
        lines.append(
            f"| {label} | {len(chosen)} | {sum(t.epochs_done for t in chosen)} | "
            f"{start_up:.2f} | {busy:.2f} | {first:.2f} | {wall:.2f} | "
            f"{_share(start_up, wall)} | {start_up / len(chosen):.3f} |"
        )
    slowest = max(timeline.trials, key=lambda t: t.first_epoch_s, default=None)
    if slowest is not None and slowest.epochs_done > 1:
        later = (slowest.busy_s - slowest.first_epoch_s) / (slowest.epochs_done - 1)
        lines += [
            "",
            f"The slowest first epoch: trial {slowest.trial_id} ({slowest.policy}) "
            f"{slowest.first_epoch_s:.2f} s against {later:.2f} s for each of its later ones "
            "(a fresh actor builds the workload; reused actors have it cached).",
        ]
    lines += ["", *_slot_lines(timeline)]
    return "\n".join(lines)


def _slot_lines(timeline: Any) -> list[str]:
    """How much of the search and confirmation phases' trial slots no trial occupied (actors
    starting before Tune reports the trial started, the driver between trials)."""
    lines = ["Trial slots:", ""]
    for phase_name, trial_phase in (("search", "search"), ("confirmation", "confirm")):
        phase = [p for p in timeline.phases if p.phase == phase_name]
        chosen = [t for t in timeline.trials if t.phase == trial_phase]
        if not phase or not chosen:
            continue
        seconds = sum(p.seconds for p in phase)
        wall = sum(t.wall_s or 0.0 for t in chosen)
        starts = [t.started_at for t in chosen if t.started_at is not None]
        first = (min(starts) - phase[0].started_at).total_seconds() if starts else math.nan
        slots = CONCURRENT_TRIALS * seconds
        lines.append(
            f"- {phase_name}: {CONCURRENT_TRIALS} slots x {seconds:.2f} s = {slots:.2f} slot-s; "
            f"the trials' wall-clock {wall:.2f} s ({_share(wall, slots)}), so no trial held a "
            f"slot for {max(0.0, slots - wall):.2f} s; the first trial started {first:.2f} s "
            "into the phase."
        )
    return lines


def comparison(
    runs: list[tuple[Any, Any, float]],
    grid: tuple[float, float, int] | None,
    *,
    epochs: int,
    optuna: list[tuple[int, float, int, float]],
) -> str:
    """The jobs against the exhaustive grid (timed in the same run) and against the in-process
    Optuna script at the jobs' epochs."""
    lines = []
    if grid is not None:
        lines += [
            f"Against the exhaustive grid ({GRID_POINTS} points per policy, each trained {epochs} "
            f"epochs by a plain `run_trial` loop, seed 0, {CONCURRENT_TRIALS} processes), timed "
            "in the same run:",
            "",
        ]
    grid_s = grid[0] if grid is not None else math.nan
    lines += [
        "| run | epochs | wall-clock s | vs grid | val_accuracy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for spec, timeline, winner in runs:
        wall = timeline.phases_s
        trained = sum(t.epochs_done for t in timeline.trials)
        lines.append(
            f"| lrtune job ({spec.execution}), search seed {spec.search.seed} | {trained} | "
            f"{wall:.2f} | {wall / grid_s:.2f}x | {winner:.4f} (winner, mean of {CONFIRM_SEEDS} "
            "seeds) |"
        )
    for seed, seconds, trained, best in optuna:
        lines.append(
            f"| in-process Optuna (TPE, median pruning), seed {seed} | {trained} | {seconds:.2f} "
            f"| {seconds / grid_s:.2f}x | {best:.4f} (its best trial, one seed) |"
        )
    if grid is not None:
        lines.append(
            f"| exhaustive grid | {grid[2]} | {grid_s:.2f} | 1.00x | {grid[1]:.4f} (best point, "
            "one seed) |"
        )
    lines.append("")
    for execution in sorted({spec.execution for spec, _, _ in runs}):
        chosen = [(t.phases_s, w) for spec, t, w in runs if spec.execution == execution]
        mean_wall = sum(wall for wall, _ in chosen) / len(chosen)
        mean_winner = sum(winner for _, winner in chosen) / len(chosen)
        lines.append(
            f"- execution {execution}: mean job wall-clock {mean_wall:.2f} s = "
            f"{mean_wall / grid_s:.2f}x the grid's (target 0.5x); winners' mean val_accuracy "
            f"{mean_winner:.4f}."
        )
    if optuna:
        mean_optuna = sum(seconds for _, seconds, _, _ in optuna) / len(optuna)
        lines.append(
            f"- in-process Optuna: mean {mean_optuna:.2f} s, each seed run until it had trained "
            "the fewest epochs of that seed's jobs."
        )
    return "\n".join(lines)


def run_optuna(key: str, *, epochs: int, seed: int, max_epochs: int) -> tuple[float, int, float]:
    """The in-process Optuna script (bench_search's TPE arm: one process, one torch thread)
    until it has trained `max_epochs`: (its wall-clock, the epochs it trained, its best value)."""
    import torch

    from bench.bench_search import run_tpe

    torch.set_num_threads(1)
    workload = WORKLOADS[key]
    run = run_tpe(
        workload,
        trials=1000,
        seed=seed,
        spe=steps_per_epoch(workload),
        epochs=epochs,
        max_epochs=max_epochs,
    )
    return run.seconds, int(run.epochs), float(run.detail.get("best", math.nan))


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="search trials per policy")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="mnist1d-mlp")
    parser.add_argument(
        "--grid", action="store_true", help="also time the exhaustive grid, in the same run"
    )
    parser.add_argument(
        "--execution",
        nargs="+",
        choices=["trials", "population"],
        default=["trials"],
        help="run the job with each, alternating, per seed",
    )
    parser.add_argument(
        "--optuna",
        action="store_true",
        help="also time the in-process Optuna script at the fewest epochs of each seed's jobs",
    )
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument(
        "--heading", default=SECTION, help="the RESULTS.md section to write (before/after)"
    )
    args = parser.parse_args()

    from lrtune.workers.daemon import ensure_ray

    ensure_ray(address=None, num_cpus=CONCURRENT_TRIALS)
    load_before = os.getloadavg()[0]
    runs = []
    optuna = []
    for seed in args.seeds:
        trained = []
        for execution in args.execution:
            spec = job_spec(
                trials=args.trials,
                epochs=args.epochs,
                seed=seed,
                workload=args.workload,
                execution=execution,
            )
            runs.append((spec, *run_job(spec)))
            trained.append(sum(t.epochs_done for t in runs[-1][1].trials))
            print(
                f"seed {seed} {execution}: {runs[-1][1].phases_s:.2f} s, {trained[-1]} epochs, "
                f"winner {runs[-1][2]:.4f}",
                flush=True,
            )
        if args.optuna:
            at = min(trained)  # the fewest epochs any of the seed's jobs trained
            optuna.append(
                (seed, *run_optuna(args.workload, epochs=args.epochs, seed=seed, max_epochs=at))
            )
            print(f"seed {seed} optuna: {optuna[-1][1]:.2f} s, {optuna[-1][2]} epochs", flush=True)
    grid = run_grid(args.workload, epochs=args.epochs) if args.grid else None
    load_after = os.getloadavg()[0]
    body = "\n\n".join(
        report(timeline, spec=spec, load_before=load_before, load_after=load_after)
        for spec, timeline, _ in runs
        if spec.search.seed == args.seeds[0]
    )
    if grid is not None or optuna:
        body += "\n\n" + comparison(runs, grid, epochs=args.epochs, optuna=optuna)
    print(body)
    if args.write:
        write_section(args.heading, body)


if __name__ == "__main__":
    main()
