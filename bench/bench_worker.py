"""Worker overhead: a 16-trial job through the service (store, worker daemon, Ray Tune) against
the same 16 trials one after another in a plain PyTorch loop in one process.

Trials are digits/mlp with as many epochs as make a trial last about `--seconds` in the plain
loop. Both sides run the same schedules and seeds (the job's searcher makes them). The service
side runs 2 trials at a time on 2 CPUs, which counts as its parallel speed-up; Ray is started
before the clock starts (a worker's Ray lives across jobs).

    .venv/bin/python -m bench.bench_worker --seconds 2 20 --write
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.worker_job import worker_job

POLICIES = ["fixed", "exponential", "clr", "sgdr"]
TRIALS_PER_POLICY = 4


def _spec(epochs: int) -> Any:
    from lrtune.schemas.jobs import JobSpec

    return JobSpec.model_validate(
        {
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "policies": POLICIES,
            "budget": {
                "epochs": epochs,
                "trials_per_policy": TRIALS_PER_POLICY,
                "max_concurrent_trials": 2,
            },
            "search": {"algorithm": "random", "seed": 0},
        }
    )


def _trial_configs(spec: Any) -> list[Any]:
    """The 16 trials the job runs, as TrialConfigs for the plain loop."""
    from lrtune.schemas.schedules import parse_schedule
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.experiment import plan_experiment, plan_searcher
    from lrtune.workers.results import sink_registered
    from ray.tune.search import Searcher

    class _Go:
        def should_stop(self) -> bool:
            return False

    plan = plan_experiment(spec, job_key="bench", storage_path=Path(tempfile.gettempdir()))
    searcher = plan_searcher(plan)  # the job's own searcher: the same schedules and seeds
    configs: list[Any] = []
    with sink_registered("bench", _Go()):
        while (suggestion := searcher.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
            assert suggestion is not None
            configs.append(
                TrialConfig(
                    workload=spec.workload,
                    schedule=parse_schedule(suggestion["schedule"]),
                    epochs=spec.budget.epochs,
                    seed=suggestion["seed"],
                )
            )
    return configs


def _plain_seconds(configs: list[Any]) -> float:
    from lrtune.workers.trial import run_trials_sequentially

    # One torch thread, like each Ray trial (Ray sets OMP_NUM_THREADS to its CPU share); for
    # these small models it is also the plain loop's fastest setting, so the baseline is fair.
    torch.set_num_threads(1)
    started = time.perf_counter()
    run_trials_sequentially(configs)
    return time.perf_counter() - started


def _epochs_for(seconds: float) -> int:
    """Epochs that make one whole digits/mlp trial last about `seconds` in the plain loop.

    A trial costs a fixed part (building the model, the first evaluation) plus a part per epoch,
    so time two lengths and solve for the epochs, instead of dividing by one trial's average.
    """
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trial import run_trial

    torch.set_num_threads(1)

    def trial_seconds(epochs: int) -> float:
        config = TrialConfig(
            workload={"name": "digits"}, schedule={"policy": "fixed", "lr": 0.05}, epochs=epochs
        )
        timings = []
        for _ in range(3):  # the best of three: the machine is shared
            started = time.perf_counter()
            run_trial(config, lambda result: None)
            timings.append(time.perf_counter() - started)
        return min(timings)

    trial_seconds(1)  # warm up: data load, torch kernels
    short, long = trial_seconds(2), trial_seconds(12)
    per_epoch = (long - short) / 10
    fixed = max(0.0, short - 2 * per_epoch)
    return max(1, round((seconds - fixed) / per_epoch))


def _service_seconds(spec: Any, home: Path) -> tuple[float, str]:
    with worker_job(spec, home=home) as (_, job, seconds):
        return seconds, job.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 20.0])
    parser.add_argument("--write", action="store_true", help="Update bench/RESULTS.md.")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for seconds in args.seconds:
        epochs = _epochs_for(seconds)
        spec = _spec(epochs)
        configs = _trial_configs(spec)
        plain = _plain_seconds(configs)
        with tempfile.TemporaryDirectory() as home:
            service, status = _service_seconds(spec, Path(home))
        row = (seconds, epochs, plain, service, status)
        rows.append(row)
        print(
            f"~{seconds:g} s trials ({epochs} epochs): plain {plain:.1f} s, "
            f"service {service:.1f} s ({status}), ratio {service / plain:.2f}",
            flush=True,
        )
    if args.write:
        _write(rows)


def _write(rows: list[tuple[float, int, float, float, str]]) -> None:
    from bench.results_file import machine_line, write_section

    table = "\n".join(
        f"| ~{seconds:g} s ({epochs} epochs of digits/mlp) | {plain:.1f} s "
        f"({plain / 16:.2f} s per trial) | {service:.1f} s | **{service / plain:.2f}x** |"
        for seconds, epochs, plain, service, _ in rows
    )
    body = f"""
{machine_line()}; SQLite; Ray {_ray_version()}, torch threads in the plain loop: {_threads()}.

A job of 16 trials (fixed, exponential, clr, sgdr; 4 random trials each; no early stopping)
through the service (store, worker daemon, one Ray Tune experiment, 2 concurrent trials, every
epoch written to SQL from the driver) against the same 16 trials (same schedules and seeds) one
after another with `run_trials_sequentially` in one process. Ray is already up when the clock
starts. Target: at most 1.3x for ~2 s trials and 1.05x for ~20 s trials (2 concurrent trials on
2 cores count as parallel speed-up).

| trial length | plain loop, 16 trials | through the service | service / plain |
| --- | ---: | ---: | ---: |
{table}

What keeps the overhead down: one Tune experiment per job with `reuse_actors=True` (no actor
start per trial), Tune's per-trial CSV/JSON/TensorBoard loggers off
(`TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`), no trial checkpoints, `verbose=0`, and each trial's
data loaded once per actor process (the workloads cache). The machine is shared with other test
runs, so single runs are noisy.

Reproduce: `.venv/bin/python -m bench.bench_worker --seconds 2 20 --write`.
"""
    write_section("Worker overhead (issue 4)", body)


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
