"""One trial in plain PyTorch: train a workload under a schedule, report every epoch.

No Ray here: the Ray Tune runner wraps `run_trial` and turns `report` into `tune.report`, and
`run_trials_sequentially` runs configs in-process (for the CLI and tests).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lrtune.schemas.jobs import Cooldown
from lrtune.schemas.schedules import ParamGroupRule, ScheduleSpec
from lrtune.schemas.trials import (
    ENSEMBLE_PREFIX,
    EpochResult,
    OptimizerSpec,
    ProbeResult,
    TrialConfig,
    TrialOutcome,
    TrialOutcomeStatus,
)
from lrtune.workers.rng import rng_state, set_rng_state
from lrtune.workers.schedule_math import cycle_ends, learning_rate
from lrtune.workers.torch_schedule import ScheduleDriver, build_param_groups
from lrtune.workers.train_function import (
    FunctionState,
    TrainFunction,
    TrialContext,
    run_train_function,
)
from lrtune.workers.workloads import (
    TensorBatches,
    Workload,
    WorkloadError,
    build_training,
    check_reports_metric,
    seed_everything,
    set_shuffle_seed,
)
from schedulefree import AdamWScheduleFree, SGDScheduleFree
from torch import Tensor, nn

# Why a job with snapshots cannot train a user's loop.
TRAIN_FUNCTION_SNAPSHOTS = (
    "snapshots needs a workload that lrtune trains (a Workload); a train function's loop is its "
    "own, so lrtune cannot take its snapshots"
)

# Report callback: return True to stop the trial after this epoch (cancellation, ASHA).
Report = Callable[[EpochResult], bool | None]

# Weight of the past in the smoothed training loss that divergence is judged on: a single noisy
# batch does not end a trial, a loss that keeps climbing does within a few steps.
_LOSS_SMOOTHING = 0.9

# Training batches that recompute BatchNorm statistics at a schedule-free optimizer's average
# before it is evaluated: "about 50", as the schedulefree README says.
BATCHNORM_RECALIBRATION_BATCHES = 50
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class Probing:
    """Cooldown probes after the given epochs (1-based), each handed to `on_probe` before that
    epoch is reported (so a scheduler can judge the epoch by its probe)."""

    epochs: frozenset[int]
    cooldown: Cooldown
    on_probe: Callable[[ProbeResult], None]


@dataclass(frozen=True)
class Checkpointing:
    """After each epoch for which `due(epoch)` holds, the trial's state goes to `save`, before
    that epoch is reported."""

    due: Callable[[int], bool]
    save: Callable[[TrialState | FunctionState], None]


@dataclass(frozen=True)
class Forking:
    """Right after each of the given optimizer steps (counted from 0 at the trial's start), a copy
    of the trial's state goes to `on_fork`, mid-epoch or not, before the trial goes on: a
    branch resumed from it (`run_trial(..., resume=state)`) trains exactly as a trial that had
    been on its own schedule from the start, as long as the two schedules agree up to there
    (a training-length sweep: `lrtune.workers.sweep`)."""

    steps: frozenset[int]
    on_fork: Callable[[TrialState], None]


@dataclass
class TrialState:
    """Everything a trial needs to go on exactly after `epoch`: the model, the optimizer, the
    schedule's step, every global RNG, the divergence tracker, the epochs reported so far, and
    with `snapshots` the snapshots kept so far (weights on the CPU, oldest first) and the
    ensemble metrics of the latest cycle end.

    The data order is a function of (seed, epoch) for `TensorBatches`, and a loader drawing
    from the global RNGs is covered by their states, so the position is the epoch itself. A
    fork's state may be mid-epoch (`step` beyond `epoch` whole epochs, `epoch_losses` the
    training losses of the epoch so far): resuming it skips the epoch's batches already trained,
    which only `TensorBatches` can replay.
    A schedule-free optimizer's state is taken in eval mode, as schedulefree asks: the model
    holds the average x (BatchNorm statistics recomputed at x), the optimizer says
    `train_mode` False, and the resumed trial swaps back to train mode at its next epoch,
    exactly as the uninterrupted one does.
    """

    epoch: int
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    rng: dict[str, Any]
    reference_loss: float | None
    smoothed: float
    history: list[EpochResult]
    elapsed_s: float
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    ensemble: dict[str, float] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)

    def save(self, path: Path) -> None:
        payload = {**self.__dict__, "history": [r.model_dump() for r in self.history]}
        torch.save(payload, path)


def load_state(path: Path) -> TrialState | FunctionState:
    """A trial checkpoint's state: a built-in trial's or a train function's."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("kind") == "function":
        return FunctionState.from_payload(payload)
    payload["history"] = [EpochResult.model_validate(r) for r in payload["history"]]
    return TrialState(**payload)


def run_trial(
    config: TrialConfig,
    report: Report,
    *,
    probing: Probing | None = None,
    checkpointing: Checkpointing | None = None,
    resume: TrialState | FunctionState | None = None,
    forking: Forking | None = None,
) -> TrialOutcome:
    """Train `config.workload` for `config.epochs` epochs, calling `report` after each epoch.

    The rate is set before every optimizer step from the schedule (t = steps already taken), times
    each parameter group's multiplier. Ends "stopped" when `report` returns True, "diverged" when
    a training loss is NaN/inf or the smoothed loss exceeds `divergence_factor` x the first
    batch's loss (after reporting that epoch), else "completed". Raises WorkloadError for a
    workload that cannot be built and ValueError for a config that cannot run (e.g. no CUDA).

    `probing` runs cooldown probes after some epochs, `checkpointing` saves the trial's state,
    and `resume` goes on from a saved state: the epochs after it are the same, number for
    number, as those of an uninterrupted run (on a CPU), and probes change nothing either.

    `forking` hands copies of the state to a callback after some steps (branches of a sweep).

    With `config.snapshots` = M (clr and sgdr), a snapshot of the weights is taken after each
    cycle's last step, mid-epoch or not, and the last M kept. Every epoch from the first cycle
    end on reports `ensemble_<name>` for val_loss and each workload metric: the metric of the
    average prediction of the snapshots kept at the latest cycle end (`evaluate_ensemble`),
    so it changes at the epochs in which a cycle ends. Epochs before the first carry none.
    """
    started = time.perf_counter()
    device = _device(config.device)
    seed_everything(config.seed)
    built = _build(config)
    if isinstance(built, TrainFunction):
        if config.snapshots is not None:
            raise ValueError(f"this is a train function: {TRAIN_FUNCTION_SNAPSHOTS}")
        if config.shuffle_seed is not None:
            raise ValueError("shuffle_seed needs a built-in loop; a train function orders its data")
        if resume is not None and not isinstance(resume, FunctionState):
            raise ValueError("a train function's trial cannot resume from a built-in's state")
        if forking is not None:
            raise ValueError("a train function's trial cannot fork: its loop is the user's")
        return _run_function(built, config, report, device, checkpointing, resume)
    if resume is not None and not isinstance(resume, TrialState):
        raise ValueError("a built-in trial cannot resume from a train function's state")
    workload = built
    if config.shuffle_seed is not None:
        set_shuffle_seed(workload, config.shuffle_seed)
    metric = config.metric_name
    check_reports_metric(workload, metric, label=config.workload.label)
    if config.schedule.policy == "plateau" and config.schedule.mode != config.metric_mode:
        raise ValueError(
            f"plateau watches {metric!r}, whose mode is {config.metric_mode!r}, but its own "
            f"mode is {config.schedule.mode!r}"
        )
    steps_per_epoch = workload.steps_per_epoch
    total_steps = config.epochs * steps_per_epoch

    model = workload.model.to(device)
    train_loader: Iterable[tuple[Tensor, Tensor]] = workload.train_loader
    val_loader: Iterable[tuple[Tensor, Tensor]] = workload.val_loader
    if isinstance(workload.train_loader, TensorBatches):
        train_loader = workload.train_loader.to(device)
    if isinstance(workload.val_loader, TensorBatches):
        val_loader = workload.val_loader.to(device)
    optimizer = build_optimizer(model, config.optimizer, config.schedule, config.param_groups)
    driver = ScheduleDriver(optimizer, config.schedule, total_steps=total_steps)
    snapshot_steps = (
        frozenset(cycle_ends(config.schedule, total_steps)) if config.snapshots else frozenset()
    )
    snapshots: list[dict[str, Any]] = []
    ensemble: dict[str, float] = {}

    history: list[EpochResult] = []
    step = 0
    first_epoch = 0
    reference_loss: float | None = None
    smoothed = 0.0
    # Batches of the first epoch already trained (a mid-epoch fork resumes after them).
    skip = 0
    resumed_losses: list[float] = []
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        driver.load_state_dict(resume.schedule)
        set_rng_state(resume.rng)
        history = list(resume.history)
        step, first_epoch = resume.step, resume.epoch
        reference_loss, smoothed = resume.reference_loss, resume.smoothed
        snapshots, ensemble = list(resume.snapshots), dict(resume.ensemble)
        started -= resume.elapsed_s
        skip = step - first_epoch * steps_per_epoch
        resumed_losses = list(resume.epoch_losses)
        if skip and not isinstance(workload.train_loader, TensorBatches):
            raise ValueError(
                "a mid-epoch resume replays the epoch's first batches, which needs a train_loader "
                "whose order is a function of (seed, epoch): TensorBatches"
            )

    def state_now(epoch_done: int, losses: list[float]) -> TrialState:
        return TrialState(
            epoch=epoch_done,
            step=step,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            schedule=driver.state_dict(),
            rng=rng_state(),
            reference_loss=reference_loss,
            smoothed=smoothed,
            history=list(history),
            elapsed_s=time.perf_counter() - started,
            snapshots=list(snapshots),
            ensemble=dict(ensemble),
            epoch_losses=list(losses),
        )

    status: TrialOutcomeStatus = "completed"
    for epoch in range(first_epoch, config.epochs):
        set_epoch = getattr(train_loader, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        train_weights(model, optimizer)
        losses, resumed_losses = resumed_losses, []
        diverged = False
        snapshot_taken = False
        for position, (inputs, targets) in enumerate(train_loader):
            if position < skip:
                continue  # trained before the fork this run resumes from
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = workload.loss_fn(model(inputs), targets)
            loss_value = float(loss.item())
            losses.append(loss_value)
            if not math.isfinite(loss_value):
                # Stepping on a NaN/inf loss only spreads it into the weights; stop here.
                diverged = True
                break
            loss.backward()
            optimizer.step()
            step += 1
            driver.step()
            if step in snapshot_steps:
                assert config.snapshots is not None
                snapshots = [*snapshots, take_snapshot(model)][-config.snapshots :]
                snapshot_taken = True
            # Bias-corrected exponential average, as in the LR range test (Smith 2017).
            smoothed = _LOSS_SMOOTHING * smoothed + (1 - _LOSS_SMOOTHING) * loss_value
            running = smoothed / (1 - _LOSS_SMOOTHING**step)
            if reference_loss is None:
                reference_loss = loss_value
            elif running > config.divergence_factor * reference_loss > 0:
                diverged = True
                break
            if forking is not None and step in forking.steps:
                # Copies: the branch's optimizer may keep the tensors it is given.
                forking.on_fork(copy.deepcopy(state_now(epoch, losses)))
        skip = 0
        # Schedule-free: from here to the next epoch (evaluation, probe, checkpoint, report) the
        # model holds the average x.
        eval_weights(model, optimizer, train_loader=train_loader, device=device, data_epoch=epoch)
        val_loss, metrics = evaluate(workload, model, val_loader, device)
        if snapshot_taken:
            ensemble_loss, ensemble_metrics = evaluate_ensemble(
                workload, model, snapshots, val_loader, device
            )
            ensemble = {
                f"{ENSEMBLE_PREFIX}{name}": value
                for name, value in {"val_loss": ensemble_loss, **ensemble_metrics}.items()
            }
        result = EpochResult(
            epoch=epoch + 1,
            step=step,
            # The rate of the epoch's last update; before any update, the first one's.
            lr=driver.rate(max(step - 1, 0)),
            train_loss=float(np.mean(losses)) if losses else math.nan,
            val_loss=val_loss,
            metrics={**metrics, **ensemble},
            elapsed_s=time.perf_counter() - started,
        )
        history.append(result)
        # Plateau's rate follows the job's metric: the driver gets each epoch's value once,
        # after its evaluation (every other policy ignores it; only an ensemble metric, which
        # plateau never has, can be missing: before the first cycle end).
        metric_value = result.value(metric)
        if metric_value is None and not metric.startswith(ENSEMBLE_PREFIX):
            raise WorkloadError(
                f"the job's metric {metric!r} is not among the workload's: {sorted(metrics)}"
            )
        driver.on_epoch_end(math.nan if metric_value is None else metric_value)
        if probing is not None and epoch + 1 in probing.epochs and not diverged and step > 0:
            probing.on_probe(
                cooldown_probe(
                    workload,
                    model,
                    optimizer,
                    config,
                    train_loader=train_loader,
                    val_loader=val_loader,
                    device=device,
                    epoch=epoch + 1,
                    step=step,
                    cooldown=probing.cooldown,
                    start_lr=driver.rate(step),
                )
            )
        if checkpointing is not None and not diverged and checkpointing.due(epoch + 1):
            checkpointing.save(state_now(epoch + 1, []))
        stop = report(result)
        if diverged:
            status = "diverged"
            break
        if stop:  # True, or a truthy numpy bool (Optuna's should_prune() returns one)
            status = "stopped" if epoch + 1 < config.epochs else "completed"
            break
    return trial_outcome(
        status, history, step, metric, config.metric_mode, time.perf_counter() - started
    )


def _run_function(
    function: TrainFunction,
    config: TrialConfig,
    report: Report,
    device: torch.device,
    checkpointing: Checkpointing | None,
    resume: FunctionState | None,
) -> TrialOutcome:
    """`run_trial` for a user's training loop: the loop trains, the context reports."""

    def on_epoch(result: EpochResult, state: FunctionState | None) -> bool:
        if state is not None and checkpointing is not None:
            checkpointing.save(state)
        return bool(report(result))

    context = TrialContext(
        params=dict(config.workload.params),
        seed=config.seed,
        device=device,
        epochs=config.epochs,
        steps_per_epoch=function.steps_per_epoch,
        metric=config.metric_name,
        mode=config.metric_mode,
        schedule=config.schedule,
        rules=list(config.param_groups),
        divergence_factor=config.divergence_factor,
        on_epoch=on_epoch,
        checkpoint_due=checkpointing.due if checkpointing is not None else lambda epoch: False,
        resume=resume,
    )
    run_train_function(function, context)
    steps = context.history[-1].step if context.history else 0
    return trial_outcome(
        context.status,
        context.history,
        steps,
        config.metric_name,
        config.metric_mode,
        time.perf_counter() - context.started,
    )


def cooldown_probe(
    workload: Workload,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrialConfig,
    *,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    val_loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    epoch: int,
    step: int,
    cooldown: Cooldown,
    start_lr: float | None = None,
) -> ProbeResult:
    """What the trial would reach if its schedule annealed now.

    A branch: copies of the model and the optimizer train `ceil(fraction x step)` more steps on
    the batches that come next (the following epochs' order), the rate going from the
    schedule's current one, lr(step), to 0 in `cooldown.shape` (times each group's
    multiplier), then are evaluated and thrown away. The global RNGs are put back as they
    were, so the trial itself goes on exactly as without the probe. `start_lr` is the
    schedule's rate at `step` when it is not the spec's lr(step) alone (plateau's follows the
    metric: the trial's driver knows it).

    Schedule-free: the branch starts from the trial's eval-mode state, trains in train mode
    (gradients at y) and is evaluated at its average x, BatchNorm recomputed there. What
    annealing means for it: the rate going to 0 shrinks the steps of its fast iterate z, while
    the average x keeps weighting every step alike (schedulefree weights by lr_max, the largest
    rate so far, not the current one), so the probe's x averages the trial so far with a
    cooling-down z. It costs the same steps as every other trial's probe, and since the
    trial's own x is already an anytime estimate, it gains less over its epoch's value than
    a scheduled trial's probe does.
    """
    started = time.perf_counter()
    saved_rng = rng_state()
    branch = copy.deepcopy(model)
    branch_optimizer = build_optimizer(
        branch, config.optimizer, config.schedule, config.param_groups
    )
    # A deep copy: load_state_dict may keep the very tensors it is given (same dtype and
    # device), and the branch's steps would then move the trial's momentum buffers.
    branch_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    steps = max(1, math.ceil(cooldown.fraction * step))
    if start_lr is None:
        start_lr = learning_rate(config.schedule, step)
    multipliers = [group.get("lr_mult", 1.0) for group in branch_optimizer.param_groups]
    # Schedule-free: the trial is at x (eval mode) here; the branch trains at y like the trial.
    train_weights(branch, branch_optimizer)
    losses: list[float] = []
    done = 0
    data_epoch = epoch
    set_epoch = getattr(train_loader, "set_epoch", None)
    while done < steps:
        if callable(set_epoch):
            set_epoch(data_epoch)
        data_epoch += 1
        for inputs, targets in train_loader:
            rate = start_lr * cooldown_factor(cooldown.shape, done, steps)
            for group, multiplier in zip(branch_optimizer.param_groups, multipliers, strict=True):
                group["lr"] = rate * multiplier
            inputs, targets = inputs.to(device), targets.to(device)
            branch_optimizer.zero_grad(set_to_none=True)
            loss = workload.loss_fn(branch(inputs), targets)
            losses.append(float(loss.item()))
            if not math.isfinite(losses[-1]):
                done = steps
                break
            loss.backward()
            branch_optimizer.step()
            done += 1
            if done == steps:
                break
    eval_weights(
        branch, branch_optimizer, train_loader=train_loader, device=device, data_epoch=data_epoch
    )
    val_loss, metrics = evaluate(workload, branch, val_loader, device)
    set_rng_state(saved_rng)
    return ProbeResult(
        epoch=epoch,
        step=step,
        cooldown_steps=steps,
        train_loss=float(np.mean(losses)) if losses else math.nan,
        val_loss=val_loss,
        metrics=metrics,
        elapsed_s=time.perf_counter() - started,
    )


def cooldown_factor(shape: str, index: int, steps: int) -> float:
    """The share of the starting rate at the probe's `index`-th step of `steps` (0-based):
    1 at the first step, approaching 0 at the last (Hägele et al. 2024's cooldown shapes)."""
    progress = index / steps
    return 1.0 - progress if shape == "linear" else 1.0 - math.sqrt(progress)


def build_optimizer(
    model: nn.Module,
    spec: OptimizerSpec,
    schedule: ScheduleSpec,
    rules: Sequence[ParamGroupRule] = (),
) -> torch.optim.Optimizer:
    """The optimizer over `model`'s parameter groups (one per rule, the rest at multiplier 1).

    The initial `lr` is lr(0); `ScheduleDriver` owns it from then on. The schedule-free
    optimizers get `warmup_steps=0`: the schedule's warmup sets their rate every step, so the
    rate they use is the one the preview shows. That is the same algorithm as their own warmup:
    schedulefree reads group["lr"] at each step (times its warmup factor, 1 here) and weights
    the average by lr_max**2, lr_max the largest rate so far, which under fixed + warmup is the
    current rate (its warmup ramps from lr/W at step 0, ours from `warmup_start_lr`).
    """
    groups: list[dict[str, Any]] = build_param_groups(model, rules)
    lr = learning_rate(schedule, 0)
    if spec.name == "sgd_schedulefree":
        return SGDScheduleFree(
            groups, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay, warmup_steps=0
        )
    if spec.name == "adamw_schedulefree":
        return AdamWScheduleFree(
            groups,
            lr=lr,
            betas=spec.betas,
            eps=spec.eps,
            weight_decay=spec.weight_decay,
            warmup_steps=0,
        )
    if spec.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    optimizer_class = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return optimizer_class(
        groups, lr=lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay
    )


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` keeps two sets of weights (schedulefree's, with train()/eval())."""
    return isinstance(optimizer, SGDScheduleFree | AdamWScheduleFree)


def train_weights(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Train mode: `model.train()`, and a schedule-free optimizer's weights to y, where its
    gradients are taken (`optimizer.train()`)."""
    model.train()
    if is_schedule_free(optimizer):
        optimizer.train()  # type: ignore[attr-defined]


def eval_weights(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    data_epoch: int,
) -> None:
    """Eval mode for a schedule-free optimizer: its weights to the average x
    (`optimizer.eval()`), what is evaluated and checkpointed, with BatchNorm statistics
    recomputed at x. Nothing for other optimizers (their weights are the ones trained)."""
    if is_schedule_free(optimizer):
        optimizer.eval()  # type: ignore[attr-defined]
        recalibrate_batchnorm(model, train_loader, device=device, data_epoch=data_epoch)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device,
    data_epoch: int,
    batches: int = BATCHNORM_RECALIBRATION_BATCHES,
) -> bool:
    """Recompute every BatchNorm layer's running statistics at the model's current weights from
    `batches` training batches: forward passes in train mode, no gradient, no update (the
    schedulefree README's recipe before evaluating x; the statistics gathered while training
    are y's). Returns whether the model has BatchNorm.

    The statistics are reset and averaged equally over the batches (momentum None), not blended
    into y's; each layer's momentum and the model's mode are put back after. The batches are
    those of `data_epoch` on (the next epochs' too when one has fewer). The global RNGs are
    handed back as they were, so the trial's data order and dropout draws stay its own.
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCHNORM) and m.track_running_stats]
    if not norms:
        return False
    saved_rng = rng_state()
    momenta = [norm.momentum for norm in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    model.train()
    seen = 0
    set_epoch = getattr(train_loader, "set_epoch", None)
    while seen < batches:
        if callable(set_epoch):
            set_epoch(data_epoch)
        data_epoch += 1
        before = seen
        for inputs, _ in train_loader:
            model(inputs.to(device))
            seen += 1
            if seen == batches:
                break
        if seen == before:
            break  # an empty loader; steps_per_epoch refuses one before any training
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)
    set_rng_state(saved_rng)
    return True


def take_snapshot(model: nn.Module) -> dict[str, Any]:
    """The model's weights and buffers as they are now, copied to the CPU."""
    return {
        name: value.detach().to("cpu", copy=True) if isinstance(value, Tensor) else value
        for name, value in model.state_dict().items()
    }


@torch.no_grad()
def evaluate_ensemble(
    workload: Workload,
    model: nn.Module,
    snapshots: Sequence[dict[str, Any]],
    val_loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    """`evaluate` of the snapshot ensemble: the average prediction of `snapshots` (state dicts
    of `model`, loaded into copies of it; `model` itself is left alone), scored by the
    workload's own loss and metrics.

    For "probabilities" (the default; outputs are logits) the softmax probabilities are
    averaged and handed on as their logarithm, log(mean_i softmax(o_i)), computed as
    logsumexp_i(log_softmax(o_i)) - log(M) so that no probability underflows to log(0); it is
    a valid logit vector whose softmax is the average. For "outputs" the outputs are averaged.
    """
    if not snapshots:
        raise ValueError("an ensemble needs at least one snapshot")
    members = []
    for snapshot in snapshots:
        member = copy.deepcopy(model)
        member.load_state_dict(snapshot)
        members.append(member.eval())
    log_count = math.log(len(members))

    def average(inputs: Tensor) -> Tensor:
        outputs = torch.stack([member(inputs) for member in members])
        if workload.ensemble_average == "outputs":
            return outputs.mean(dim=0)
        return torch.logsumexp(outputs.log_softmax(dim=-1), dim=0) - log_count

    return _score(workload, average, val_loader, device)


@torch.no_grad()
def evaluate(
    workload: Workload,
    model: nn.Module,
    val_loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    """Validation loss (mean over examples) and the workload's metrics on the whole val set."""
    model.eval()
    return _score(workload, model, val_loader, device)


def _score(
    workload: Workload,
    predict: Callable[[Tensor], Tensor],
    val_loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    outputs: list[Tensor] = []
    targets: list[Tensor] = []
    total_loss = 0.0
    count = 0
    for inputs, batch_targets in val_loader:
        inputs, batch_targets = inputs.to(device), batch_targets.to(device)
        batch_outputs = predict(inputs)
        # loss_fn gives a batch mean; weight it so a smaller last batch counts for what it is.
        total_loss += float(workload.loss_fn(batch_outputs, batch_targets).item()) * len(inputs)
        count += len(inputs)
        outputs.append(batch_outputs)
        targets.append(batch_targets)
    if count == 0:
        raise WorkloadError("the workload's val_loader yields no batches")
    all_outputs, all_targets = torch.cat(outputs), torch.cat(targets)
    metrics = {name: float(fn(all_outputs, all_targets)) for name, fn in workload.metrics.items()}
    return total_loss / count, metrics


def run_trials_sequentially(
    configs: Iterable[TrialConfig],
    *,
    on_epoch: Callable[[int, EpochResult], bool | None] | None = None,
) -> list[TrialOutcome]:
    """Run trials one after another in this process; a failing trial is recorded, not raised.

    `on_epoch(index, result)` sees every epoch of the `index`-th config (e.g. a CLI printing a
    table) and may return True to stop that trial. Each outcome's `elapsed_s` times the trial.
    """
    outcomes: list[TrialOutcome] = []
    for index, config in enumerate(configs):
        started = time.perf_counter()

        def report(result: EpochResult, index: int = index) -> bool | None:
            return on_epoch(index, result) if on_epoch is not None else None

        try:
            outcomes.append(run_trial(config, report))
        except Exception as error:  # recorded as data, as Ray Tune records a failed trial
            outcomes.append(
                TrialOutcome(
                    status="failed",
                    epochs_done=0,
                    metric=config.metric_name,
                    elapsed_s=time.perf_counter() - started,
                    error=f"{type(error).__name__}: {error}",
                )
            )
    return outcomes


def _build(config: TrialConfig) -> Workload | TrainFunction:
    spec = config.workload
    target = spec.name if spec.name is not None else spec.entrypoint
    assert target is not None  # WorkloadSpec guarantees one of the two
    return build_training(target, spec.params, seed=config.seed)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this worker has no usable CUDA device")
    return torch.device(name)


def trial_outcome(
    status: TrialOutcomeStatus,
    history: list[EpochResult],
    steps: int,
    metric: str,
    mode: str,
    elapsed_s: float,
) -> TrialOutcome:
    """How a trial ended, from its epochs: its status, its last epoch and its best value of
    `metric` under `mode` (epochs without a finite value skipped). Shared by lone trials and
    population members."""
    best_metric: float | None = None
    best_epoch: int | None = None
    for result in history:
        value = result.value(metric)
        if value is None or not math.isfinite(value):
            continue
        if best_metric is None or (value > best_metric if mode == "max" else value < best_metric):
            best_metric, best_epoch = value, result.epoch
    return TrialOutcome(
        status=status,
        epochs_done=len(history),
        steps_done=steps,
        last=history[-1] if history else None,
        metric=metric,
        best_metric=best_metric,
        best_epoch=best_epoch,
        elapsed_s=elapsed_s,
    )
