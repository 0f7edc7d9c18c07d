"""The Ray Tune function trainable: one trial of a job, `run_trial` reporting through `tune.report`.

The trial's config comes from the experiment's searcher (`lrtune.workers.experiment`): the
trial key, policy, sampled point, seed and the schedule already resolved in steps. What is the
same for every trial of the job (workload, optimizer, epochs, metric) is bound when the
trainable is made. No database here: results travel to the driver's callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import ray
from lrtune.schemas.jobs import JobSpec
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.workers.results import OUTCOME_KEY, epoch_metrics
from lrtune.workers.trial import run_trial
from ray import tune

# Tune names the trainable after the function; Tuner.restore checks the name, so it is fixed.
TRAINABLE_NAME = "lrtune_trial"


def make_trainable(
    spec: JobSpec, *, skip_keys: Collection[str] = ()
) -> Callable[[dict[str, Any]], None]:
    """The trainable for `spec`'s trials, with the resources each trial asks Ray for.

    Trials whose key is in `skip_keys` (finished in the database already) return at once.
    """
    skip = frozenset(skip_keys)
    workload = spec.workload
    optimizer = spec.optimizer
    param_groups = list(spec.param_groups)
    epochs = spec.budget.epochs
    metric, mode = spec.metric_name, spec.metric_mode

    def lrtune_trial(config: dict[str, Any]) -> None:
        if config["trial_key"] in skip:
            # Tune insists on the metric in a trial's results; the driver ignores this one.
            tune.report({metric: math.nan, OUTCOME_KEY: "already_finished"})
            return
        if config.get("schedule_error"):
            # The sampled point makes no valid schedule (e.g. base_lr above max_lr): a failed
            # trial, recorded with the reason, not a crash of the experiment.
            raise ValueError(f"invalid schedule for this point: {config['schedule_error']}")
        trial_config = TrialConfig(
            workload=workload,
            optimizer=optimizer,
            schedule=parse_schedule(config["schedule"]),
            param_groups=param_groups,
            epochs=epochs,
            seed=int(config["seed"]),
            device=_device(),
            metric=metric,
            mode=mode,
        )
        node_id = ray.get_runtime_context().get_node_id()
        last: dict[str, Any] = {}

        steps_per_epoch = int(config["steps_per_epoch"])

        def report(result: EpochResult) -> None:
            last.clear()
            last.update(epoch_metrics(result, node_id=node_id))
            if result.step < result.epoch * steps_per_epoch or not math.isfinite(result.train_loss):
                # run_trial cuts an epoch short only when the loss diverged. Said now, because
                # a scheduler may stop the trial at this very result, before it returns.
                last[OUTCOME_KEY] = "diverged"
            # Blocks until the driver has the result; when Tune stops the trial (ASHA,
            # cancellation) this call ends the trial's thread instead of returning.
            tune.report(dict(last))

        outcome = run_trial(trial_config, report)
        if outcome.status == "diverged" and last and OUTCOME_KEY not in last:
            # One more result, the last epoch again, so the driver learns how the trial ended.
            tune.report({**last, OUTCOME_KEY: "diverged"})

    lrtune_trial.__name__ = TRAINABLE_NAME
    lrtune_trial.__qualname__ = TRAINABLE_NAME
    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(lrtune_trial, resources)


def _device() -> str:
    """`cuda` when Ray gave this trial (a share of) a GPU and torch can use it."""
    if not ray.get_gpu_ids():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
