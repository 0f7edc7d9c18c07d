"""Trial checkpoints: what they cost, to choose LRTUNE_CHECKPOINT_EVERY_EPOCHS.

The same job (no early stopping, so no rung checkpoints) through the worker with a checkpoint
every 1, 2, 5 epochs and never (0), interleaved and repeated so drift on a shared machine hits
every setting alike. Reported: the job's wall-clock, the cost of one checkpoint (the time over
the never-checkpointing run divided by the checkpoints taken), and a checkpoint's size. A
dying worker or node costs at most the epochs since a trial's last checkpoint, so the default
is the shortest period whose cost stays small against the epochs it protects.

    .venv/bin/python -m bench.bench_checkpoints --write
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.worker_job import worker_job

WORKLOADS = {
    "mnist1d mlp": {"name": "mnist1d", "params": {"model": "mlp"}},
    "digits cnn": {"name": "digits", "params": {"model": "cnn"}},
}
EPOCHS = 10
TRIALS_PER_POLICY = 4
# The share of training time checkpoints may cost, for choosing the default period.
OVERHEAD_BUDGET_PCT = 2


def _spec(workload: dict[str, Any]) -> Any:
    from lrtune.schemas.jobs import JobSpec

    return JobSpec.model_validate(
        {
            "workload": workload,
            "policies": ["fixed", "cosine"],
            "budget": {
                "epochs": EPOCHS,
                "trials_per_policy": TRIALS_PER_POLICY,
                "max_concurrent_trials": 2,
            },
            "search": {"algorithm": "random", "seed": 0},
        }
    )


def run_job(spec: Any, *, every: int) -> tuple[float, int]:
    """Seconds from the worker's start to the job's end, and one checkpoint's size in bytes."""
    from lrtune.workers import run_storage

    sizes: list[int] = []
    real_remove = run_storage.remove_checkpoints

    def measure_then_remove(storage: Any, job_key: str) -> int:
        # Look before the worker cleans up after the job.
        for path in Path(str(storage)).rglob("checkpoint_*/*"):
            sizes.append(path.stat().st_size)
        return real_remove(storage, job_key)

    run_storage.remove_checkpoints = measure_then_remove  # type: ignore[assignment]
    try:
        with worker_job(spec, num_cpus=2, checkpoint_every_epochs=every) as (_, job, seconds):
            assert job.status == "succeeded"
    finally:
        run_storage.remove_checkpoints = real_remove  # type: ignore[assignment]
    return seconds, max(sizes, default=0)


def report_costs(workload: dict[str, Any], *, repeats: int) -> dict[str, float]:
    """Inside one Tune trial: seconds per `tune.report` with a checkpoint of the workload's
    real trial state (saved as the trainable saves it) and without, alternated so load hits
    both alike; plus one epoch's training time of the workload, for scale."""
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trainable import CHECKPOINT_FILE
    from lrtune.workers.trial import Checkpointing, run_trial
    from ray import tune
    from ray.tune import Checkpoint

    config = TrialConfig.model_validate(
        {
            "workload": workload,
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "schedule": {"policy": "fixed", "lr": 0.01},
            "epochs": 3,
        }
    )

    def trainable(_: dict[str, Any]) -> None:
        states: list[Any] = []
        epochs: list[float] = []
        run_trial(
            config,
            lambda result: epochs.append(result.elapsed_s),
            checkpointing=Checkpointing(due=lambda epoch: True, save=states.append),
        )
        epoch_s = min(b - a for a, b in itertools.pairwise(epochs))
        plain: list[float] = []
        saved: list[float] = []
        for index in range(repeats):
            started = time.perf_counter()
            tune.report({"i": 2 * index, "epoch_s": epoch_s})
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                states[-1].save(Path(folder) / CHECKPOINT_FILE)
                tune.report(
                    {"i": 2 * index + 1, "epoch_s": epoch_s},
                    checkpoint=Checkpoint.from_directory(folder),
                )
            saved.append(time.perf_counter() - started)
        tune.report(
            {
                "i": 2 * repeats,
                "epoch_s": epoch_s,
                "plain_s": statistics.median(plain),
                "checkpoint_s": statistics.median(saved),
            }
        )

    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            trainable,
            run_config=tune.RunConfig(
                storage_path=storage,
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
        metrics = tuner.fit()[0].metrics
    assert metrics is not None
    return {key: float(metrics[key]) for key in ("epoch_s", "plain_s", "checkpoint_s")}


def checkpoints_taken(every: int) -> int:
    """Per trial: after every `every`-th epoch but the last (a finished trial needs none)."""
    return 0 if every == 0 else len(range(every, EPOCHS, every))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, nargs="+", default=[0, 1, 2, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--reports", type=int, default=30, help="reports per side, in-trial")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    import ray

    from bench.results_file import machine_line

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    trials = 2 * TRIALS_PER_POLICY
    lines = [
        f"Machine: {machine_line()}; load average before: {os.getloadavg()[0]:.1f}.",
        "",
        f"A job of {trials} trials x {EPOCHS} epochs (fixed, cosine; no early stopping), 2 "
        "concurrent trials, through the worker (SQLite, local Ray on 2 CPUs), with a checkpoint "
        f"every N epochs; settings interleaved, {args.repeats} repeats, median shown. Cost per "
        "checkpoint = (median wall - median wall with none) / checkpoints taken (the 2 "
        "concurrent trials share it).",
        "",
        "| workload | every N epochs | checkpoints per trial | job wall (median) | per "
        "checkpoint | size |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in args.workloads:
        spec = _spec(WORKLOADS[name])
        run_job(spec, every=0)  # warm up: data, kernels, Ray workers
        walls: dict[int, list[float]] = {every: [] for every in args.every}
        sizes: dict[int, int] = {}
        for _ in range(args.repeats):
            for every in args.every:
                seconds, size = run_job(spec, every=every)
                walls[every].append(seconds)
                sizes[every] = max(sizes.get(every, 0), size)
        base = statistics.median(walls[0]) if 0 in walls else None
        for every in args.every:
            wall = statistics.median(walls[every])
            taken = checkpoints_taken(every) * trials
            per = f"{1000 * (wall - base) / taken:.0f} ms" if base is not None and taken else "-"
            size = f"{sizes[every] / 1024:.0f} KiB" if sizes[every] else "-"
            lines.append(
                f"| {name} | {every or 'never'} | {checkpoints_taken(every)} | {wall:.1f} s "
                f"(runs: {', '.join(f'{w:.1f}' for w in walls[every])}) | {per} | {size} |"
            )
    lines += [
        "",
        "Whole jobs on a shared machine are noisy; the cost of one checkpoint measured inside a "
        f"trial (a `tune.report` with the trial's real checkpoint against one without, "
        f"alternated {args.reports} times, medians), against one epoch of the workload:",
        "",
        "| workload | one epoch | report | report + checkpoint | checkpoint cost | cost / epoch "
        "| overhead at every 1 / 2 / 5 / 10 epochs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ratios: list[float] = []
    for name in args.workloads:
        costs = report_costs(WORKLOADS[name], repeats=args.reports)
        cost = max(0.0, costs["checkpoint_s"] - costs["plain_s"])
        ratio = cost / costs["epoch_s"]
        ratios.append(ratio)
        overheads = " / ".join(f"{100 * ratio / n:.0f}%" for n in (1, 2, 5, 10))
        lines.append(
            f"| {name} | {1000 * costs['epoch_s']:.0f} ms | {1000 * costs['plain_s']:.1f} ms | "
            f"{1000 * costs['checkpoint_s']:.1f} ms | {1000 * cost:.1f} ms | {ratio:.2f} | "
            f"{overheads} |"
        )
    periods = (1, 2, 5, 10)
    chosen = next(
        (n for n in periods if all(100 * ratio / n <= OVERHEAD_BUDGET_PCT for ratio in ratios)),
        periods[-1],
    )
    lines += [
        "",
        f"Default `LRTUNE_CHECKPOINT_EVERY_EPOCHS`: the shortest period in {list(periods)} "
        f"whose overhead stays within {OVERHEAD_BUDGET_PCT}% of training on every workload "
        f"here: **{chosen}** (a dying worker or node then costs at most {chosen} epochs; "
        "trials also checkpoint at every ASHA rung, where they may be stopped).",
        "",
        "Reproduce: `.venv/bin/python -m bench.bench_checkpoints --write`.",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        from bench.results_file import write_section

        write_section("Trial checkpoints (issue 11)", body)


if __name__ == "__main__":
    main()
