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
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_search import OPTIMIZER, POLICIES, WORKLOADS
from bench.results_file import write_section

SECTION = "Time to recommendation (issue 16)"
CONCURRENT_TRIALS = 2
CONFIRM_SEEDS = 3


def job_spec(*, trials: int, epochs: int, seed: int) -> Any:
    from lrtune.schemas.jobs import JobSpec

    return JobSpec.model_validate(
        {
            "name": f"bench_timeline mnist1d-mlp seed {seed}",
            "workload": WORKLOADS["mnist1d-mlp"].spec,
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


def run_job(spec: Any) -> Any:
    """The job through the real worker; its timeline as the store answers it."""
    from lrtune.service.migrate import upgrade_to_head
    from lrtune.service.settings import Settings
    from lrtune.service.store import Store
    from lrtune.service.worker import run_worker

    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        url = f"sqlite:///{home / 'bench.db'}"
        upgrade_to_head(url)
        store = Store.from_url(url)
        try:
            job, _ = store.create_job(spec=spec)
            run_worker(Settings(database_url=url, home=home), once=True, store=store)
            done = store.get_job(job.id)
            assert done.status == "succeeded", done.error
            return store.job_timeline(job.id)
        finally:
            store.dispose()


def report(timeline: Any, *, spec: Any, load_before: float, load_after: float) -> str:
    total = timeline.phases_s
    lines = [
        f"Machine: {time.strftime('%Y-%m-%d')}, {platform.machine()}, nproc "
        f"{len(os.sched_getaffinity(0))}, Python {platform.python_version()}; 1-minute load "
        f"average (as `uptime` shows it) {load_before:.1f} before the job, {load_after:.1f} "
        "after (other work shares the cores: the seconds are indicative).",
        "",
        f"The job: mnist1d (mlp), {spec.budget.epochs} epochs, {len(spec.policies)} policies x "
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


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="search trials per policy")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial")
    parser.add_argument("--seed", type=int, default=0, help="search seed")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument(
        "--heading", default=SECTION, help="the RESULTS.md section to write (before/after)"
    )
    args = parser.parse_args()

    from lrtune.workers.daemon import ensure_ray

    ensure_ray(address=None, num_cpus=CONCURRENT_TRIALS)
    spec = job_spec(trials=args.trials, epochs=args.epochs, seed=args.seed)
    load_before = os.getloadavg()[0]
    timeline = run_job(spec)
    load_after = os.getloadavg()[0]
    body = report(timeline, spec=spec, load_before=load_before, load_after=load_after)
    print(body)
    if args.write:
        write_section(args.heading, body)


if __name__ == "__main__":
    main()
