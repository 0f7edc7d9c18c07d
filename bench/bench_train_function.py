"""A train function's overhead: the same training loop with lrtune around it and without.

The loop is `examples/own-model`'s classifier (its own loop: AdamW, gradient clipping, a
checkpoint when due), about 20 s of training. It runs three ways, alternating, `--repeats` times:

- plain: the loop alone, its context a stand-in with a torch `LambdaLR` on the same rates
  (what the user would run without lrtune);
- run_trial: in this process through lrtune's `TrialContext` (scheduler, per-epoch checks,
  report; no checkpoint due);
- Ray Tune trial: a one-trial lrtune job through the worker daemon and a local Ray with one
  CPU; its time is the trial's own (the `elapsed_s` of its last epoch, from start-up of the
  function to its last report), the job's whole wall-clock beside it.

All with one torch thread, what a 1-CPU Ray trial gets.

    .venv/bin/python -m bench.bench_train_function --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results_file import machine_line, write_section
from bench.worker_job import worker_job

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own-model"
PARAMS = {"batch_size": 16, "width": 8}
EPOCHS = 160
SCHEDULE = {"policy": "cosine", "lr": 0.003, "alpha": 0.0, "warmup_steps": 100}


class PlainContext:
    """What the classifier's loop asks of its context, answered without lrtune."""

    def __init__(self, steps_per_epoch: int) -> None:
        import torch

        self.device = torch.device("cpu")
        self.epochs = EPOCHS
        self.steps_per_epoch = steps_per_epoch
        self.rates = _rates(steps_per_epoch)
        self.reported: list[float] = []  # perf_counter at each report

    def param_groups(self, model: Any) -> Any:
        return model.parameters()

    def lr_scheduler(self, optimizer: Any) -> Any:
        import torch

        for group in optimizer.param_groups:
            group["lr"] = 1.0
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: float(self.rates[t]))

    def checkpoint_due(self, epoch: int) -> bool:
        return False

    def load_checkpoint(self) -> None:
        return None

    def report(self, epoch: int, **values: float) -> bool:
        self.reported.append(time.perf_counter())
        return False


def _rates(steps_per_epoch: int) -> Any:
    import numpy as np
    from lrtune.workers.schedule_math import learning_rates

    return learning_rates(_schedule(steps_per_epoch), np.arange(EPOCHS * steps_per_epoch + 1))


def _schedule(steps_per_epoch: int) -> Any:
    from lrtune.schemas.schedules import parse_schedule

    total = EPOCHS * steps_per_epoch
    return parse_schedule({**SCHEDULE, "decay_steps": total - SCHEDULE["warmup_steps"]})


def plain() -> tuple[float, float]:
    """(seconds, seconds per epoch after the first)."""
    import torch
    from own_model.classifier import make

    torch.manual_seed(0)
    function = make(**PARAMS)
    context = PlainContext(function.steps_per_epoch)
    started = time.perf_counter()
    function.train(context)  # type: ignore[arg-type]
    per_epoch = (context.reported[-1] - context.reported[0]) / (EPOCHS - 1)
    return time.perf_counter() - started, per_epoch


def in_process() -> tuple[float, float]:
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trial import run_trial
    from own_model.classifier import make

    steps = make(**PARAMS).steps_per_epoch
    config = TrialConfig.model_validate(
        {
            "workload": {"entrypoint": "own_model.classifier:make", "params": PARAMS},
            "schedule": _schedule(steps).model_dump(),
            "epochs": EPOCHS,
            "metric": "val_accuracy",
            "mode": "max",
        }
    )
    rows: list[Any] = []
    started = time.perf_counter()
    outcome = run_trial(config, rows.append)
    assert outcome.status == "completed", outcome
    return time.perf_counter() - started, (rows[-1].elapsed_s - rows[0].elapsed_s) / (EPOCHS - 1)


def tune_trial(home: Path) -> tuple[float, float, float]:
    """(the trial's own seconds, per epoch after the first, the job's wall-clock) of a
    one-trial job through the worker."""
    from lrtune.schemas.jobs import JobSpec
    from own_model.classifier import make

    steps = make(**PARAMS).steps_per_epoch
    schedule = _schedule(steps)
    spec = JobSpec.model_validate(
        {
            "workload": {"entrypoint": "own_model.classifier:make", "params": PARAMS},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": [
                {
                    "policy": "cosine",
                    "search": {
                        "lr": schedule.lr,
                        "alpha": 0.0,
                        "warmup_steps_frac": SCHEDULE["warmup_steps"] / (EPOCHS * steps),
                    },
                }
            ],
            "budget": {"epochs": EPOCHS, "trials_per_policy": 1, "max_concurrent_trials": 1},
        }
    )
    with worker_job(spec, home=home, code_path=str(EXAMPLE)) as (store, finished, wall):
        assert finished.status == "succeeded", finished.error
        [trial] = store.list_trials(job_id=finished.id).items
        metrics = store.list_trial_metrics(trial_id=trial.id)
    per_epoch = (metrics[-1].elapsed_s - metrics[0].elapsed_s) / (EPOCHS - 1)
    return metrics[-1].elapsed_s, per_epoch, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    # The example as a code path: importable, and where in-process entrypoints may come from.
    from lrtune.workers.user_code import CodeSnapshot

    snapshot = CodeSnapshot.take([EXAMPLE])
    assert snapshot is not None
    snapshot.activate()
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    times: dict[str, list[float]] = {"plain": [], "run_trial": [], "tune": [], "job": []}
    epoch_ms: dict[str, list[float]] = {"plain": [], "run_trial": [], "tune": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name, run in (("plain", plain), ("run_trial", in_process)):
                seconds, per_epoch = run()
                times[name].append(seconds)
                epoch_ms[name].append(1000 * per_epoch)
            trial_s, per_epoch, job_s = tune_trial(Path(folder) / f"run-{repeat}")
            times["tune"].append(trial_s)
            epoch_ms["tune"].append(1000 * per_epoch)
            times["job"].append(job_s)
            print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: v / median["plain"] for k, v in median.items()}
    ms = {k: statistics.median(v) for k, v in epoch_ms.items()}
    labels = {
        "plain": "plain loop, torch `LambdaLR` on the same rates",
        "run_trial": "`run_trial` in-process (`TrialContext`)",
        "tune": "Ray Tune trial through the worker (its own time)",
        "job": "the whole one-trial job (worker, Ray actor, SQL)",
    }
    table = "\n".join(
        [
            "| run | seconds | vs plain | ms per epoch after the first |",
            "| --- | ---: | ---: | ---: |",
            *(
                f"| {label} | {median[k]:.2f} | {ratio[k]:.3f}x | "
                + (f"{ms[k]:.1f} |" if k in ms else " |")
                for k, label in labels.items()
            ),
        ]
    )
    load = os.getloadavg()
    body = f"""Machine: {machine_line()}; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}
when done. `python -m bench.bench_train_function` ({args.repeats} alternating repeats, medians;
one torch thread everywhere).

The loop: `examples/own-model`'s classifier (its own loop: AdamW, gradient clipping, a
checkpoint when due), {EPOCHS} epochs of batches of {PARAMS["batch_size"]}, warmup then cosine.

{table}

Every run: {", ".join(f"{k} " + "/".join(f"{x:.1f}" for x in v) for k, v in times.items())}.
Target: a train-function trial at most 1.05x the plain loop for ~20 s trials."""
    print(body)
    if args.write:
        write_section("Train function overhead (issue 12)", body)


if __name__ == "__main__":
    main()
