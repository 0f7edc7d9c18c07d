"""Population trials: K trials of one workload trained together, as one batched model.

The members share the workload (architecture, data, batch size), the optimizer spec, the
device and the order of the training batches; each has its own schedule (and param-group
rules) and its own seed, which initialises its weights exactly as `run_trial` would. Their
parameters are stacked (`torch.func.stack_module_state`) and one `vmap`ped `functional_call`
runs every member on the same batch; the optimizer is torch's SGD / Adam / AdamW written over
the stacked tensors with a per-member rate, in torch's order of operations.

Equivalence: a member trains as `run_trial` trains its config on its own, the batches ordered
by the population's shuffle seed: the config's `shuffle_seed` (its `seed` when None), which every
member must share. So a population of trials of one seed needs nothing more, and members of
several seeds are lone trials with `shuffle_seed` set: a job's trials carry their phase's order
(`lrtune.workers.experiment`), so each member equals the trial the job would train alone.
Losses and weights agree to float rounding (batched matmuls sum in another order), not bit for
bit.

Not fusible, with the reason (`NotFusible`): train functions (their loop is their own),
schedule-free optimizers (two weight sets and a train/eval swap, not written here), models with
running statistics (BatchNorm's in-place buffer updates), dropout (a lone trial draws its masks
from the global RNG, one model at a time, which a batched draw cannot reproduce), loaders other
than `TensorBatches` (their order is not a function of a seed).

A member that diverges, is stopped by `report` or reaches its epochs leaves the batch: its
slice of every stacked tensor is dropped, so the rest train as fast as a smaller population.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lrtune.schemas.jobs import Cooldown
from lrtune.schemas.trials import (
    EpochResult,
    OptimizerSpec,
    ProbeResult,
    TrialConfig,
    TrialOutcome,
    TrialOutcomeStatus,
)
from lrtune.workers.rng import rng_state, set_rng_state
from lrtune.workers.torch_schedule import ScheduleDriver, build_param_groups
from lrtune.workers.trial import cooldown_factor, trial_outcome
from lrtune.workers.workloads import (
    TensorBatches,
    Workload,
    build_training,
    check_reports_metric,
    seed_everything,
)
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

# report(member index, epoch result): True stops that member after this epoch.
PopulationReport = Callable[[int, EpochResult], bool | None]
# select(epoch, results, probes): which of the members that could go on past `epoch` (their
# results, and their probes at a probe epoch) stop there; early stopping inside a population.
PopulationSelect = Callable[[int, dict[int, EpochResult], dict[int, ProbeResult]], set[int]]

# As in run_trial: the weight of the past in the smoothed loss divergence is judged on.
_LOSS_SMOOTHING = 0.9

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class NotFusible(ValueError):
    """These trials cannot train as one population; the message says why."""


def shuffle_seed(config: TrialConfig) -> int:
    """What a trial's batch order follows: its `shuffle_seed`, else its `seed` (the built-ins
    order by it, and user code is built after the global RNGs are seeded with it)."""
    return config.shuffle_seed if config.shuffle_seed is not None else config.seed


def check_fusible(configs: Sequence[TrialConfig]) -> None:
    """NotFusible unless the configs can share one batched model (before building anything;
    `run_population` checks the built model too)."""
    if not configs:
        raise NotFusible("a population needs at least one member")
    first = configs[0]
    for config in configs[1:]:
        for what in ("workload", "optimizer", "device"):
            if getattr(config, what) != getattr(first, what):
                raise NotFusible(f"members differ in {what}: a population shares it")
        if shuffle_seed(config) != shuffle_seed(first):
            raise NotFusible(
                "members differ in their data order (shuffle_seed, else seed): a population "
                "trains every member on the same batches"
            )
    # `snapshots` comes with snapshot ensembles (another branch): a population takes none, so
    # such a trial must run alone. getattr until both are merged, then `config.snapshots`.
    if any(config.snapshots for config in configs):
        raise NotFusible("snapshot ensembles are taken by lone trials only, not in a population")
    if first.optimizer.schedule_free:
        raise NotFusible(
            f"{first.optimizer.name} keeps two weight sets and swaps them for evaluation; "
            "populations fuse sgd, adam and adamw"
        )


def check_workload_fusible(workload: Workload) -> None:
    """NotFusible for a built workload whose model or loaders cannot be batched (see the
    module): its data must come as `TensorBatches`, its model `check_model_fusible`."""
    for name, loader in (
        ("train_loader", workload.train_loader),
        ("val_loader", workload.val_loader),
    ):
        if not isinstance(loader, TensorBatches):
            raise NotFusible(
                f"its {name} is a {type(loader).__name__}, not TensorBatches: a population "
                "needs batches that are a function of a seed and an epoch, shared by every member"
            )
    check_model_fusible(workload.model)


def check_model_fusible(model: nn.Module) -> None:
    """NotFusible for a model whose forward pass cannot be batched exactly (see the module)."""
    for name, module in model.named_modules():
        if getattr(module, "track_running_stats", False):
            raise NotFusible(
                f"{name or 'the model'} ({type(module).__name__}) updates running statistics "
                "in place while training; populations do not batch those buffers"
            )
        if isinstance(module, _DROPOUT) and module.p > 0:
            raise NotFusible(
                f"{name or 'the model'} ({type(module).__name__}, p={module.p}) draws masks "
                "from the global RNG one model at a time, which a batched draw cannot reproduce"
            )


# The share of a GPU's free memory a population may fill: the rest is left for the allocator's
# fragmentation, evaluation's larger batches and CUDA's own workspaces.
GPU_MEMORY_SHARE = 0.7


def population_size(configs: Sequence[TrialConfig]) -> int:
    """How many of `configs` (fusible ones) to train as one population: all on a CPU; on CUDA
    as many as `GPU_MEMORY_SHARE` of the free memory holds, one member's share measured by a
    training step of one lone model (its peak memory above its weights, plus its weights,
    gradients and optimizer state)."""
    check_fusible(configs)
    device = _device(configs[0].device)
    if device.type != "cuda":
        return len(configs)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(len(configs), int(free * GPU_MEMORY_SHARE // _member_bytes(configs[0]))))


def _member_bytes(config: TrialConfig) -> int:
    device = _device(config.device)
    seed_everything(config.seed)
    built = build_training(_target(config), config.workload.params, seed=config.seed)
    if not isinstance(built, Workload):
        raise NotFusible("a train function runs its own loop; populations need a Workload")
    model = built.model.to(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    slots = {"sgd": 1, "adam": 2, "adamw": 2}.get(config.optimizer.name, 2)
    inputs, targets = next(iter(built.train_loader))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    built.loss_fn(model(inputs.to(device)), targets.to(device)).backward()
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, built
    # The peak holds the activations and the gradients; weights and optimizer state come on top.
    return peak + weights * (1 + slots)


class StackedOptimizer:
    """torch.optim's SGD, Adam or AdamW over stacked parameters ([K, ...], one slice a member),
    each member at its own rate: `_single_tensor_sgd` / `_single_tensor_adam`, step for step,
    with the rate a [K, 1, ...] tensor where torch has a float.

    Every member in the stack has taken the same number of steps (a member only ever leaves),
    so Adam's bias corrections are shared numbers, as in torch.
    """

    def __init__(self, spec: OptimizerSpec) -> None:
        if spec.name not in ("sgd", "adam", "adamw"):
            raise NotFusible(f"populations fuse sgd, adam and adamw, not {spec.name}")
        self.spec = spec
        self.steps = 0
        # name -> {"momentum_buffer"} (SGD, after its first step) or {"exp_avg", "exp_avg_sq"}.
        self.state: dict[str, dict[str, Tensor]] = {}

    @torch.no_grad()
    def step(self, params: dict[str, Tensor], rates: dict[str, Tensor]) -> None:
        """One update of every member; `rates[name]` holds each member's rate for `name`."""
        self.steps += 1
        for name, param in params.items():
            assert param.grad is not None  # every parameter takes part in the loss
            # float64, as torch's float rate: products with it are rounded once, to float32.
            lr = rates[name].view(-1, *([1] * (param.dim() - 1)))
            if self.spec.name == "sgd":
                self._sgd(name, param, param.grad, lr)
            else:
                self._adam(name, param, param.grad, lr)

    def _sgd(self, name: str, param: Tensor, grad: Tensor, lr: Tensor) -> None:
        spec = self.spec
        if spec.weight_decay != 0:
            grad = grad.add(param, alpha=spec.weight_decay)
        if spec.momentum != 0:
            state = self.state.setdefault(name, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(spec.momentum).add_(grad)  # dampening 0: alpha 1 - 0
            grad = grad.add(buf, alpha=spec.momentum) if spec.nesterov else buf
        param.addcmul_(grad, lr.to(param.dtype), value=-1)

    def _adam(self, name: str, param: Tensor, grad: Tensor, lr: Tensor) -> None:
        spec = self.spec
        beta1, beta2 = spec.betas
        if spec.weight_decay != 0:
            if spec.name == "adamw":
                param.mul_((1 - lr * spec.weight_decay).to(param.dtype))
            else:
                grad = grad.add(param, alpha=spec.weight_decay)
        state = self.state.get(name)
        if state is None:
            state = self.state[name] = {
                "exp_avg": torch.zeros_like(param),
                "exp_avg_sq": torch.zeros_like(param),
            }
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2 = 1 - beta2**self.steps
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(spec.eps)
        step_size = (lr / bias_correction1).to(param.dtype)
        param.addcmul_(exp_avg / denom, step_size, value=-1)

    def keep(self, index: Tensor) -> None:
        """Only the members at `index` stay (in that order)."""
        for state in self.state.values():
            for key, value in state.items():
                state[key] = value.index_select(0, index)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": copy.deepcopy(self.state)}

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device) -> None:
        self.steps = int(state["steps"])
        self.state = {
            name: {key: value.to(device).clone() for key, value in tensors.items()}
            for name, tensors in state["state"].items()
        }


@dataclass
class _RateGroups:
    """A member's param groups as the schedule driver sees them (it sets each group's lr)."""

    param_groups: list[dict[str, Any]]


@dataclass
class _Member:
    """One trial of the population: its schedule, its divergence tracker and its epochs."""

    config: TrialConfig
    driver: ScheduleDriver
    group_of: dict[str, int]  # parameter name -> index of its param group
    history: list[EpochResult] = field(default_factory=list)
    step: int = 0
    reference_loss: float | None = None
    smoothed: float = 0.0
    losses: list[float] = field(default_factory=list)
    diverged: bool = False
    status: TrialOutcomeStatus | None = None  # set when the member leaves
    # The weights a member left the batch with, until its last epoch is evaluated.
    left_with: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None

    def rate(self, name: str) -> float:
        return float(self.driver.last_lr[self.group_of[name]])

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs, between epochs (`losses` and `left_with` are empty then)."""
        return {
            "step": self.step,
            "reference_loss": self.reference_loss,
            "smoothed": self.smoothed,
            "history": [result.model_dump() for result in self.history],
            "diverged": self.diverged,
            "status": self.status,
            "schedule": self.driver.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.reference_loss = state["reference_loss"]
        self.smoothed = float(state["smoothed"])
        self.history = [EpochResult.model_validate(result) for result in state["history"]]
        self.diverged = bool(state["diverged"])
        self.status = state["status"]
        self.driver.load_state_dict(state["schedule"])


@dataclass(frozen=True)
class PopulationProbing:
    """Cooldown probes of every member still training after the given epochs (1-based), as
    `run_trial`'s `Probing`: the probe of a population is a population (one batched branch), each
    member's probe handed to `on_probe(index, probe)` before that epoch is reported."""

    epochs: frozenset[int]
    cooldown: Cooldown
    on_probe: Callable[[int, ProbeResult], None]


@dataclass(frozen=True)
class PopulationCheckpointing:
    """After each epoch for which `due(epoch)` holds, the population's state goes to `save`."""

    due: Callable[[int], bool]
    save: Callable[[PopulationState], None]


@dataclass
class PopulationState:
    """Everything a population needs to go on exactly after `epoch`: each member's schedule,
    divergence tracker, epochs and status; which members are still in the stack; the stacked
    weights and optimizer state; the global RNGs. The data order is a function of (shuffle seed,
    epoch), so the position is the epoch itself."""

    epoch: int
    members: list[dict[str, Any]]
    active: list[int]
    stack: dict[str, Any]
    rng: dict[str, Any]
    elapsed_s: float

    def save(self, path: Path) -> None:
        torch.save(dict(self.__dict__), path)

    @classmethod
    def load(cls, path: Path) -> PopulationState:
        return cls(**torch.load(path, map_location="cpu", weights_only=False))


# The files a population's checkpoint folder holds: its state, and which chunk it is of.
POPULATION_STATE_FILE = "population.pt"
POPULATION_CHUNK_FILE = "chunk.txt"


@dataclass(frozen=True)
class SavedPopulation:
    """A checkpoint of `run_in_chunks`: the state of the chunk of members it was training (0
    when the population trains as one)."""

    chunk: int
    state: PopulationState

    def save(self, folder: Path) -> None:
        self.state.save(folder / POPULATION_STATE_FILE)
        (folder / POPULATION_CHUNK_FILE).write_text(str(self.chunk))

    @classmethod
    def load(cls, folder: Path) -> SavedPopulation:
        chunk = int((folder / POPULATION_CHUNK_FILE).read_text())
        return cls(chunk=chunk, state=PopulationState.load(folder / POPULATION_STATE_FILE))


def run_in_chunks(
    configs: Sequence[TrialConfig],
    report: PopulationReport,
    *,
    size: int,
    probing: PopulationProbing | None = None,
    select: PopulationSelect | None = None,
    due: Callable[[int], bool] = lambda epoch: False,
    save: Callable[[SavedPopulation], None] = lambda saved: None,
    after_epoch: Callable[[int], None] | None = None,
    resume: SavedPopulation | None = None,
) -> None:
    """`run_population` over `configs` `size` members at a time, one chunk after another (a
    population larger than a GPU's free memory holds); the callbacks number every member of
    `configs`, whatever its chunk. `save` gets a checkpoint after each epoch `due` holds for,
    and `resume` goes on from one: the chunks before it trained to their end already."""
    for start in range(0, len(configs), size):
        chunk = start // size
        if resume is not None and chunk < resume.chunk:
            continue
        run_population(
            configs[start : start + size],
            _shift_report(report, start),
            probing=None if probing is None else _shift_probing(probing, start),
            select=None if select is None else _shift_select(select, start),
            checkpointing=PopulationCheckpointing(due=due, save=_saving(save, chunk)),
            after_epoch=after_epoch,
            resume=resume.state if resume is not None and chunk == resume.chunk else None,
        )


def _shift_report(report: PopulationReport, offset: int) -> PopulationReport:
    return lambda index, result: report(offset + index, result)


def _saving(
    save: Callable[[SavedPopulation], None], chunk: int
) -> Callable[[PopulationState], None]:
    return lambda state: save(SavedPopulation(chunk, state))


def _shift_probing(probing: PopulationProbing, offset: int) -> PopulationProbing:
    on_probe = probing.on_probe
    return replace(probing, on_probe=lambda index, probe: on_probe(offset + index, probe))


def _shift_select(select: PopulationSelect, offset: int) -> PopulationSelect:
    def shifted(
        epoch: int, results: dict[int, EpochResult], probes: dict[int, ProbeResult]
    ) -> set[int]:
        stop = select(
            epoch,
            {offset + index: result for index, result in results.items()},
            {offset + index: probe for index, probe in probes.items()},
        )
        return {index - offset for index in stop}

    return shifted


def run_population(
    configs: Sequence[TrialConfig],
    report: PopulationReport,
    *,
    on_loss: Callable[[int, float], None] | None = None,
    on_done: Callable[[int, dict[str, Tensor]], None] | None = None,
    probing: PopulationProbing | None = None,
    select: PopulationSelect | None = None,
    checkpointing: PopulationCheckpointing | None = None,
    after_epoch: Callable[[int], None] | None = None,
    resume: PopulationState | None = None,
) -> list[TrialOutcome]:
    """Train every config at once; `report(index, result)` after each member's epochs, as
    `run_trial`'s report (True stops that member). One outcome per config, in order, each as
    `run_trial` would return for it (its `elapsed_s` is the population's time so far).

    `on_loss(index, loss)` sees every training batch's loss of every member, `on_done(index,
    state_dict)` each member's final weights (its model's state dict) as it leaves.
    `probing` runs the members' cooldown probes after its epochs, and `select` stops the
    members it names after an epoch (those that could go on: not diverged, not at their last
    epoch), before they are reported. `checkpointing` saves the whole population after the
    epochs it is due at (every member's epochs reported), `after_epoch(epoch)` comes last in
    every epoch, and `resume` goes on from such a state: every member's epochs after it are
    the same, number for number, as those of an uninterrupted run (on a CPU).

    Raises NotFusible when the configs cannot share one batched model, WorkloadError for a
    workload that cannot be built, ValueError for a config that cannot run.
    """
    started = time.perf_counter()
    check_fusible(configs)
    first = configs[0]
    device = _device(first.device)
    models: list[nn.Module] = []
    members: list[_Member] = []
    workload: Workload | None = None
    for config in configs:
        # Exactly run_trial's seeding, so each member starts from its lone trial's weights.
        seed_everything(config.seed)
        built = build_training(_target(config), config.workload.params, seed=config.seed)
        if not isinstance(built, Workload):
            raise NotFusible("a train function runs its own loop; populations need a Workload")
        check_workload_fusible(built)
        check_reports_metric(built, config.metric_name, label=config.workload.label)
        if config.schedule.policy == "plateau" and config.schedule.mode != config.metric_mode:
            raise ValueError(
                f"plateau watches {config.metric_name!r}, whose mode is "
                f"{config.metric_mode!r}, but its own mode is {config.schedule.mode!r}"
            )
        workload = workload or built
        _check_same_data(workload, built)
        model = built.model.to(device)
        models.append(model)
        members.append(_member(config, model, steps_per_epoch=built.steps_per_epoch))
    assert workload is not None and isinstance(workload.train_loader, TensorBatches)
    train_loader = workload.train_loader.to(device)
    if first.shuffle_seed is not None:
        train_loader.seed = first.shuffle_seed
    assert isinstance(workload.val_loader, TensorBatches)
    val_loader = workload.val_loader.to(device)
    population = _Stack(models, workload, first.optimizer)
    del models

    active = list(range(len(members)))  # members in the stack, in stack order
    first_epoch = 0
    if resume is not None:
        if len(resume.members) != len(members):
            raise ValueError(
                f"the state is of a population of {len(resume.members)}, not {len(members)}"
            )
        population.load_state_dict(resume.stack)
        for member, saved in zip(members, resume.members, strict=True):
            member.load_state_dict(saved)
        active, first_epoch = list(resume.active), resume.epoch
        set_rng_state(resume.rng)
        started -= resume.elapsed_s
    for epoch in range(first_epoch, max(config.epochs for config in configs)):
        train_loader.set_epoch(epoch)
        population.train()
        for inputs, targets in train_loader:
            if not active:
                break
            inputs, targets = inputs.to(device), targets.to(device)
            losses = population.losses(inputs, targets)
            values = losses.tolist()
            if on_loss is not None:
                for slot, index in enumerate(active):
                    on_loss(index, values[slot])
            # run_trial does not step on a NaN/inf loss: such a member leaves as it was.
            broken = [slot for slot, value in enumerate(values) if not math.isfinite(value)]
            for slot in broken:
                member = members[active[slot]]
                member.losses.append(values[slot])
                member.diverged = True
                member.left_with = population.member_weights(slot)
            losses.sum().backward()
            population.step([members[index] for index in active])
            for slot, index in enumerate(active):
                member = members[index]
                if member.diverged:
                    continue
                _after_step(member, values[slot])
                if member.diverged:
                    member.left_with = population.member_weights(slot)
            active = _leave(population, members, active, lambda m: m.diverged)

        # Evaluate every member still training or gone this epoch, then report them.
        population.eval()
        evaluated = dict(zip(active, population.evaluate(val_loader), strict=True))
        for index, member in enumerate(members):
            if member.left_with is not None and member.status is None:
                evaluated[index] = population.evaluate(val_loader, member.left_with)[0]
        results: dict[int, EpochResult] = {}
        for index in sorted(evaluated):
            member = members[index]
            if epoch >= member.config.epochs or member.status is not None:
                continue
            val_loss, metrics = evaluated[index]
            result = EpochResult(
                epoch=epoch + 1,
                step=member.step,
                lr=member.driver.rate(max(member.step - 1, 0)),
                train_loss=float(np.mean(member.losses)) if member.losses else math.nan,
                val_loss=val_loss,
                metrics=metrics,
                elapsed_s=time.perf_counter() - started,
            )
            member.losses = []
            member.history.append(result)
            # The metric is among the workload's (checked when the population was built).
            metric_value = result.value(member.config.metric_name)
            member.driver.on_epoch_end(math.nan if metric_value is None else metric_value)
            results[index] = result
        going_on = {
            index: result
            for index, result in results.items()
            if not members[index].diverged and epoch + 1 < members[index].config.epochs
        }
        probes: dict[int, ProbeResult] = {}
        if probing is not None and epoch + 1 in probing.epochs and going_on:
            probed = [index for index in active if index in going_on]
            stack_slots = [active.index(index) for index in probed]
            outcome = _probe(
                population,
                [members[index] for index in probed],
                stack_slots,
                train_loader,
                val_loader,
                epoch=epoch + 1,
                cooldown=probing.cooldown,
            )
            for index, probe in zip(probed, outcome, strict=True):
                probes[index] = probe
                probing.on_probe(index, probe)
        stopping = select(epoch + 1, going_on, probes) if select and going_on else set()
        for index, result in results.items():
            member = members[index]
            stop = report(index, result) or index in stopping
            if member.diverged:
                member.status = "diverged"
            elif stop:
                member.status = "stopped" if epoch + 1 < member.config.epochs else "completed"
            elif epoch + 1 == member.config.epochs:
                member.status = "completed"
            if member.status is not None and on_done is not None:
                if member.left_with is None:
                    member.left_with = population.member_weights(active.index(index))
                on_done(index, _model_state(member.left_with))
            member.left_with = None
        active = _leave(population, members, active, lambda m: m.status is not None)
        if checkpointing is not None and active and checkpointing.due(epoch + 1):
            checkpointing.save(
                PopulationState(
                    epoch=epoch + 1,
                    members=[member.state_dict() for member in members],
                    active=list(active),
                    stack=population.state_dict(),
                    rng=rng_state(),
                    elapsed_s=time.perf_counter() - started,
                )
            )
        if after_epoch is not None:
            after_epoch(epoch + 1)
        if not active:
            break

    elapsed = time.perf_counter() - started
    return [
        trial_outcome(
            member.status or "completed",
            member.history,
            member.step,
            member.config.metric_name,
            member.config.metric_mode,
            elapsed,
        )
        for member in members
    ]


class _Stack:
    """The members' stacked weights, their forward pass and their optimizer."""

    def __init__(self, models: list[nn.Module], workload: Workload, spec: OptimizerSpec) -> None:
        params, buffers = stack_module_state(models)
        self.params: dict[str, Tensor] = params
        self.buffers: dict[str, Tensor] = buffers
        # The architecture without weights: functional_call supplies each member's.
        self.skeleton = copy.deepcopy(models[0]).to("meta")
        self.loss_fn = workload.loss_fn
        self.metrics = workload.metrics
        self.optimizer = StackedOptimizer(spec)

        def member_forward(
            params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor
        ) -> Tensor:
            return functional_call(self.skeleton, (params, buffers), (inputs,))

        self._vmapped = vmap(member_forward, in_dims=(0, 0, None))
        self._chain = _matmul_chain(self.skeleton)
        self._loss = vmap(self.loss_fn, in_dims=(0, None))

    def _forward(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor
    ) -> Tensor:
        """Every member's outputs on the same inputs, [K, batch, ...]."""
        if self._chain is None:
            return self._vmapped(params, buffers, inputs)
        return _run_chain(self._chain, params, inputs)

    def train(self) -> None:
        self.skeleton.train()

    def eval(self) -> None:
        self.skeleton.eval()

    def losses(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Each member's mean loss on the batch, [K]; its gradients reach that member only."""
        for param in self.params.values():
            param.grad = None
        outputs = self._forward(self.params, self.buffers, inputs)
        return self._loss(outputs, targets)

    def step(self, members: list[_Member]) -> None:
        self.optimizer.step(self.params, self.rates(members))

    def rates(self, members: list[_Member]) -> dict[str, Tensor]:
        """Each parameter's rate for each member, in stack order (float64, as torch's float)."""
        return {
            name: torch.tensor(
                [member.rate(name) for member in members], dtype=torch.float64, device=param.device
            )
            for name, param in self.params.items()
        }

    def branch(self, slots: list[int]) -> _Stack:
        """A copy of the members at `slots` (weights, buffers, optimizer state) that trains on
        its own: a cooldown probe's branch, thrown away after it."""
        other = copy.copy(self)
        index = torch.tensor(slots, dtype=torch.long, device=self._device())
        other.params = {
            name: p.detach().index_select(0, index).requires_grad_()
            for name, p in self.params.items()
        }
        other.buffers = {name: b.index_select(0, index) for name, b in self.buffers.items()}
        other.optimizer = StackedOptimizer(self.optimizer.spec)
        other.optimizer.load_state_dict(self.optimizer.state_dict(), device=self._device())
        other.optimizer.keep(index)
        return other

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {name: p.detach().clone() for name, p in self.params.items()},
            "buffers": {name: b.clone() for name, b in self.buffers.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self._device()
        self.params = {
            name: p.to(device).detach().clone().requires_grad_()
            for name, p in state["params"].items()
        }
        self.buffers = {name: b.to(device).clone() for name, b in state["buffers"].items()}
        self.optimizer.load_state_dict(state["optimizer"], device=device)

    def member_weights(self, slot: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """A copy of one member's weights and buffers, stacked alone ([1, ...])."""
        return (
            {name: p.detach()[slot : slot + 1].clone() for name, p in self.params.items()},
            {name: b[slot : slot + 1].clone() for name, b in self.buffers.items()},
        )

    def keep(self, slots: list[int]) -> None:
        index = torch.tensor(slots, dtype=torch.long, device=self._device())
        self.params = {
            name: p.detach().index_select(0, index).requires_grad_()
            for name, p in self.params.items()
        }
        self.buffers = {name: b.index_select(0, index) for name, b in self.buffers.items()}
        self.optimizer.keep(index)

    @torch.no_grad()
    def evaluate(
        self, val_loader: Any, weights: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None
    ) -> list[tuple[float, dict[str, float]]]:
        """Each member's validation loss (mean over examples) and metrics, as `evaluate`."""
        params, buffers = weights if weights is not None else (self.params, self.buffers)
        count = next(iter(params.values())).shape[0]
        if count == 0:
            return []
        totals = [0.0] * count
        outputs: list[Tensor] = []
        targets: list[Tensor] = []
        examples = 0
        for inputs, batch_targets in val_loader:
            inputs, batch_targets = inputs.to(self._device()), batch_targets.to(self._device())
            batch_outputs = self._forward(params, buffers, inputs)
            for slot, loss in enumerate(self._loss(batch_outputs, batch_targets).tolist()):
                totals[slot] += loss * len(inputs)
            examples += len(inputs)
            outputs.append(batch_outputs)
            targets.append(batch_targets)
        all_outputs, all_targets = torch.cat(outputs, dim=1), torch.cat(targets)
        return [
            (
                totals[slot] / examples,
                {
                    name: float(fn(all_outputs[slot], all_targets))
                    for name, fn in self.metrics.items()
                },
            )
            for slot in range(count)
        ]

    def _device(self) -> torch.device:
        return next(iter(self.params.values())).device


# Where a chain's activations are between layers: the members' common input, [batch, ...];
# grouped channels, [batch, K * channels, length] (member k's channels k*C .. (k+1)*C - 1,
# as a grouped convolution reads them); stacked, [K, batch, features].
_Layout = Literal["shared", "grouped", "stacked"]
_SHARED: _Layout = "shared"
_GROUPED: _Layout = "grouped"
_STACKED: _Layout = "stacked"


def _matmul_chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of `model` in the order its forward runs them, with their names, when it is
    nothing but (nested) `nn.Sequential`s of Linear, Conv1d and Conv2d (groups 1), ReLU,
    MaxPool1d and MaxPool2d, Flatten(1, -1) and, on the input, Unflatten; else None (vmap runs
    it).

    Such a model (an MLP, a 1-D or 2-D CNN) runs as batched matmuls and grouped convolutions (as
    HFTA fuses models): the shared input of the first layer goes through every member's
    weights at once as one matmul or convolution, the convolutions after it as one convolution
    of K groups. On a CPU that is faster than vmap's generic rules, which expand the shared
    input and transpose around every batched matmul.
    """
    layers: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> bool:
        if type(module) is nn.Sequential:
            return all(walk(child, f"{prefix}{name}.") for name, child in module.named_children())
        layers.append((prefix.rstrip("."), module))
        return True

    if not walk(model, "") or not layers:
        return None
    layout = _SHARED
    for _, layer in layers:
        next_layout = _next_layout(layer, layout)
        if next_layout is None:
            return None
        layout = next_layout
    return layers


def _next_layout(layer: nn.Module, layout: _Layout) -> _Layout | None:
    """The layout after `layer`, or None when the chain cannot run it from `layout`."""
    if type(layer) is nn.ReLU:
        return layout
    if type(layer) in (nn.MaxPool1d, nn.MaxPool2d):
        # Channel by channel: a member's channels stay its own in the grouped layout.
        return None if layout == _STACKED or layer.return_indices else layout
    if type(layer) is nn.Unflatten:
        return layout if layout == _SHARED else None
    if type(layer) is nn.Flatten:
        if (layer.start_dim, layer.end_dim) != (1, -1):
            return None
        return _SHARED if layout == _SHARED else _STACKED
    if type(layer) is nn.Linear:
        return None if layout == _GROUPED else _STACKED
    if type(layer) in (nn.Conv1d, nn.Conv2d):
        plain = layer.groups == 1 and layer.padding_mode == "zeros"
        return _GROUPED if plain and layout != _STACKED else None
    return None


def _run_chain(
    layers: list[tuple[str, nn.Module]], params: dict[str, Tensor], inputs: Tensor
) -> Tensor:
    """`_matmul_chain`'s layers over stacked weights: [batch, ...] in, [K, batch, ...] out."""
    members = next(iter(params.values())).shape[0]
    batch = len(inputs)
    hidden = inputs
    layout = _SHARED
    for name, layer in layers:
        if isinstance(layer, nn.ReLU):
            hidden = torch.relu(hidden)
        elif isinstance(layer, (nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d)):
            hidden = layer(hidden)
        elif isinstance(layer, nn.Flatten):
            if layout == _GROUPED:  # [batch, K * C, ...] -> [K, batch, C * ...]
                hidden = hidden.reshape(batch, members, -1).transpose(0, 1)
            else:
                hidden = hidden.flatten(1 if layout == _SHARED else 2)
        elif isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            weight = params[f"{name}.weight"]  # [K, out, in, *kernel]
            bias = params.get(f"{name}.bias")  # [K, out]
            convolve = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
            hidden = convolve(
                hidden,
                weight.reshape(-1, *weight.shape[2:]),
                None if bias is None else bias.reshape(-1),
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=1 if layout == _SHARED else members,
            )
        else:
            weight = params[f"{name}.weight"]  # [K, out, in]
            bias = params.get(f"{name}.bias")  # [K, out]
            outputs = weight.shape[1]
            if layout == _SHARED:
                # One matmul for all: [batch, in] x [in, K * out] -> [K, batch, out].
                flat = hidden @ weight.reshape(members * outputs, -1).t()
                hidden = flat.view(batch, members, outputs).transpose(0, 1)
                if bias is not None:
                    hidden = hidden + bias.unsqueeze(1)
            elif bias is not None:
                hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
            else:
                hidden = torch.bmm(hidden, weight.transpose(1, 2))
        layout = _next_layout(layer, layout) or layout
    if layout == _SHARED:  # no layer with weights: every member computes the same
        return hidden.expand(members, *hidden.shape)
    if layout == _GROUPED:  # ends in a convolution: [batch, K * C, ...] -> [K, batch, C, ...]
        channels = hidden.shape[1] // members
        return hidden.reshape(batch, members, channels, *hidden.shape[2:]).transpose(0, 1)
    return hidden


def _check_same_data(first: Workload, other: Workload) -> None:
    """NotFusible unless `other` trains and validates on `first`'s examples: user code may draw
    its data from the global RNGs, seeded with each member's own seed."""
    for what in ("train_loader", "val_loader"):
        ours, theirs = getattr(first, what), getattr(other, what)
        if not isinstance(ours, TensorBatches) or not isinstance(theirs, TensorBatches):
            raise NotFusible(
                f"the workload's {what} is not a TensorBatches: its order is not a function of "
                "a seed, so the members' lone trials would not see the same batches"
            )
        same = ours.batch_size == theirs.batch_size and all(
            a is b or (a.shape == b.shape and torch.equal(a, b))
            for a, b in ((ours.inputs, theirs.inputs), (ours.targets, theirs.targets))
        )
        if not same:
            raise NotFusible(
                f"the members' {what}s hold other examples (is the data drawn from the seeded "
                "global RNG?): a population trains every member on the same batches"
            )


def _probe(
    stack: _Stack,
    members: list[_Member],
    slots: list[int],
    train_loader: TensorBatches,
    val_loader: TensorBatches,
    *,
    epoch: int,
    cooldown: Cooldown,
) -> list[ProbeResult]:
    """The cooldown probes of `members` (at `slots` of the stack) after `epoch`, as
    `lrtune.workers.trial.cooldown_probe` runs one for a lone trial: a branch trains
    `ceil(fraction x step)` more steps on the batches that come next, each member's rate going
    from its schedule's current one to 0 in `cooldown.shape`, then is evaluated and thrown away;
    the global RNGs are put back. A member whose loss turns NaN/inf stops there (its weights
    then are evaluated), as a lone probe does. Every member is at the same step."""
    started = time.perf_counter()
    saved_rng = rng_state()
    branch = stack.branch(slots)
    branch.train()
    step = members[0].step
    steps = max(1, math.ceil(cooldown.fraction * step))
    start = branch.rates(members)
    losses: list[list[float]] = [[] for _ in members]
    stopped: dict[int, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}
    device = branch._device()
    done = 0
    data_epoch = epoch
    while done < steps:
        train_loader.set_epoch(data_epoch)
        data_epoch += 1
        for inputs, targets in train_loader:
            values = branch.losses(inputs.to(device), targets.to(device))
            for slot, value in enumerate(values.tolist()):
                if slot in stopped:
                    continue
                losses[slot].append(value)
                if not math.isfinite(value):
                    stopped[slot] = branch.member_weights(slot)
            if len(stopped) == len(members):
                done = steps
                break
            values.sum().backward()
            factor = cooldown_factor(cooldown.shape, done, steps)
            branch.optimizer.step(branch.params, {n: r * factor for n, r in start.items()})
            done += 1
            if done == steps:
                break
    branch.eval()
    evaluated = branch.evaluate(val_loader)
    for slot, weights in stopped.items():
        evaluated[slot] = branch.evaluate(val_loader, weights)[0]
    set_rng_state(saved_rng)
    elapsed = time.perf_counter() - started
    return [
        ProbeResult(
            epoch=epoch,
            step=step,
            cooldown_steps=steps,
            train_loss=float(np.mean(losses[slot])) if losses[slot] else math.nan,
            val_loss=evaluated[slot][0],
            metrics=evaluated[slot][1],
            elapsed_s=elapsed,
        )
        for slot in range(len(members))
    ]


def _model_state(weights: tuple[dict[str, Tensor], dict[str, Tensor]]) -> dict[str, Tensor]:
    """One member's weights (stacked alone) as its model's state dict."""
    params, buffers = weights
    return {name: value[0] for name, value in {**params, **buffers}.items()}


def _member(config: TrialConfig, model: nn.Module, *, steps_per_epoch: int) -> _Member:
    groups = build_param_groups(model, config.param_groups)
    group_by_param = {id(p): index for index, group in enumerate(groups) for p in group["params"]}
    group_of = {name: group_by_param[id(p)] for name, p in model.named_parameters()}
    rate_groups = _RateGroups([{"lr_mult": group["lr_mult"]} for group in groups])
    driver = ScheduleDriver(
        rate_groups, config.schedule, total_steps=config.epochs * steps_per_epoch
    )
    return _Member(config=config, driver=driver, group_of=group_of)


def _after_step(member: _Member, loss: float) -> None:
    """run_trial's bookkeeping after an update: the schedule's next rate and divergence."""
    member.losses.append(loss)
    member.step += 1
    member.driver.step()
    # Bias-corrected exponential average, as in run_trial.
    member.smoothed = _LOSS_SMOOTHING * member.smoothed + (1 - _LOSS_SMOOTHING) * loss
    running = member.smoothed / (1 - _LOSS_SMOOTHING**member.step)
    if member.reference_loss is None:
        member.reference_loss = loss
    elif running > member.config.divergence_factor * member.reference_loss > 0:
        member.diverged = True


def _leave(
    stack: _Stack, members: list[_Member], active: list[int], leaves: Callable[[_Member], bool]
) -> list[int]:
    """Drop the members for which `leaves` holds from the stack; the indices still in it."""
    slots = [slot for slot, index in enumerate(active) if not leaves(members[index])]
    if len(slots) == len(active):
        return active
    stack.keep(slots)
    return [active[slot] for slot in slots]


def _target(config: TrialConfig) -> str:
    target = (
        config.workload.name if config.workload.name is not None else config.workload.entrypoint
    )
    assert target is not None  # WorkloadSpec guarantees one of the two
    return target


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this worker has no usable CUDA device")
    return torch.device(name)
