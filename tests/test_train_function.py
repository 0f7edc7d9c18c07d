"""Users' own training loops (`TrainFunction`, `TrialContext`) run as lrtune trials, in-process:
the rates are the preview's, stop and divergence end them, checkpoints resume them exactly,
and every kind of bad user code ends the trial with its own error."""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.workers.schedule_math import learning_rates
from lrtune.workers.train_function import FunctionState, TrainFunction, TrainFunctionError
from lrtune.workers.trial import Checkpointing, run_trial, run_trials_sequentially
from lrtune.workers.user_code import describe_user_error
from lrtune.workers.workloads import WorkloadError, build_training

from tests.conftest import use_code_path

_names = itertools.count()

# A tiny regression loop; {body} is inserted in the epoch loop after the optimizer steps, so a
# test can make it misbehave at a given epoch. It records every rate it trains with.
LOOP = """
import torch
from torch import nn
from lrtune.workers import TrainFunction

RATES = []  # (step, [rate of each param group]) as the optimizer saw them


def make(steps=5, checkpoints=True, **params):
    def train(ctx):
        inputs = torch.randn(64, 4)
        targets = inputs.sum(dim=1, keepdim=True)
        model = nn.Sequential()
        model.add_module("body", nn.Linear(4, 8))
        model.add_module("head", nn.Linear(8, 1))
        optimizer = torch.optim.SGD(ctx.param_groups(model), lr=0.0, momentum=0.9)
        scheduler = ctx.lr_scheduler(optimizer)
        start, step = 1, 0
        state = ctx.load_checkpoint()
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, step = state["epoch"] + 1, state["step"]
        for epoch in range(start, ctx.epochs + 1):
            losses = []
            for _ in range(steps):
                index = torch.randint(0, 64, (16,))
                loss = nn.functional.mse_loss(model(inputs[index]), targets[index])
                optimizer.zero_grad()
                loss.backward()
                RATES.append((step, [group["lr"] for group in optimizer.param_groups]))
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
            train_loss = sum(losses) / len(losses)
            with torch.no_grad():
                val_loss = nn.functional.mse_loss(model(inputs), targets).item()
{body}
            if ctx.checkpoint_due(epoch) and checkpoints:
                ctx.save_checkpoint({{"epoch": epoch, "step": step, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}})
            rmse = val_loss ** 0.5
            if ctx.report(epoch, train_loss=train_loss, val_loss=val_loss, val_rmse=rmse):
                return

    return TrainFunction(train, steps_per_epoch=steps)
"""


def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write `source` as a fresh module on the path; its name."""
    name = f"user_loop_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    use_code_path(monkeypatch, tmp_path)
    return name


def loop_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str = "") -> str:
    return user_module(tmp_path, monkeypatch, LOOP.format(body=textwrap.indent(body, " " * 12)))


def config(module: str, **overrides: Any) -> TrialConfig:
    fields: dict[str, Any] = {
        "workload": {"entrypoint": f"{module}:make", "params": {}},
        "schedule": {"policy": "cosine", "lr": 0.05, "decay_steps": 20, "warmup_steps": 4},
        "epochs": 4,
        "seed": 3,
        "metric": "val_loss",
        "mode": "min",
    }
    return TrialConfig.model_validate(fields | overrides)


def test_rates_are_the_preview_step_for_step_with_warmup_and_group_multipliers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = loop_module(tmp_path, monkeypatch)
    trial = config(module, param_groups=[{"match": "head.", "lr_mult": 0.5}])
    rows: list[EpochResult] = []
    outcome = run_trial(trial, rows.append)

    assert outcome.status == "completed" and [r.epoch for r in rows] == [1, 2, 3, 4]
    recorded = __import__(module).RATES
    preview = learning_rates(parse_schedule(trial.schedule.model_dump()), np.arange(20))
    assert [step for step, _ in recorded] == list(range(20))
    # Groups: the rule's (head, x0.5) first, then the rest (x1), as the built-in loop has them.
    assert [rates[0] for _, rates in recorded] == pytest.approx(0.5 * preview, rel=1e-12)
    assert [rates[1] for _, rates in recorded] == pytest.approx(preview, rel=1e-12)
    assert preview[0] < preview[3]  # the warmup is in there
    assert [r.step for r in rows] == [5, 10, 15, 20]
    assert [r.lr for r in rows] == pytest.approx(preview[[4, 9, 14, 19]])


def test_report_answering_stop_ends_the_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = loop_module(tmp_path, monkeypatch)
    [outcome] = run_trials_sequentially(
        [config(module)], on_epoch=lambda index, result: result.epoch == 2
    )
    assert outcome.status == "stopped" and outcome.epochs_done == 2


def test_a_checkpointed_trial_resumes_with_the_same_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = loop_module(tmp_path, monkeypatch)
    saved: list[Any] = []
    every = Checkpointing(due=lambda epoch: epoch % 2 == 0, save=saved.append)
    calm: list[EpochResult] = []
    run_trial(config(module), calm.append, checkpointing=every)
    assert [state.epoch for state in saved] == [2, 4]
    assert all(isinstance(state, FunctionState) for state in saved)

    resumed: list[EpochResult] = []
    outcome = run_trial(config(module), resumed.append, resume=saved[0])
    assert outcome.status == "completed" and outcome.epochs_done == 4
    drop = {"elapsed_s"}
    assert [r.model_dump(exclude=drop) for r in resumed] == [
        r.model_dump(exclude=drop) for r in calm[2:]
    ]


def test_saving_after_reporting_the_epoch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
    import torch
    from lrtune.workers import TrainFunction

    def make():
        def train(ctx):
            weight = torch.nn.Parameter(torch.ones(1))
            optimizer = torch.optim.SGD([weight], lr=0.1)
            scheduler = ctx.lr_scheduler(optimizer)
            optimizer.step()
            scheduler.step()
            ctx.report(1, train_loss=1.0, val_loss=1.0)
            ctx.save_checkpoint({"weight": weight})
        return TrainFunction(train, steps_per_epoch=1)
    """
    module = user_module(tmp_path, monkeypatch, source)
    with pytest.raises(TrainFunctionError, match="save the state just before report"):
        run_trial(config(module, epochs=3), lambda result: None)


def test_a_nan_loss_ends_the_trial_diverged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = loop_module(tmp_path, monkeypatch, "if epoch == 2:\n    train_loss = float('nan')")
    rows: list[EpochResult] = []
    outcome = run_trial(config(module), rows.append)
    assert outcome.status == "diverged" and outcome.epochs_done == 2
    assert math.isnan(rows[-1].train_loss)


def test_an_exception_in_epoch_3_names_its_type_message_and_user_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = loop_module(
        tmp_path, monkeypatch, "if epoch == 3:\n    raise KeyError('batch norm statistics')"
    )
    rows: list[EpochResult] = []
    with pytest.raises(KeyError) as raised:
        run_trial(config(module), rows.append)
    assert [r.epoch for r in rows] == [1, 2]
    message = describe_user_error(raised.value)
    assert message.startswith("KeyError: 'batch norm statistics' (at ")
    assert f"{module}.py:" in message and message.endswith("in train)")
    # run_trials_sequentially records it, as Tune does for a Ray trial.
    [outcome] = run_trials_sequentially([config(module)])
    assert outcome.status == "failed" and "KeyError" in (outcome.error or "")


def test_the_jobs_metric_never_reported_fails_the_trial_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = loop_module(tmp_path, monkeypatch)
    with pytest.raises(TrainFunctionError, match="'val_accuracy' was not reported"):
        run_trial(config(module, metric="val_accuracy", mode="max"), lambda result: None)


def test_steps_other_than_declared_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop steps 5 times an epoch, yet declares 6.
    source = LOOP.format(body="").replace("steps_per_epoch=steps", "steps_per_epoch=steps + 1")
    module = user_module(tmp_path, monkeypatch, source)
    trial = config(module, workload={"entrypoint": f"{module}:make", "params": {"steps": 5}})
    with pytest.raises(TrainFunctionError, match="ended after 5 scheduler steps"):
        run_trial(trial, lambda result: None)


def test_returning_early_without_being_stopped_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = loop_module(tmp_path, monkeypatch, "if epoch == 2:\n    return")
    with pytest.raises(TrainFunctionError, match="returned after reporting 1 of 4 epochs"):
        run_trial(config(module), lambda result: None)


def test_an_entrypoint_returning_the_wrong_type_is_a_workload_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = user_module(tmp_path, monkeypatch, "def make():\n    return {'model': None}\n")
    with pytest.raises(WorkloadError, match=r"must return an lrtune\.workers\.Workload or an "):
        build_training(f"{module}:make")


def test_a_loader_without_len_is_a_workload_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
    import torch
    from lrtune.workers import Workload

    def batches():
        yield torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)

    def make():
        return Workload(model=torch.nn.Linear(4, 2), train_loader=batches(), val_loader=[])
    """
    module = user_module(tmp_path, monkeypatch, source)
    with pytest.raises(WorkloadError, match="train_loader has no len"):
        build_training(f"{module}:make")


@pytest.mark.parametrize(
    ("steps", "problem"),
    [(0, "must be positive"), (2.5, "must be an int"), (True, "must be an int")],
)
def test_train_function_declares_a_positive_whole_number_of_steps(steps: Any, problem: str) -> None:
    with pytest.raises((ValueError, TypeError), match=problem):
        TrainFunction(lambda ctx: None, steps_per_epoch=steps)


def test_the_scheduler_is_a_torch_lr_scheduler() -> None:
    from lrtune.workers.torch_schedule import ScheduleDriver
    from lrtune.workers.train_function import TrialLRScheduler

    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([{"params": [weight], "lr_mult": 2.0}], lr=1.0)
    spec = parse_schedule({"policy": "step", "lr": 0.1, "step_size": 2, "gamma": 0.5})
    scheduler = TrialLRScheduler(optimizer, ScheduleDriver(optimizer, spec))
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05])
    assert scheduler.get_last_lr() == pytest.approx([0.05])  # step 5, times the multiplier
