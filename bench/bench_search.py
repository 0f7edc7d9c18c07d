"""Search efficiency (issue 5): the recommendation of a job with ASHA and lr_bounds "auto"
against an oracle, the best schedule of an exhaustive grid over the same spaces trained to
the end (no early stopping) on 3 seeds.

The job runs through the real worker (a temporary SQLite, a local Ray on 2 CPUs): range test,
derived spaces, random search with ASHA, confirmation of each policy's best on 3 seeds. The
oracle takes the spaces the job recorded, a grid of `--grid` points per policy (the service's
own grid: lrtune.workers.experiment.grid_points), and trains every point on 3 seeds in this
process. Reported: the gap between the oracle's best mean and the recommended schedule's mean
on the same 3 seeds, and the job's epochs (range-test steps counted as epochs too) as a
fraction of the oracle's. Target: within 0.5 accuracy points using at most 30% of the epochs.

    .venv/bin/python -m bench.bench_search --write
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

POLICIES = ["fixed", "exponential", "clr", "sgdr"]
WORKLOAD = {"name": "mnist1d", "params": {"model": "mlp"}}
OPTIMIZER = {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0005}
ORACLE_SEEDS = 3


def _job_spec(*, epochs: int, trials: int) -> Any:
    from lrtune.schemas.jobs import JobSpec

    return JobSpec.model_validate(
        {
            "name": "search efficiency",
            "workload": WORKLOAD,
            "optimizer": OPTIMIZER,
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": POLICIES,
            "lr_bounds": "auto",
            "budget": {"epochs": epochs, "trials_per_policy": trials, "max_concurrent_trials": 2},
            "early_stopping": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 3},
            "search": {"algorithm": "random", "seed": 0},
            "confirm": {"top_k": 1, "seeds": ORACLE_SEEDS},
        }
    )


def run_job(spec: Any, home: Path) -> dict[str, Any]:
    """The job through the worker; its recommendation, spaces and the epochs it spent."""
    from lrtune.service.migrate import upgrade_to_head
    from lrtune.service.recommendations import job_recommendation
    from lrtune.service.settings import Settings
    from lrtune.service.store import Store
    from lrtune.service.worker import run_worker

    url = f"sqlite:///{home / 'bench.db'}"
    upgrade_to_head(url)
    settings = Settings(database_url=url, home=home)
    store = Store.from_url(url)
    try:
        job, _ = store.create_job(spec=spec)
        started = time.perf_counter()
        run_worker(settings, once=True, store=store, num_cpus=2)
        seconds = time.perf_counter() - started
        done = store.get_job(job.id)
        assert done.status == "succeeded", done.error
        trials = store.list_trials(job_id=job.id, limit=200).items
        range_test = store.get_range_test(job.id)
        inputs = store.recommendation_inputs(job.id)
        steps_per_epoch = inputs.steps_per_epoch or 1
        return {
            "recommendation": job_recommendation(store, job_id=job.id, tenant_id=None),
            "spaces": done.search_spaces,
            "search_epochs": sum(t.epochs_done for t in trials if t.phase == "search"),
            "confirm_epochs": sum(t.epochs_done for t in trials if t.phase == "confirm"),
            "range_test_epochs": range_test.iterations / steps_per_epoch,
            "pruned": sum(t.status == "pruned" for t in trials),
            "trials": len(trials),
            "seconds": seconds,
            "steps_per_epoch": steps_per_epoch,
        }
    finally:
        store.dispose()


def train(schedule: Any, *, seed: int, epochs: int) -> float:
    """One full trial (no early stopping): the final val_accuracy."""
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trial import run_trial

    config = TrialConfig.model_validate(
        {
            "workload": WORKLOAD,
            "optimizer": OPTIMIZER,
            "schedule": schedule.model_dump(mode="json"),
            "epochs": epochs,
            "seed": seed,
            "metric": "val_accuracy",
            "mode": "max",
        }
    )
    history: list[float] = []

    def report(result: Any) -> None:
        history.append(result.metrics["val_accuracy"])

    run_trial(config, report)
    # A diverged trial stops early; its last value stands (usually chance level).
    return history[-1] if history else 0.0


def oracle(
    spaces: dict[str, dict[str, Any]], *, grid: int, epochs: int, steps_per_epoch: int
) -> dict[str, Any]:
    from lrtune.schemas.search import resolve_schedule
    from lrtune.workers.experiment import grid_points, parse_space, trial_seed

    seeds = [trial_seed(0, index) for index in range(ORACLE_SEEDS)]
    best: tuple[float, Any] | None = None
    trained = 0
    started = time.perf_counter()
    for policy, raw in spaces.items():
        for point in grid_points(parse_space(policy, raw), budget=grid):
            try:
                schedule = resolve_schedule(
                    policy,
                    point,
                    steps_per_epoch=steps_per_epoch,
                    total_steps=steps_per_epoch * epochs,
                )
            except ValueError:
                continue  # e.g. a CLR point whose base_lr lies above its max_lr
            finals = [train(schedule, seed=seed, epochs=epochs) for seed in seeds]
            trained += len(finals)
            mean = statistics.mean(finals)
            if best is None or mean > best[0]:
                best = (mean, schedule)
    assert best is not None
    return {
        "mean": best[0],
        "schedule": best[1],
        "seeds": seeds,
        "epochs": trained * epochs,
        "trials": trained,
        "seconds": time.perf_counter() - started,
    }


def measure(*, epochs: int, trials: int, grid: int) -> tuple[list[str], bool]:
    """One job against one oracle: its table rows, notes, and whether the target was met."""
    with tempfile.TemporaryDirectory() as home:
        job = run_job(_job_spec(epochs=epochs, trials=trials), Path(home))
    winner = job["recommendation"].winner
    assert winner is not None
    truth = oracle(job["spaces"], grid=grid, epochs=epochs, steps_per_epoch=job["steps_per_epoch"])
    # The recommended schedule on the oracle's seeds: the same noise on both sides.
    on_oracle_seeds = statistics.mean(
        train(winner.schedule, seed=seed, epochs=epochs) for seed in truth["seeds"]
    )
    job_epochs = job["search_epochs"] + job["confirm_epochs"] + job["range_test_epochs"]
    gap_points = 100 * (truth["mean"] - on_oracle_seeds)
    fraction = job_epochs / truth["epochs"]
    met = gap_points <= 0.5 and fraction <= 0.30
    lines = [
        f"### {trials} search trials per policy vs a grid of {grid} per policy",
        "",
        "| | schedule | val_accuracy (mean of 3 seeds) | epochs | trials | wall |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| job: auto bounds, random x {trials}/policy, ASHA (grace 1, rf 3), confirm top 1 "
        f"x 3 | {winner.policy} | {100 * on_oracle_seeds:.2f}% on the oracle's seeds "
        f"(reported {100 * winner.metric_mean:.2f}% on its own) | {job_epochs:.1f} "
        f"(search {job['search_epochs']}, confirm {job['confirm_epochs']}, range test "
        f"{job['range_test_epochs']:.1f}) | {job['trials']} ({job['pruned']} pruned) | "
        f"{job['seconds']:.0f} s |",
        f"| oracle: grid of {grid}/policy over the job's spaces, no early stopping | "
        f"{truth['schedule'].policy} | {100 * truth['mean']:.2f}% | {truth['epochs']} | "
        f"{truth['trials']} | {truth['seconds']:.0f} s |",
        "",
        f"Gap: {gap_points:.2f} accuracy points (oracle minus recommendation, same seeds), "
        f"using {100 * fraction:.1f}% of the oracle's epochs: "
        f"target {'met' if met else 'NOT met'}.",
        "",
        f"Recommended: `{winner.schedule.model_dump_json()}`; oracle's best: "
        f"`{truth['schedule'].model_dump_json()}`.",
        "",
    ]
    return lines, met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["6:8", "10:12"],
        help="TRIALS:GRID pairs: search trials per policy, oracle grid points per policy",
    )
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    lines = [
        f"Machine: {_machine()}.",
        "",
        f"mnist1d mlp (4,000 train / 1,000 val), SGD momentum 0.9, {args.epochs} epochs; "
        f"policies {', '.join(POLICIES)}. Target: the recommendation within 0.5 accuracy points "
        "of the oracle's best, using at most 30% of the oracle's epochs (range-test steps "
        "counted as epochs).",
        "",
    ]
    for run in args.runs:
        trials, grid = (int(part) for part in run.split(":"))
        rows, _ = measure(epochs=args.epochs, trials=trials, grid=grid)
        lines += rows
    lines.append(
        f"Reproduce: `.venv/bin/python -m bench.bench_search --runs {' '.join(args.runs)} --write`."
    )
    body = "\n".join(lines)
    print(body)
    if args.write:
        from bench.results_file import write_section

        write_section("Search efficiency (issue 5)", body)


def _machine() -> str:
    from bench.results_file import machine_line

    return machine_line()


if __name__ == "__main__":
    main()
