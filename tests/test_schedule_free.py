"""Schedule-free optimizers (schedulefree's SGDScheduleFree and AdamWScheduleFree) as arms: the
spec and its 422s, the optimizer built from it, real trials on digits, the train()/eval() swaps
around every evaluation, probe and checkpoint, BatchNorm recalibrated at the average, and the
range test."""

from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import Cooldown, JobSpec
from lrtune.schemas.recommendations import RangeTestConfig
from lrtune.schemas.schedules import ParamGroupRule, parse_schedule
from lrtune.schemas.trials import EpochResult, OptimizerSpec, ProbeResult, TrialConfig
from lrtune.schemas.workloads import WorkloadSpec
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers import trial as trial_module
from lrtune.workers.code_export import pytorch_snippet
from lrtune.workers.lr_range_test import run_range_test
from lrtune.workers.recommendation import TrialSummary, build_recommendation
from lrtune.workers.schedule_math import learning_rates
from lrtune.workers.torch_schedule import ScheduleDriver
from lrtune.workers.trial import (
    Checkpointing,
    Probing,
    TrialState,
    build_optimizer,
    eval_weights,
    evaluate,
    load_state,
    recalibrate_batchnorm,
    run_trial,
    train_weights,
)
from lrtune.workers.workloads import Workload, build_workload
from pydantic import ValidationError
from schedulefree import AdamWScheduleFree, SGDScheduleFree

from tests.conftest import use_code_path

DIGITS_MLP = {"name": "digits", "params": {"model": "mlp", "batch_size": 128}}
DIGITS_CNN = {"name": "digits", "params": {"model": "cnn", "batch_size": 128}}
# Digits' cnn with BatchNorm after each convolution and dropout before the head (dropout draws
# from torch's global RNG, so the identity tests check the RNG hand-back too).
BN_DIGITS = {"entrypoint": "bn_digits_workload:make", "params": {"dropout": 0.2}}
BN_DIGITS_MODULE = """
from collections import OrderedDict

from lrtune.workers.workloads import TensorBatches, Workload, digits_arrays
from torch import nn


def make(batch_size=64, dropout=0.0):
    x_train, y_train, x_val, y_val = digits_arrays(0.2, 0)
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Dropout(dropout),
            ),
            head=nn.Linear(32 * 4 * 4, 10),
        )
    )
    return Workload(
        model=model,
        train_loader=TensorBatches(x_train, y_train, batch_size=batch_size, shuffle=True),
        val_loader=TensorBatches(x_val, y_val, batch_size=1024, shuffle=False),
    )
"""
# Rates in the ranges schedulefree's README advises (AdamW's x 1-10, SGD's x 10-50).
OPTIMIZERS = {
    "sgd_schedulefree": ({"name": "sgd_schedulefree", "weight_decay": 1e-4}, 0.5),
    "adamw_schedulefree": ({"name": "adamw_schedulefree", "weight_decay": 1e-4}, 0.01),
}
OPTIMIZER_CLASSES = {"sgd_schedulefree": SGDScheduleFree, "adamw_schedulefree": AdamWScheduleFree}


@pytest.fixture
def bn_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / "bn_digits_workload.py").write_text(textwrap.dedent(BN_DIGITS_MODULE))
    use_code_path(monkeypatch, tmp_path)
    yield
    sys.modules.pop("bn_digits_workload", None)


def config(workload: dict[str, Any], optimizer: str, **overrides: Any) -> TrialConfig:
    spec, lr = OPTIMIZERS[optimizer]
    fields: dict[str, Any] = {
        "workload": workload,
        "optimizer": spec,
        "schedule": {"policy": "fixed", "lr": lr, "warmup_steps": 20},
        "epochs": 4,
        "seed": 3,
        "metric": "val_accuracy",
        "mode": "max",
    }
    return TrialConfig.model_validate(fields | overrides)


def without_time(rows: list[Any]) -> list[dict[str, Any]]:
    return [row.model_dump(exclude={"elapsed_s"}) for row in rows]


def capture_builds(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Workload], list[Any]]:
    """Every workload and optimizer run_trial builds (the trial's first, then probe branches)."""
    workloads: list[Workload] = []
    optimizers: list[Any] = []
    real_workload, real_optimizer = trial_module.build_training, trial_module.build_optimizer

    def workload(*args: Any, **kwargs: Any) -> Workload:
        workloads.append(real_workload(*args, **kwargs))
        return workloads[-1]

    def optimizer(*args: Any, **kwargs: Any) -> Any:
        optimizers.append(real_optimizer(*args, **kwargs))
        return optimizers[-1]

    monkeypatch.setattr(trial_module, "build_training", workload)
    monkeypatch.setattr(trial_module, "build_optimizer", optimizer)
    return workloads, optimizers


# --- the spec ---------------------------------------------------------------------------------


def test_the_spec_maps_onto_schedulefree_and_their_warmup_stays_off() -> None:
    model = build_workload("digits", DIGITS_MLP["params"]).model
    schedule = parse_schedule({"policy": "fixed", "lr": 0.5, "warmup_steps": 10})

    sgd_spec = OptimizerSpec.model_validate({"name": "sgd_schedulefree", "weight_decay": 1e-3})
    assert sgd_spec.momentum == 0.9 and sgd_spec.schedule_free  # schedulefree's default
    sgd = build_optimizer(model, sgd_spec, schedule)
    assert isinstance(sgd, SGDScheduleFree)
    group = sgd.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["warmup_steps"]) == (0.9, 1e-3, 0)
    assert group["lr"] == 0.0  # lr(0) of the warmup, which starts at 0

    adamw_spec = OptimizerSpec.model_validate(
        {"name": "adamw_schedulefree", "betas": [0.95, 0.99], "eps": 1e-6, "weight_decay": 0.1}
    )
    adamw = build_optimizer(model, adamw_spec, schedule)
    assert isinstance(adamw, AdamWScheduleFree)
    group = adamw.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.95, 0.99), 1e-6, 0.1)
    assert group["warmup_steps"] == 0
    assert not OptimizerSpec(name="adamw").schedule_free


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"name": "sgd_schedulefree", "momentum": 0.0}, "needs momentum in (0, 1)"),
        ({"name": "sgd_schedulefree", "nesterov": True}, "nesterov applies to sgd only"),
        ({"name": "adamw_schedulefree", "momentum": 0.9}, "uses betas"),
        ({"name": "adamw_schedulefree", "betas": [0.0, 0.999]}, "needs betas[0] > 0"),
        ({"name": "radam_schedulefree"}, "Input should be"),
    ],
)
def test_the_spec_refuses_what_schedulefree_cannot_run(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        OptimizerSpec.model_validate(bad)


def test_a_trial_with_a_schedule_free_optimizer_runs_the_fixed_policy_only() -> None:
    with pytest.raises(
        ValidationError, match=r"fixed policy \(plus warmup\) only, not \['cosine'\]"
    ):
        config(
            DIGITS_MLP,
            "adamw_schedulefree",
            schedule={"policy": "cosine", "lr": 0.01, "decay_steps": 100},
        )


def test_a_job_with_a_schedule_free_optimizer_and_another_policy_is_422(
    api_client: TestClient, job_body: dict[str, Any]
) -> None:
    # The job's optimizer is the field to change (or clr's own: tests/test_optimizer_arms.py).
    body = {**job_body, "optimizer": {"name": "sgd_schedulefree"}, "policies": ["fixed", "clr"]}
    answer = api_client.post("/v1/jobs", json=body)
    assert answer.status_code == 422, answer.text
    fields = answer.json()["error"]["fields"]
    assert [f["path"] for f in fields] == ["optimizer.name"]
    assert (
        "sgd_schedulefree runs with the fixed policy (plus warmup) only, not ['clr']"
        in (fields[0]["message"])
    )
    assert "averaging its iterates" in fields[0]["message"]
    assert api_client.get("/v1/jobs").json()["items"] == []

    # The fixed policy with a searched warmup is the arm.
    arm = {"policy": "fixed", "search": {"warmup_steps": {"int": [0, 50]}}}
    accepted = api_client.post("/v1/jobs", json={**body, "policies": [arm]})
    assert accepted.status_code == 201, accepted.text
    assert JobSpec.model_validate(accepted.json()["spec"]).optimizer.momentum == 0.9


# --- the rate, set every step -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd_schedulefree", "adamw_schedulefree"])
def test_setting_the_rate_every_step_is_their_own_warmup(name: str) -> None:
    """Why the schedule's warmup may drive them: schedulefree reads group["lr"] at every step and
    weights its average by the largest rate so far, so handing it its own warmup's rates step by
    step gives the same weights, bit for bit, as its warmup_steps."""
    lr, warmup = 0.1, 7
    optimizer_class = SGDScheduleFree if name == "sgd_schedulefree" else AdamWScheduleFree

    def train(*, own_warmup: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        optimizer = optimizer_class(
            model.parameters(), lr=lr, weight_decay=0.01, warmup_steps=warmup if own_warmup else 0
        )
        optimizer.train()
        data = torch.Generator().manual_seed(1)
        for k in range(30):
            if not own_warmup:
                optimizer.param_groups[0]["lr"] = lr * ((k + 1) / warmup if k < warmup else 1.0)
            loss = model(torch.randn(8, 5, generator=data)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        optimizer.eval()
        return [p.detach().clone() for p in model.parameters()]

    theirs, ours = train(own_warmup=True), train(own_warmup=False)
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True))


# --- real trials ------------------------------------------------------------------------------


@pytest.mark.parametrize("workload", [DIGITS_MLP, DIGITS_CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_schedule_free_trial_on_digits_trains_and_improves(
    workload: dict[str, Any], optimizer: str
) -> None:
    rows: list[EpochResult] = []
    outcome = run_trial(config(workload, optimizer), rows.append)
    assert outcome.status == "completed" and outcome.epochs_done == 4
    losses = [row.train_loss for row in rows]
    assert losses == sorted(losses, reverse=True)
    assert rows[-1].metrics["val_accuracy"] > 0.85
    assert rows[-1].lr == OPTIMIZERS[optimizer][1]  # past the warmup, the fixed rate


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_evaluation_and_checkpoint_sees_the_average_and_training_the_fast_iterate(
    optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workloads, optimizers = capture_builds(monkeypatch)
    modes: list[tuple[str, bool]] = []
    real_evaluate = trial_module.evaluate

    def spying_evaluate(workload: Workload, model: Any, *args: Any) -> Any:
        first = next(model.parameters())
        (owner,) = [o for o in optimizers if any(p is first for p in o.param_groups[0]["params"])]
        modes.append(
            ("trial" if owner is optimizers[0] else "probe", owner.param_groups[0]["train_mode"])
        )
        return real_evaluate(workload, model, *args)

    monkeypatch.setattr(trial_module, "evaluate", spying_evaluate)
    saved: list[TrialState] = []
    rows: list[EpochResult] = []
    run_trial(
        config(DIGITS_MLP, optimizer, epochs=3),
        rows.append,
        probing=Probing(epochs=frozenset({2}), cooldown=Cooldown(), on_probe=lambda p: None),
        checkpointing=Checkpointing(due=lambda epoch: True, save=saved.append),
    )

    # Three epochs and one probe, every one evaluated in eval mode (schedulefree raises if a
    # step is taken in it, so the training steps ran in train mode).
    assert modes == [("trial", False), ("trial", False), ("probe", False), ("trial", False)]
    assert [s.optimizer["param_groups"][0]["train_mode"] for s in saved] == [False] * 3
    # The trial ends at x: its last reported numbers are those of the model as it is left.
    model, trial_optimizer = workloads[0].model, optimizers[0]
    val_loss, metrics = evaluate(workloads[0], model, workloads[0].val_loader, torch.device("cpu"))
    assert (val_loss, metrics) == (rows[-1].val_loss, rows[-1].metrics)
    trial_optimizer.train()  # y, where the gradients were taken, is another point
    assert evaluate(workloads[0], model, workloads[0].val_loader, torch.device("cpu"))[0] != (
        val_loss
    )


# --- probes and checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("workload", ["mlp", "bn"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_schedule_free_trial_with_probes_reports_what_it_reports_without(
    workload: str, optimizer: str, request: pytest.FixtureRequest
) -> None:
    if workload == "bn":
        request.getfixturevalue("bn_digits")
    spec = DIGITS_MLP if workload == "mlp" else BN_DIGITS
    plain: list[EpochResult] = []
    run_trial(config(spec, optimizer), plain.append)

    probed: list[EpochResult] = []
    probes: list[ProbeResult] = []
    probing = Probing(
        epochs=frozenset({1, 3}), cooldown=Cooldown(fraction=1.0), on_probe=probes.append
    )
    run_trial(config(spec, optimizer), probed.append, probing=probing)

    assert without_time(probed) == without_time(plain)
    assert [p.epoch for p in probes] == [1, 3]
    assert [p.cooldown_steps for p in probes] == [plain[0].step, plain[2].step]
    # The branch trained and was evaluated at its own average: its numbers are its own.
    assert all(math.isfinite(p.val_loss) for p in probes)
    assert probes[1].val_loss != plain[2].val_loss


@pytest.mark.parametrize("workload", ["mlp", pytest.param("bn", marks=pytest.mark.slow)])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_schedule_free_trial_resumed_from_its_checkpoint_reports_the_same_epochs(
    workload: str, optimizer: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if workload == "bn":
        request.getfixturevalue("bn_digits")
    spec = DIGITS_MLP if workload == "mlp" else BN_DIGITS
    uninterrupted: list[EpochResult] = []
    run_trial(config(spec, optimizer), uninterrupted.append)

    path = tmp_path / "state.pt"
    first: list[EpochResult] = []

    def report_until_epoch_3(row: EpochResult) -> bool:  # a worker dying after epoch 3
        first.append(row)
        return row.epoch == 3

    run_trial(
        config(spec, optimizer),
        report_until_epoch_3,
        checkpointing=Checkpointing(due=lambda epoch: epoch == 2, save=lambda s: s.save(path)),
    )
    resumed: list[EpochResult] = []
    run_trial(config(spec, optimizer), resumed.append, resume=load_state(path))

    assert [row.epoch for row in resumed] == [3, 4]
    assert without_time(first[:2] + resumed) == without_time(uninterrupted)


# --- BatchNorm --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("bn_digits")
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_batchnorm_recalibration_changes_what_is_evaluated_not_what_is_trained(
    optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recalibrated: list[EpochResult] = []
    run_trial(config(BN_DIGITS, optimizer), recalibrated.append)

    monkeypatch.setattr(trial_module, "recalibrate_batchnorm", lambda *a, **k: True)
    with_y_statistics: list[EpochResult] = []
    run_trial(config(BN_DIGITS, optimizer), with_y_statistics.append)

    # Same data order, same dropout draws, same weights: only the evaluation's statistics move.
    assert [r.train_loss for r in recalibrated] == [r.train_loss for r in with_y_statistics]
    # Early on, y and x are far apart, and statistics gathered at y misjudge x.
    assert recalibrated[0].val_loss < with_y_statistics[0].val_loss


def test_recalibration_averages_the_batches_at_the_current_weights_and_hands_back_the_rng() -> None:
    class Batches:
        """Three batches per epoch, different each epoch; counts the epochs it is set to."""

        def __init__(self) -> None:
            self.epoch = 0
            self.epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch
            self.epochs.append(epoch)

        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for index in range(3):
                generator = torch.Generator().manual_seed(10 * self.epoch + index)
                yield torch.randn(16, 4, generator=generator) * (index + 1), torch.zeros(16)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4, momentum=0.3))
    model.eval()
    norm = model[1]
    loader = Batches()
    expected = []
    for epoch, index in [(5, 0), (5, 1), (5, 2), (6, 0), (6, 1)]:
        inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(10 * epoch + index))
        with torch.no_grad():
            expected.append(model[0](inputs * (index + 1)))
    torch.manual_seed(123)
    before = torch.get_rng_state()

    assert recalibrate_batchnorm(model, loader, device=torch.device("cpu"), data_epoch=5, batches=5)

    assert loader.epochs == [5, 6]
    torch.testing.assert_close(
        norm.running_mean, torch.stack([e.mean(0) for e in expected]).mean(0)
    )
    torch.testing.assert_close(
        norm.running_var, torch.stack([e.var(0, unbiased=True) for e in expected]).mean(0)
    )
    assert norm.momentum == 0.3 and not model.training
    assert torch.equal(torch.get_rng_state(), before)
    assert not recalibrate_batchnorm(
        torch.nn.Linear(2, 2), loader, device=torch.device("cpu"), data_epoch=0
    )


# --- the range test ---------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_range_test_ramps_a_schedule_free_optimizer(optimizer: str) -> None:
    result = run_range_test(
        workload=WorkloadSpec(name="digits"),
        optimizer=OptimizerSpec.model_validate(OPTIMIZERS[optimizer][0]),
        test=RangeTestConfig(min_lr=1e-4, max_lr=10.0, iterations=60),
    )
    assert result.iterations > 10
    assert all(math.isfinite(v) for v in result.loss[:10])
    assert min(result.smoothed_loss) < result.smoothed_loss[0]


# --- the exported code ------------------------------------------------------------------------

# The model and batches of both sides: a BatchNorm layer, so the snippet's recalibration counts.
EXPORT_MODEL = """
from collections import OrderedDict

import torch


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        OrderedDict(
            hidden=torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU()
            ),
            head=torch.nn.Linear(8, 3),
        )
    )


def make_batches():
    data = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 4, generator=data), torch.randint(0, 3, (16,), generator=data))
        for _ in range(60)
    ]
"""
# Trains with nothing but the snippet (and the user's loop), in a fresh interpreter.
EXPORT_HARNESS = """
import json
import sys

import torch
from export_model import make_batches, make_model

results = []
for case in json.load(open(sys.argv[1])):
    model = make_model()
    namespace = {"model": model}
    exec(case["snippet"], namespace)
    optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
    batches = make_batches()
    rates = []
    namespace["lrtune_train"]()
    for inputs, targets in batches[: case["steps"]]:
        rates.append([group["lr"] for group in optimizer.param_groups])
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    namespace["lrtune_eval"](batches)
    results.append(
        {
            "optimizer": type(optimizer).__name__,
            "rates": rates,
            "eval_mode": not model.training and not optimizer.param_groups[0]["train_mode"],
            "state": {name: value.tolist() for name, value in model.state_dict().items()},
        }
    )
json.dump(results, open(sys.argv[2], "w"))
"""
EXPORT_STEPS = 40
EXPORT_SCHEDULE = {"policy": "fixed", "lr": 0.05, "warmup_steps": 10}
EXPORT_CASES = [
    (name, rules)
    for name in OPTIMIZERS
    for rules in ([], [ParamGroupRule(match="head.", lr_mult=0.5)])
]


def test_the_exported_code_builds_the_optimizer_swaps_it_and_trains_as_the_trial_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "export_model.py").write_text(EXPORT_MODEL)
    (tmp_path / "harness.py").write_text(EXPORT_HARNESS)
    schedule = parse_schedule(EXPORT_SCHEDULE)
    cases = [
        {
            "snippet": pytorch_snippet(
                schedule,
                param_groups=rules or None,
                training_steps=EXPORT_STEPS,
                optimizer=OptimizerSpec.model_validate(OPTIMIZERS[name][0]),
            ),
            "steps": EXPORT_STEPS,
        }
        for name, rules in EXPORT_CASES
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    completed = subprocess.run(
        [sys.executable, "harness.py", "cases.json", "out.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((tmp_path / "out.json").read_text())

    use_code_path(monkeypatch, tmp_path)
    export_model = importlib.import_module("export_model")
    try:
        for (name, rules), case, result in zip(EXPORT_CASES, cases, results, strict=True):
            assert "optimizer.train()" in case["snippet"] and "optimizer.eval()" in case["snippet"]
            assert result["optimizer"] == OPTIMIZER_CLASSES[name].__name__ and result["eval_mode"]
            mults = [0.5, 1.0] if rules else [1.0]  # the head's group first, as in a trial
            expected_rates = learning_rates(schedule, np.arange(EXPORT_STEPS))[:, None] * mults
            np.testing.assert_allclose(result["rates"], expected_rates, rtol=1e-12, atol=0.0)

            # lrtune's own trial code on the same model and batches ends at the same average.
            model = export_model.make_model()
            spec = OptimizerSpec.model_validate(OPTIMIZERS[name][0])
            optimizer = build_optimizer(model, spec, schedule, rules)
            driver = ScheduleDriver(optimizer, schedule, total_steps=EXPORT_STEPS)
            batches = export_model.make_batches()
            train_weights(model, optimizer)
            for inputs, targets in batches[:EXPORT_STEPS]:
                loss = torch.nn.functional.cross_entropy(model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                driver.step()
            eval_weights(
                model, optimizer, train_loader=batches, device=torch.device("cpu"), data_epoch=0
            )
            for key, value in model.state_dict().items():
                np.testing.assert_allclose(
                    np.asarray(result["state"][key]), value.numpy(), rtol=1e-6, atol=1e-7
                )
    finally:
        sys.modules.pop("export_model", None)


def test_the_recommendation_of_a_schedule_free_job_exports_its_optimizer() -> None:
    fixed = parse_schedule({"policy": "fixed", "lr": 0.01, "warmup_steps": 20})
    trials = [
        TrialSummary(
            trial_id=f"t{seed}",
            policy="fixed",
            schedule=fixed,
            seed=seed,
            metric_values=[0.8, 0.9],
            status="completed",
        )
        for seed in range(2)
    ]
    recommendation = build_recommendation(
        job_id="j",
        trials=trials,
        metric="val_accuracy",
        mode="max",
        final=True,
        optimizer=OptimizerSpec(name="adamw_schedulefree"),
    )
    code = recommendation.code["pytorch"]
    assert "optimizer = schedulefree.AdamWScheduleFree(" in code
    assert "def lrtune_train():" in code and "def lrtune_eval(" in code
    plain = build_recommendation(
        job_id="j", trials=trials, metric="val_accuracy", mode="max", final=True
    )
    assert "schedulefree" not in plain.code["pytorch"]


# --- a job through the real worker ------------------------------------------------------------


@pytest.mark.ray
def test_a_schedule_free_job_runs_to_its_recommendation(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    """The range test, cooldown-judged ASHA (probes, checkpoints at the rung) and the export,
    with adamw_schedulefree under the fixed policy and a searched warmup."""
    spec = JobSpec.model_validate(
        {
            "workload": DIGITS_MLP,
            "optimizer": {"name": "adamw_schedulefree"},
            "policies": [{"policy": "fixed", "search": {"warmup_steps": {"int": [0, 20]}}}],
            "lr_bounds": "auto",
            "range_test": {"iterations": 40, "min_lr": 1e-5, "max_lr": 10.0},
            "budget": {"epochs": 3, "trials_per_policy": 2, "max_concurrent_trials": 2},
            "early_stopping": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 3},
        }
    )
    job, _ = store.create_job(spec=spec)
    run_worker(settings, once=True, store=store)
    job = store.get_job(job.id)

    assert job.status == "succeeded", job.error
    trials = store.list_trials(job_id=job.id, limit=10).items
    assert len(trials) == 2 and {t.status for t in trials} <= {"completed", "pruned"}
    probes = [api_client.get(f"/v1/trials/{t.id}/probes").json() for t in trials]
    assert all(p and p[0]["epoch"] == 1 for p in probes)  # each judged at the rung by a probe
    answer = api_client.get(f"/v1/jobs/{job.id}/recommendation")
    assert answer.status_code == 200, answer.text
    code = answer.json()["code"]["pytorch"]
    assert "schedulefree.AdamWScheduleFree(" in code and "def lrtune_eval(" in code
