"""Population trials: each member trains as its lone trial does, and what cannot fuse says why."""

from __future__ import annotations

import importlib
import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lrtune.schemas.jobs import Cooldown
from lrtune.schemas.trials import EpochResult, ProbeResult, TrialConfig
from lrtune.workers.population import (
    NotFusible,
    PopulationCheckpointing,
    PopulationProbing,
    PopulationState,
    SavedPopulation,
    _matmul_chain,
    check_fusible,
    population_size,
    run_in_chunks,
    run_population,
)
from lrtune.workers.trial import Probing, run_trial

from tests.conftest import use_code_path

# 48 examples in 3 steps of 16: 4 epochs are 12 steps, short enough for every schedule below to
# change its rate within them.
TINY_MODULE = """
import torch
from torch import nn
from torch.nn import functional as F
from lrtune.workers.workloads import TensorBatches, Workload

BUILT = []
LOSSES = []


def recorded_loss(outputs, targets):
    loss = F.cross_entropy(outputs, targets)
    if torch.is_grad_enabled():  # training batches only, not evaluation
        LOSSES.append(loss.item())
    return loss


def make(record=False, layer=None, seeded_data=False):
    # seeded_data: drawn from the global RNG, which each member seeds with its own seed
    generator = None if seeded_data else torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    layers = [nn.Linear(6, 16), nn.ReLU()]
    if layer in ("conv", "gelu"):  # a 1-D CNN; with GELU it is no chain: vmap runs it
        activation = nn.GELU() if layer == "gelu" else nn.ReLU()
        layers = [nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 4, 3), activation]
        layers += [nn.Conv1d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten()]
        layers.append(nn.Linear(8, 16))
    if layer == "conv2d":  # a 2-D CNN with max pooling: grouped 2-D convolutions
        layers = [nn.Unflatten(1, (1, 2, 3)), nn.Conv2d(1, 4, (1, 2)), nn.ReLU()]
        layers += [nn.MaxPool2d((1, 2)), nn.Conv2d(4, 4, (2, 1)), nn.ReLU(), nn.Flatten()]
        layers.append(nn.Linear(4, 16))
    if layer == "batchnorm":
        layers.append(nn.BatchNorm1d(16))
    if layer == "dropout":
        layers.append(nn.Dropout(0.1))
    model = nn.Sequential(nn.Sequential(*layers), nn.Linear(16, 3))
    BUILT.append(model)
    return Workload(
        model=model,
        train_loader=TensorBatches(x[:48], y[:48], batch_size=16, shuffle=True),
        val_loader=TensorBatches(x[48:], y[48:], batch_size=16, shuffle=False),
        loss_fn=recorded_loss if record else F.cross_entropy,
        metrics={"val_accuracy": lambda o, t: float((o.argmax(1) == t).float().mean())},
    )
"""

# One schedule of every policy, each changing its rate within the 12 steps.
SCHEDULES: list[dict[str, Any]] = [
    {"policy": "fixed", "lr": 0.05, "warmup_steps": 3},
    {"policy": "step", "lr": 0.1, "step_size": 4, "gamma": 0.5},
    {"policy": "multistep", "lr": 0.1, "milestones": [3, 8]},
    {"policy": "piecewise", "boundaries": [4, 8], "values": [0.1, 0.05, 0.01]},
    {"policy": "exponential", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 6},
    {"policy": "natural_exp", "lr": 0.1, "decay_rate": 0.3, "decay_steps": 4},
    {"policy": "inverse_time", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 4},
    {"policy": "polynomial", "lr": 0.1, "decay_steps": 12, "end_lr": 0.001},
    {"policy": "cosine", "lr": 0.1, "decay_steps": 12, "alpha": 0.01},
    {"policy": "linear_cosine", "lr": 0.1, "decay_steps": 12},
    {"policy": "noisy_linear_cosine", "lr": 0.1, "decay_steps": 12, "seed": 7},
    {"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 3},
    {"policy": "sgdr", "eta_max": 0.1, "t_0": 4},
    {"policy": "one_cycle", "max_lr": 0.1, "total_steps": 12},
    {"policy": "wsd", "lr": 0.1, "total_steps": 12, "warmup_steps": 2, "decay_steps": 4},
    {"policy": "inverse_sqrt", "lr": 0.1, "warmup_steps": 3},
    {"policy": "rex", "lr": 0.1, "total_steps": 12},
    {"policy": "plateau", "lr": 0.1, "patience": 0, "factor": 0.5},
]

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    "adam": {"name": "adam", "weight_decay": 1e-3},
    "adamw": {"name": "adamw", "weight_decay": 0.1},
}

SHUFFLE_SEED = 5


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "tiny_population.py").write_text(textwrap.dedent(TINY_MODULE))
    use_code_path(monkeypatch, tmp_path)
    yield importlib.import_module("tiny_population")
    del sys.modules["tiny_population"]


def member(
    index: int, schedule: dict[str, Any], optimizer: dict[str, Any], **params: Any
) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "workload": {"entrypoint": "tiny_population:make", "params": params},
            "optimizer": optimizer,
            "schedule": schedule,
            # Every other member with a slower head: per-member param groups.
            "param_groups": [{"match": "1.", "lr_mult": 0.5}] if index % 2 else [],
            "epochs": 4,
            "seed": 100 + index,
            "shuffle_seed": SHUFFLE_SEED,
            # Adam at these rates may climb for a while; judged the same either way, but a
            # ratio right at the bound could tip with the rounding, so far from it.
            "divergence_factor": 1e6,
        }
    )


def numbers(result: EpochResult) -> dict[str, float]:
    """An epoch's numbers but its time (which a population shares)."""
    return {
        "epoch": result.epoch,
        "step": result.step,
        "lr": result.lr,
        **result.metrics,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
    }


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_member_trains_as_its_lone_trial(tiny: Any, optimizer: str) -> None:
    configs = [member(i, s, OPTIMIZERS[optimizer]) for i, s in enumerate(SCHEDULES)]
    epochs: dict[int, list[EpochResult]] = {i: [] for i in range(len(configs))}
    losses: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    weights: dict[int, dict[str, torch.Tensor]] = {}

    outcomes = run_population(
        configs,
        lambda index, result: epochs[index].append(result),
        on_loss=lambda index, loss: losses[index].append(loss),
        on_done=weights.__setitem__,
    )

    for index, config in enumerate(configs):
        tiny.LOSSES.clear()
        alone: list[EpochResult] = []
        lone_config = member(index, SCHEDULES[index], OPTIMIZERS[optimizer], record=True)
        lone_outcome = run_trial(lone_config, alone.append)
        policy = config.schedule.policy
        assert losses[index] == pytest.approx(tiny.LOSSES, rel=1e-5, abs=1e-6), policy
        lone_weights = tiny.BUILT[-1].state_dict()
        assert weights[index].keys() == lone_weights.keys()
        for name, value in lone_weights.items():
            torch.testing.assert_close(weights[index][name], value, rtol=1e-5, atol=1e-6)
        assert len(epochs[index]) == len(alone) == 4
        for fused, lone in zip(epochs[index], alone, strict=True):
            assert fused.step == lone.step and fused.lr == lone.lr, policy
            assert numbers(fused) == pytest.approx(numbers(lone), rel=1e-5), policy
        assert outcomes[index].status == lone_outcome.status == "completed"
        assert outcomes[index].best_epoch == lone_outcome.best_epoch


@pytest.mark.parametrize(
    "layer",
    ["conv", "conv2d", "gelu"],
    ids=["grouped convolutions", "grouped 2-D convolutions and pooling", "vmap"],
)
def test_a_cnn_trains_as_its_lone_trials(tiny: Any, layer: str) -> None:
    adamw = OPTIMIZERS["adamw"]
    configs = [member(i, s, adamw, layer=layer) for i, s in enumerate(SCHEDULES[:4])]
    losses: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    weights: dict[int, dict[str, torch.Tensor]] = {}

    run_population(
        configs,
        lambda index, result: None,
        on_loss=lambda index, loss: losses[index].append(loss),
        on_done=weights.__setitem__,
    )
    # The convolutions run as the chain of grouped convolutions; GELU's model through vmap.
    assert (_matmul_chain(tiny.BUILT[-1]) is None) == (layer == "gelu")

    for index in range(len(configs)):
        tiny.LOSSES.clear()
        run_trial(member(index, SCHEDULES[index], adamw, layer=layer, record=True), lambda r: None)
        assert losses[index] == pytest.approx(tiny.LOSSES, rel=1e-5, abs=1e-6)
        # Looser than for the MLPs: a convolution sums in another order batched, and Adam
        # divides by the gradients' size, so a gradient near 0 turns rounding into a step.
        for name, value in tiny.BUILT[-1].state_dict().items():
            torch.testing.assert_close(weights[index][name], value, rtol=1e-4, atol=1e-5)


def test_a_diverging_member_leaves_and_the_rest_train_on(tiny: Any) -> None:
    sgd = {"name": "sgd"}
    configs = [
        member(0, {"policy": "fixed", "lr": 0.05}, sgd),
        member(2, {"policy": "fixed", "lr": 1e6}, sgd).model_copy(
            update={"divergence_factor": 4.0}
        ),
        member(4, {"policy": "cosine", "lr": 0.1, "decay_steps": 12}, sgd),
    ]
    epochs: dict[int, list[EpochResult]] = {0: [], 1: [], 2: []}

    outcomes = run_population(configs, lambda index, result: epochs[index].append(result))

    lone: list[EpochResult] = []
    lone_outcome = run_trial(configs[1], lone.append)
    assert outcomes[1].status == lone_outcome.status == "diverged"
    assert [r.step for r in epochs[1]] == [r.step for r in lone] and len(lone) == 1
    assert math.isnan(epochs[1][0].val_loss) == math.isnan(lone[0].val_loss)
    for index in (0, 2):
        alone: list[EpochResult] = []
        run_trial(configs[index], alone.append)
        assert outcomes[index].status == "completed"
        for fused, reference in zip(epochs[index], alone, strict=True):
            assert numbers(fused) == pytest.approx(numbers(reference), rel=1e-5, nan_ok=True)


def test_a_stopped_member_leaves_after_that_epoch(tiny: Any) -> None:
    configs = [member(i, {"policy": "fixed", "lr": 0.05}, {"name": "adam"}) for i in range(3)]
    seen: list[tuple[int, int]] = []

    def report(index: int, result: EpochResult) -> bool:
        seen.append((index, result.epoch))
        return index == 1 and result.epoch == 2

    outcomes = run_population(configs, report)

    assert [o.status for o in outcomes] == ["completed", "stopped", "completed"]
    assert [o.epochs_done for o in outcomes] == [4, 2, 4]
    assert (1, 3) not in seen and (0, 4) in seen and (2, 4) in seen


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_populations_cooldown_probes_are_its_members_lone_probes(
    tiny: Any, optimizer: str
) -> None:
    cooldown = Cooldown(fraction=0.5, shape="1-sqrt")
    configs = [member(i, s, OPTIMIZERS[optimizer]) for i, s in enumerate(SCHEDULES[:8])]
    fused: dict[int, list[ProbeResult]] = {i: [] for i in range(len(configs))}
    fused_epochs: dict[int, list[EpochResult]] = {i: [] for i in range(len(configs))}

    run_population(
        configs,
        lambda index, result: fused_epochs[index].append(result),
        probing=PopulationProbing(
            epochs=frozenset({1, 3}),
            cooldown=cooldown,
            on_probe=lambda index, probe: fused[index].append(probe),
        ),
    )

    for index, config in enumerate(configs):
        lone: list[ProbeResult] = []
        alone: list[EpochResult] = []
        run_trial(
            config,
            alone.append,
            probing=Probing(epochs=frozenset({1, 3}), cooldown=cooldown, on_probe=lone.append),
        )
        policy = config.schedule.policy
        assert [p.epoch for p in fused[index]] == [p.epoch for p in lone] == [1, 3], policy
        for mine, theirs in zip(fused[index], lone, strict=True):
            assert (mine.step, mine.cooldown_steps) == (theirs.step, theirs.cooldown_steps)
            assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-5), policy
            assert mine.val_loss == pytest.approx(theirs.val_loss, rel=1e-5), policy
            assert mine.metrics == pytest.approx(theirs.metrics, rel=1e-5), policy
        # The probes are branches: the members train on as without them.
        for mine, theirs in zip(fused_epochs[index], alone, strict=True):
            assert numbers(mine) == pytest.approx(numbers(theirs), rel=1e-5), policy


def test_select_stops_the_members_it_names_after_probing_them(tiny: Any) -> None:
    configs = [
        member(i, {"policy": "fixed", "lr": 0.01 * (i + 1)}, {"name": "sgd"}) for i in range(4)
    ]
    asked: list[tuple[int, list[int], list[int]]] = []

    def select(
        epoch: int, results: dict[int, EpochResult], probes: dict[int, ProbeResult]
    ) -> set[int]:
        asked.append((epoch, sorted(results), sorted(probes)))
        return {0, 2} if epoch == 1 else set()

    outcomes = run_population(
        configs,
        lambda index, result: None,
        probing=PopulationProbing(
            epochs=frozenset({1}), cooldown=Cooldown(), on_probe=lambda i, p: None
        ),
        select=select,
    )

    assert [o.status for o in outcomes] == ["stopped", "completed", "stopped", "completed"]
    assert [o.epochs_done for o in outcomes] == [1, 4, 1, 4]
    # Asked after every epoch but the last, about the members that could go on; probed at 1.
    assert asked == [(1, [0, 1, 2, 3], [0, 1, 2, 3]), (2, [1, 3], []), (3, [1, 3], [])]


class Crash(Exception):
    """The process dies (kill -9) after a report."""


def test_a_resumed_population_goes_on_exactly_as_an_uninterrupted_one(
    tiny: Any, tmp_path: Path
) -> None:
    configs = [member(i, s, OPTIMIZERS["adam"]) for i, s in enumerate(SCHEDULES[-4:])]
    # One member stops at epoch 1, before the checkpoint: it must stay gone after resuming.
    stops = {(1, 1)}

    def run(*, crash_after: int | None, **options: Any) -> tuple[Any, ...]:
        epochs: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(configs))}
        weights: dict[int, dict[str, torch.Tensor]] = {}

        def report(index: int, result: EpochResult) -> bool:
            if crash_after is not None and result.epoch > crash_after:
                raise Crash
            epochs[index].append(numbers(result))
            return (index, result.epoch) in stops

        outcomes = run_population(configs, report, on_done=weights.__setitem__, **options)
        return epochs, weights, [(o.status, o.epochs_done, o.best_metric) for o in outcomes]

    uninterrupted = run(crash_after=None)
    path = tmp_path / "population.pt"
    saving = PopulationCheckpointing(due=lambda epoch: epoch == 2, save=lambda s: s.save(path))
    with pytest.raises(Crash):
        run(crash_after=2, checkpointing=saving)
    state = PopulationState.load(path)
    resumed = run(crash_after=None, resume=state)

    assert state.epoch == 2 and state.active == [0, 2, 3]
    epochs, weights, outcomes = resumed
    assert outcomes == uninterrupted[2]
    for index in range(len(configs)):
        done = 1 if index == 1 else 2
        assert epochs[index] == uninterrupted[0][index][done:]
        for name, value in uninterrupted[1][index].items():
            if index != 1:  # its weights went to on_done before the crash
                assert torch.equal(weights[index][name], value)


def test_a_population_in_chunks_trains_and_resumes_as_one(tiny: Any, tmp_path: Path) -> None:
    # What a population larger than a GPU's free memory does: `size` members at a time.
    configs = [member(i, s, OPTIMIZERS["sgd"]) for i, s in enumerate(SCHEDULES[:5])]
    whole: dict[int, list[dict[str, float]]] = {i: [] for i in range(5)}
    run_population(configs, lambda index, result: whole[index].append(numbers(result)))

    def run(*, crash_at: tuple[int, int] | None, **options: Any) -> dict[int, list[Any]]:
        epochs: dict[int, list[dict[str, float]]] = {i: [] for i in range(5)}

        def report(index: int, result: EpochResult) -> None:
            if (index, result.epoch) == crash_at:
                raise Crash
            epochs[index].append(numbers(result))

        run_in_chunks(configs, report, size=2, **options)
        return epochs

    def same(mine: list[dict[str, float]], theirs: list[dict[str, float]]) -> bool:
        return len(mine) == len(theirs) and all(
            a == pytest.approx(b, rel=1e-5) for a, b in zip(mine, theirs, strict=True)
        )

    chunked = run(crash_at=None)
    assert all(same(chunked[index], whole[index]) for index in range(5))
    saved: list[SavedPopulation] = []
    # Crash in the second chunk (members 2 and 3) at its epoch 3, after its epoch-2 checkpoint.
    with pytest.raises(Crash):
        run(crash_at=(2, 3), due=lambda epoch: epoch == 2, save=saved.append)
    assert [(s.chunk, s.state.epoch) for s in saved] == [(0, 2), (1, 2)]
    saved[-1].save(tmp_path)
    resumed = run(crash_at=None, resume=SavedPopulation.load(tmp_path))
    assert resumed[0] == resumed[1] == []  # the first chunk had ended
    # The resumed chunk goes on exactly (the same process, the same numbers).
    for index in (2, 3):
        assert resumed[index] == chunked[index][2:]
    assert resumed[4] == chunked[4]


def test_on_a_cpu_a_population_takes_every_member() -> None:
    configs = [member(i, {"policy": "fixed", "lr": 0.05}, {"name": "sgd"}) for i in range(5)]
    assert population_size(configs) == 5


def test_members_with_other_data_orders_or_optimizers_do_not_fuse() -> None:
    fixed = {"policy": "fixed", "lr": 0.05}
    one = member(0, fixed, {"name": "sgd"})
    with pytest.raises(NotFusible, match="data order"):
        check_fusible([one, one.model_copy(update={"shuffle_seed": SHUFFLE_SEED + 1})])
    with pytest.raises(NotFusible, match="optimizer"):
        check_fusible([one, member(1, fixed, {"name": "adam"})])
    with pytest.raises(NotFusible, match="two weight sets"):
        check_fusible([member(0, fixed, {"name": "sgd_schedulefree"})])


def test_members_whose_user_code_draws_other_data_do_not_fuse(tiny: Any) -> None:
    fixed = {"policy": "fixed", "lr": 0.05}
    configs = [member(i, fixed, {"name": "sgd"}, seeded_data=True) for i in range(2)]
    with pytest.raises(NotFusible, match="other examples"):
        run_population(configs, lambda index, result: None)


@pytest.mark.parametrize(
    ("layer", "reason"), [("batchnorm", "running statistics"), ("dropout", "masks")]
)
def test_batchnorm_and_dropout_are_not_fusible(tiny: Any, layer: str, reason: str) -> None:
    configs = [
        member(i, {"policy": "fixed", "lr": 0.05}, {"name": "sgd"}, layer=layer) for i in range(2)
    ]
    with pytest.raises(NotFusible, match=reason):
        run_population(configs, lambda index, result: None)


def test_a_lone_trial_orders_its_batches_by_its_shuffle_seed(tiny: Any) -> None:
    def train_losses(shuffle_seed: int | None) -> list[float]:
        config = member(0, {"policy": "fixed", "lr": 0.05}, {"name": "sgd"})
        results: list[EpochResult] = []
        run_trial(config.model_copy(update={"shuffle_seed": shuffle_seed}), results.append)
        return [result.train_loss for result in results]

    # The tiny workload's TensorBatches is made without a seed: its own order is seed 0's.
    assert train_losses(None) == train_losses(0) != train_losses(SHUFFLE_SEED)
