"""The Ray Tune function trainable: one trial of a job, `run_trial` reporting through `tune.report`.

The trial's config comes from the experiment's searcher (`lrtune.workers.experiment`): the
trial key, policy, its arm's optimizer, sampled point, seed and the schedule already resolved in
steps. What is the same for every trial of the job (workload, epochs, metric, rungs) is bound
when the trainable is made. No database here: results, probes and checkpoints travel to the
driver through Tune (checkpoints by way of the run's storage).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import ray
from lrtune.schemas.jobs import JobSpec
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, OptimizerSpec, ProbeResult, TrialConfig
from lrtune.workers.early_stopping import JUDGED_KEY, judged_value, probe_epochs, rung_epochs
from lrtune.workers.results import (
    BRANCHES_KEY,
    OUTCOME_KEY,
    PROBE_KEY,
    RESTORED_KEY,
    TrialError,
    TuneTrialConfig,
    epoch_metrics,
)
from lrtune.workers.sweep import Branch, Horizon, run_sweep
from lrtune.workers.train_function import FunctionState
from lrtune.workers.trial import Checkpointing, Probing, TrialState, load_state, run_trial
from lrtune.workers.user_code import CodeSnapshot, describe_user_error
from ray import tune
from ray.tune import Checkpoint

# Tune names the trainable after the function; Tuner.restore checks the name, so it is fixed.
TRAINABLE_NAME = "lrtune_trial"


# The file a trial checkpoint holds (a `TrialState`), in the folder Tune persists.
CHECKPOINT_FILE = "trial.pt"


def make_trainable(
    spec: JobSpec,
    *,
    skip_keys: Collection[str] = (),
    checkpoint_every_epochs: int = 0,
    code: CodeSnapshot | None = None,
) -> Callable[[dict[str, Any]], None]:
    """The trainable for `spec`'s trials, with the resources each trial asks Ray for.

    Trials whose key is in `skip_keys` (finished in the database already) return at once. A
    trial checkpoints through Tune after every rung epoch of the job's ASHA and every
    `checkpoint_every_epochs` epochs (0: rungs only), probes at the rungs when judged by
    cooldown, and resumes from its latest checkpoint when Tune restarts it (a restored job, a
    lost node). `code` is the job's snapshot of the users' code folders, made importable in
    every trial's process before the workload is built.
    """
    skip = frozenset(skip_keys)
    workload = spec.workload
    param_groups = list(spec.param_groups)
    epochs = spec.budget.epochs
    metric, mode = spec.metric_name, spec.metric_mode
    rungs = rung_epochs(spec)
    probed = probe_epochs(spec)
    cooldown = spec.early_stopping.cooldown

    def checkpoint_due(epoch: int) -> bool:
        if epoch >= epochs:
            return False  # a finished trial is never resumed
        every = checkpoint_every_epochs
        return epoch in rungs or (every > 0 and epoch % every == 0)

    def lrtune_trial(config: TuneTrialConfig) -> None:
        if config["trial_key"] in skip:
            # Tune insists on the metric in a trial's results; the driver ignores this one.
            tune.report({metric: math.nan, OUTCOME_KEY: "already_finished"})
            return
        if config.get("schedule_error"):
            # The sampled point makes no valid schedule (e.g. base_lr above max_lr): a failed
            # trial, recorded with the reason, not a crash of the experiment.
            raise ValueError(f"invalid schedule for this point: {config['schedule_error']}")
        # A config from before trial configs carried the optimizer (a job resumed across an
        # upgrade) trains with its arm's, as it did.
        optimizer = (
            OptimizerSpec.model_validate(config["optimizer"])
            if config.get("optimizer") is not None
            else spec.optimizer_for(str(config["policy"]))
        )
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
            snapshots=spec.snapshots,
        )
        if code is not None:
            code.activate()
        node_id = ray.get_runtime_context().get_node_id()
        resume = _latest_state()
        last: dict[str, Any] = {}
        # What the epoch being reported brought besides its metrics: its probe, its state.
        pending: dict[str, Any] = {}
        steps_per_epoch = int(config["steps_per_epoch"])

        def report(result: EpochResult) -> None:
            last.clear()
            # Tune wants the job's metric in every result: an ensemble's is NaN (not stored)
            # before the trial's first cycle ends.
            last.update({metric: math.nan, **epoch_metrics(result, node_id=node_id)})
            if result.step < result.epoch * steps_per_epoch or not math.isfinite(result.train_loss):
                # run_trial cuts an epoch short only when the loss diverged. Said now, because
                # a scheduler may stop the trial at this very result, before it returns.
                last[OUTCOME_KEY] = "diverged"
            extra: dict[str, Any] = {}
            if resume is not None and result.epoch == resume.epoch + 1:
                # The first epoch after the checkpoint says where the trial resumed from.
                extra[RESTORED_KEY] = resume.epoch
            probe: ProbeResult | None = pending.pop("probe", None)
            if probe is not None:
                extra[PROBE_KEY] = probe.model_dump(mode="json")
                extra[JUDGED_KEY] = judged_value(probe.value(metric), mode=mode)
            branches: list[dict[str, Any]] | None = pending.pop("branches", None)
            if branches:
                extra[BRANCHES_KEY] = branches
            state: TrialState | FunctionState | None = pending.pop("state", None)
            # Blocks until the driver has the result; when Tune stops the trial (ASHA,
            # cancellation) this call ends the trial's thread instead of returning.
            if state is None:
                tune.report({**last, **extra})
                return
            with tempfile.TemporaryDirectory(prefix="lrtune-checkpoint-") as folder:
                state.save(Path(folder) / CHECKPOINT_FILE)
                # Tune copies the folder to the run's storage before this returns.
                tune.report({**last, **extra}, checkpoint=Checkpoint.from_directory(folder))

        probing = None
        if probed and cooldown is not None:
            probing = Probing(
                epochs=probed, cooldown=cooldown, on_probe=lambda p: pending.update(probe=p)
            )
        checkpointing = Checkpointing(due=checkpoint_due, save=lambda s: pending.update(state=s))

        def on_branch(branch: Branch) -> None:
            # A horizon of a sweep, run: it goes with the trunk's next result.
            pending.setdefault("branches", []).append(branch.to_json())

        horizons = [Horizon.from_json(h) for h in config.get("horizons") or []]
        try:
            if horizons:
                outcome = run_sweep(
                    trial_config,
                    horizons,
                    report,
                    on_branch=on_branch,
                    checkpointing=checkpointing,
                    resume=resume,
                )
            else:
                outcome = run_trial(
                    trial_config,
                    report,
                    probing=probing,
                    checkpointing=checkpointing,
                    resume=resume,
                )
        except Exception as error:
            # The trial's error in SQL names the user's exception and the line of their code
            # it came from, not lrtune's frames around it.
            raise TrialError(describe_user_error(error)) from error
        closing: dict[str, Any] = {}
        if outcome.status == "diverged" and last and OUTCOME_KEY not in last:
            # One more result, the last epoch again, so the driver learns how the trial ended.
            closing[OUTCOME_KEY] = "diverged"
        if pending.get("branches"):
            # The horizons a diverged trunk never forked diverged with it (lrtune.workers.sweep).
            closing[BRANCHES_KEY] = pending.pop("branches")
        if closing and last:
            tune.report({**last, **closing})

    lrtune_trial.__name__ = TRAINABLE_NAME
    lrtune_trial.__qualname__ = TRAINABLE_NAME
    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(lrtune_trial, resources)


def _latest_state() -> TrialState | FunctionState | None:
    """The state of the trial's latest checkpoint, when Tune restarted it from one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_state(Path(folder) / CHECKPOINT_FILE)


def _device() -> str:
    """`cuda` when Ray gave this trial (a share of) a GPU and torch can use it."""
    if not ray.get_gpu_ids():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
