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
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import ray
from lrtune.schemas.jobs import JobSpec
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, OptimizerSpec, ProbeResult, TrialConfig
from lrtune.workers.early_stopping import JUDGED_KEY, judged_value, probe_epochs, rung_epochs
from lrtune.workers.population import (
    PopulationProbing,
    SavedPopulation,
    population_size,
    run_in_chunks,
)
from lrtune.workers.results import (
    BRANCHES_KEY,
    MEMBERS_KEY,
    NODE_KEY,
    OUTCOME_KEY,
    PROBE_KEY,
    RESTORED_KEY,
    FinishedStatus,
    MemberNews,
    TrialError,
    TuneTrialConfig,
    diverged_at,
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

    def checkpoint_due(epoch: int, last_epoch: int) -> bool:
        if epoch >= last_epoch:
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
        # A horizon_halving rung trains its horizon, the whole schedule compressed to it.
        trial_epochs = int(config.get("epochs", epochs))
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
            epochs=trial_epochs,
            seed=int(config["seed"]),
            # The job's data order for the trial's phase (None: the workload orders its own).
            shuffle_seed=config.get("shuffle_seed"),
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
            if diverged_at(result, steps_per_epoch):
                # Said now, because a scheduler may stop the trial at this very result, before
                # it returns.
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
        checkpointing = Checkpointing(
            due=lambda epoch: checkpoint_due(epoch, trial_epochs),
            save=lambda s: pending.update(state=s),
        )

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

    trainable: Callable[[TuneTrialConfig], None] = lrtune_trial
    if spec.execution == "population":
        trainable = _population_trainable(spec, skip=skip, checkpoint_due=checkpoint_due, code=code)
    trainable.__name__ = TRAINABLE_NAME
    trainable.__qualname__ = TRAINABLE_NAME
    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(trainable, resources)


def _population_trainable(
    spec: JobSpec,
    *,
    skip: frozenset[str],
    checkpoint_due: Callable[[int, int], bool],
    code: CodeSnapshot | None,
) -> Callable[[TuneTrialConfig], None]:
    """The trainable of a job with execution "population": each Tune trial is a population
    (its config's `members`), trained by `run_population`, reporting after every epoch one
    result that carries each member's news (`MEMBERS_KEY`); the driver writes each member as a
    trial of its own.

    Early stopping inside a population: Tune's ASHA can only stop a whole Tune trial, but the
    members of a population reach each rung together, so the successive halving that ASHA
    makes asynchronous is exact here: at each of ASHA's rung epochs (`rung_epochs`) the top
    1/reduction_factor of the members that could go on (at least one) do, judged by their
    cooldown probes (one batched probe of them all) or by the raw metric, as the job says.
    Confirmation populations run to their end, unprobed.
    """
    workload = spec.workload
    param_groups = list(spec.param_groups)
    epochs = spec.budget.epochs
    metric, mode = spec.metric_name, spec.metric_mode
    rungs = rung_epochs(spec)
    probed = probe_epochs(spec)
    cooldown = spec.early_stopping.cooldown
    reduction_factor = spec.early_stopping.reduction_factor

    def lrtune_population(config: TuneTrialConfig) -> None:
        members = config.get("members") or []
        if all(member["trial_key"] in skip for member in members):
            tune.report({metric: math.nan, OUTCOME_KEY: "already_finished"})
            return
        if code is not None:
            code.activate()
        node_id = ray.get_runtime_context().get_node_id()
        device = _device()
        news: dict[int, MemberNews] = {}
        runnable: list[TuneTrialConfig] = []
        for member in members:
            if member.get("schedule_error"):
                # As a lone trial with such a point: failed, with the reason.
                error = f"invalid schedule for this point: {member['schedule_error']}"
                news[-1 - len(news)] = _news(member["trial_key"], status="failed", error=error)
            else:
                runnable.append(member)
        trial_configs = [
            TrialConfig(
                workload=workload,
                optimizer=OptimizerSpec.model_validate(member["optimizer"]),
                schedule=parse_schedule(member["schedule"]),
                param_groups=param_groups,
                epochs=int(member.get("epochs", epochs)),
                seed=int(member["seed"]),
                shuffle_seed=int(config["shuffle_seed"]),
                device=device,
                metric=metric,
                mode=mode,
            )
            for member in runnable
        ]
        last_epoch = max((c.epochs for c in trial_configs), default=epochs)
        search_phase = config.get("phase", "search") == "search"
        resume = _latest_population()
        pending: dict[str, Any] = {}

        def report(index: int, result: EpochResult) -> None:
            status: FinishedStatus | None = None
            if diverged_at(result, int(config["steps_per_epoch"])):
                status = "diverged"
            elif result.epoch >= trial_configs[index].epochs:
                status = "completed"
            entry = news.setdefault(index, _news(runnable[index]["trial_key"]))
            entry["epoch"] = result.model_dump()
            if entry["decision"] == "stop" and status is None:
                status = "pruned"
            entry["status"] = status

        def on_probe(index: int, probe: ProbeResult) -> None:
            news.setdefault(index, _news(runnable[index]["trial_key"]))["probe"] = (
                probe.model_dump()
            )

        def select(
            epoch: int, results: dict[int, EpochResult], probes: dict[int, ProbeResult]
        ) -> set[int]:
            if not search_phase or epoch not in rungs:
                return set()
            judged = {
                index: judged_value(probes.get(index, result).value(metric), mode=mode)
                for index, result in results.items()
            }
            # Best first; a tie keeps the earlier member.
            order = sorted(judged, key=lambda i: (-judged[i] if mode == "max" else judged[i], i))
            keep = set(order[: max(1, len(order) // reduction_factor)])
            for index in judged:
                entry = news.setdefault(index, _news(runnable[index]["trial_key"]))
                entry["decision"] = "continue" if index in keep else "stop"
            return set(judged) - keep

        def after_epoch(epoch: int) -> None:
            result: dict[str, Any] = {
                metric: _best_value(news.values(), metric, mode),
                "epoch": epoch,
                MEMBERS_KEY: [news[index] for index in sorted(news, key=_news_order)],
                NODE_KEY: node_id,
            }
            news.clear()
            if resume is not None and not pending.get("resumed"):
                # The first epoch after the checkpoint says where the members resumed from.
                pending["resumed"] = True
                result[RESTORED_KEY] = resume.state.epoch
            saved: SavedPopulation | None = pending.pop("saved", None)
            if saved is None:
                tune.report(result)
                return
            with tempfile.TemporaryDirectory(prefix="lrtune-checkpoint-") as folder:
                saved.save(Path(folder))
                tune.report(result, checkpoint=Checkpoint.from_directory(folder))

        probing = None
        if search_phase and probed and cooldown is not None:
            probing = PopulationProbing(epochs=probed, cooldown=cooldown, on_probe=on_probe)
        if not runnable:
            after_epoch(0)
            return
        try:
            run_in_chunks(
                trial_configs,
                report,
                # On CUDA as many members at a time as the free memory holds; on a CPU all.
                size=population_size(trial_configs),
                probing=probing,
                select=select,
                due=lambda epoch: checkpoint_due(epoch, last_epoch),
                save=lambda saved: pending.update(saved=saved),
                after_epoch=after_epoch,
                resume=resume,
            )
        except Exception as error:
            raise TrialError(describe_user_error(error)) from error

    return lrtune_population


def _news(
    trial_key: str, *, status: FinishedStatus | None = None, error: str | None = None
) -> MemberNews:
    return {
        "trial_key": trial_key,
        "epoch": None,
        "probe": None,
        "decision": None,
        "status": status,
        "error": error,
    }


def _best_value(news: Iterable[MemberNews], metric: str, mode: str) -> float:
    """The best finite value of `metric` among the members' epochs (Tune wants the job's
    metric in every result; NaN when none has one)."""
    values = [
        value
        for entry in news
        if entry["epoch"] is not None
        and (value := EpochResult.model_validate(entry["epoch"]).value(metric)) is not None
        and math.isfinite(value)
    ]
    if not values:
        return math.nan
    return max(values) if mode == "max" else min(values)


def _news_order(index: int) -> tuple[int, int]:
    # Members that failed before training (negative keys) first, then in member order.
    return (0, -index) if index < 0 else (1, index)


def _latest_population() -> SavedPopulation | None:
    """The population's latest checkpoint, when Tune restarted it from one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return SavedPopulation.load(Path(folder))


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
