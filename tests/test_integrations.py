"""The Lightning and Hugging Face callbacks (`lrtune.integrations`) run real, tiny trainings as
lrtune trials, in-process: the rate of every optimizer step is the preview's (warmup and group
multipliers included, gradient accumulation counted in optimizer steps), every epoch is reported
with its losses and a validation metric, and a report answering stop ends the trainer."""

from __future__ import annotations

import importlib
import itertools
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lrtune.integrations import steps_per_epoch
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.workers.schedule_math import learning_rates
from lrtune.workers.train_function import TrainFunctionError
from lrtune.workers.trial import run_trial, run_trials_sequentially

from tests.conftest import use_code_path

_names = itertools.count()

# 112 random samples of 8 features in 3 classes, batches of 16: 7 batches an epoch. The body
# of each model is `body`, its last layer `head` (the param-group rule's match).
DATA = """
import torch

def data():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(112, 8, generator=generator)
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
    return inputs, labels

BATCHES = 7
"""

LIGHTNING = (
    DATA
    + """
import lightning as L
from torch import nn
from lrtune.integrations import steps_per_epoch
from lrtune.integrations.lightning import LrtuneCallback
from lrtune.workers import TrainFunction

RATES = []  # (global step, [rate of each param group]) as each optimizer step saw them
LOSSES = []  # every training batch's loss


class Net(L.LightningModule):
    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, inputs):
        return self.head(torch.relu(self.body(inputs)))

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        loss = nn.functional.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss, on_epoch=True)
        LOSSES.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        inputs, labels = batch
        logits = self(inputs)
        self.log("val_loss", nn.functional.cross_entropy(logits, labels))
        self.log("val_accuracy", (logits.argmax(dim=1) == labels).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.ctx.param_groups(self), lr=0.0, momentum=0.9)


class Record(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        RATES.append((trainer.global_step, [group["lr"] for group in optimizer.param_groups]))


def make(accumulate=1, declared=None):
    inputs, labels = data()
    dataset = torch.utils.data.TensorDataset(inputs, labels)

    def train(ctx):
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)
        val_loader = torch.utils.data.DataLoader(dataset, batch_size=56)
        trainer = L.Trainer(
            max_epochs=ctx.epochs, accumulate_grad_batches=accumulate, accelerator="cpu",
            devices=1, callbacks=[LrtuneCallback(ctx), Record()], enable_progress_bar=False,
            logger=False, enable_checkpointing=False, enable_model_summary=False,
        )
        trainer.fit(Net(ctx), loader, val_loader)

    return TrainFunction(train, steps_per_epoch=declared or steps_per_epoch(BATCHES, accumulate))
"""
)

HUGGINGFACE = (
    DATA
    + """
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from lrtune.integrations import steps_per_epoch
from lrtune.integrations.huggingface import LrtuneTrainerCallback
from lrtune.workers import TrainFunction

RATES = []  # (global step, [rate of each param group]) as each optimizer step saw them
LOSSES = []  # every training batch's loss


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, inputs, labels=None):
        logits = self.head(torch.relu(self.body(inputs)))
        if labels is None:
            return {"logits": logits}
        loss = nn.functional.cross_entropy(logits, labels)
        if self.training:
            LOSSES.append(loss.item())
        return {"loss": loss, "logits": logits}


class Record(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        RATES.append((state.global_step, [group["lr"] for group in optimizer.param_groups]))


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def make(output_dir, own_scheduler=True, declared=None, trainer_args=None):
    inputs, labels = data()
    dataset = [{"inputs": x, "labels": y} for x, y in zip(inputs, labels)]

    def train(ctx):
        model = Net()
        optimizer = torch.optim.SGD(ctx.param_groups(model), lr=0.0, momentum=0.9)
        arguments = dict(
            output_dir=output_dir, num_train_epochs=ctx.epochs, per_device_train_batch_size=16,
            per_device_eval_batch_size=56, eval_strategy="epoch", logging_steps=3,
            save_strategy="no", seed=ctx.seed, use_cpu=True, report_to=[], disable_tqdm=True,
            remove_unused_columns=False,
        )
        args = TrainingArguments(**(arguments | (trainer_args or {})))
        trainer = Trainer(
            model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
            compute_metrics=accuracy,
            optimizers=(optimizer, ctx.lr_scheduler(optimizer) if own_scheduler else None),
            callbacks=[LrtuneTrainerCallback(ctx), Record()],
        )
        trainer.train()

    return TrainFunction(train, steps_per_epoch=declared or steps_per_epoch(BATCHES))
"""
)


@pytest.fixture
def lightning_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pytest.importorskip("lightning")
    return user_module(tmp_path, monkeypatch, LIGHTNING)


@pytest.fixture
def huggingface_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return user_module(tmp_path, monkeypatch, HUGGINGFACE)


def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write `source` as a fresh module on the path; its name."""
    name = f"user_integration_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    use_code_path(monkeypatch, tmp_path)
    return name


def config(module: str, params: dict[str, Any] | None = None, **overrides: Any) -> TrialConfig:
    fields: dict[str, Any] = {
        "workload": {"entrypoint": f"{module}:make", "params": params or {}},
        "schedule": {"policy": "cosine", "lr": 0.2, "decay_steps": 21, "warmup_steps": 4},
        "param_groups": [{"match": "head.", "lr_mult": 0.5}],
        "epochs": 3,
        "seed": 3,
        "metric": "val_accuracy",
        "mode": "max",
    }
    return TrialConfig.model_validate(fields | overrides)


def assert_rates_are_the_preview(trial: TrialConfig, recorded: list[Any], steps: int) -> None:
    """Every optimizer step 0..steps-1 trained at the preview's rate: x0.5 for the head's group
    (the rule's, first), x1 for the rest; the warmup is in there."""
    preview = learning_rates(parse_schedule(trial.schedule.model_dump()), np.arange(steps))
    assert [step for step, _ in recorded] == list(range(steps))
    assert [rates[0] for _, rates in recorded] == pytest.approx(0.5 * preview, rel=1e-12)
    assert [rates[1] for _, rates in recorded] == pytest.approx(preview, rel=1e-12)
    assert preview[0] < preview[3] < preview[4] > preview[-1]


def assert_reported_every_epoch(rows: list[EpochResult], losses: list[float]) -> None:
    """Epochs 1..3 of 7 steps each, their train_loss the mean of their 7 batches' losses, with a
    val_loss and the val_accuracy (the job's metric)."""
    assert [r.epoch for r in rows] == [1, 2, 3]
    assert [r.step for r in rows] == [7, 14, 21]
    assert [r.train_loss for r in rows] == pytest.approx(
        np.reshape(losses, (3, 7)).mean(axis=1), rel=1e-6
    )
    for row in rows:
        assert math.isfinite(row.val_loss)
        assert set(row.metrics) == {"val_accuracy"}
        assert 0.0 <= row.metrics["val_accuracy"] <= 1.0


# -- Lightning ----------------------------------------------------------------------------------


def test_lightning_trains_at_the_preview_rate_and_reports_every_epoch(
    lightning_module: str,
) -> None:
    trial = config(lightning_module)
    rows: list[EpochResult] = []
    outcome = run_trial(trial, rows.append)

    assert outcome.status == "completed" and outcome.epochs_done == 3
    user = importlib.import_module(lightning_module)
    assert_reported_every_epoch(rows, user.LOSSES)
    assert_rates_are_the_preview(trial, user.RATES, 21)


def test_lightning_gradient_accumulation_counts_optimizer_steps(lightning_module: str) -> None:
    # 7 batches accumulated by 2: 4 optimizer steps an epoch, the last one on a single batch.
    trial = config(
        lightning_module,
        {"accumulate": 2},
        schedule={"policy": "cosine", "lr": 0.2, "decay_steps": 12, "warmup_steps": 4},
    )
    rows: list[EpochResult] = []
    outcome = run_trial(trial, rows.append)

    assert outcome.status == "completed"
    assert [r.step for r in rows] == [4, 8, 12]
    assert_rates_are_the_preview(trial, importlib.import_module(lightning_module).RATES, 12)


def test_lightning_stops_when_the_report_says_stop(lightning_module: str) -> None:
    [outcome] = run_trials_sequentially(
        [config(lightning_module)], on_epoch=lambda index, result: result.epoch == 1
    )
    assert outcome.status == "stopped" and outcome.epochs_done == 1
    # No step of epoch 2 was trained.
    assert len(importlib.import_module(lightning_module).RATES) == 7


# -- Hugging Face -------------------------------------------------------------------------------


@pytest.mark.parametrize("own_scheduler", [True, False], ids=["scheduler-passed", "trainers-own"])
def test_huggingface_trains_at_the_preview_rate_and_reports_every_epoch(
    huggingface_module: str, tmp_path: Path, own_scheduler: bool
) -> None:
    params = {"output_dir": str(tmp_path / "out"), "own_scheduler": own_scheduler}
    trial = config(huggingface_module, params)
    rows: list[EpochResult] = []
    outcome = run_trial(trial, rows.append)

    assert outcome.status == "completed" and outcome.epochs_done == 3
    user = importlib.import_module(huggingface_module)
    # logging_steps=3: the Trainer logs at steps 3, 6, 7 (the epoch's end), 9, ...
    assert_reported_every_epoch(rows, user.LOSSES)
    assert_rates_are_the_preview(trial, user.RATES, 21)


def test_huggingface_stops_when_the_report_says_stop(
    huggingface_module: str, tmp_path: Path
) -> None:
    trial = config(huggingface_module, {"output_dir": str(tmp_path / "out")})
    [outcome] = run_trials_sequentially([trial], on_epoch=lambda index, result: result.epoch == 1)
    assert outcome.status == "stopped" and outcome.epochs_done == 1
    assert len(importlib.import_module(huggingface_module).RATES) == 7


@pytest.mark.parametrize(
    ("trainer_args", "problem"),
    [
        ({"eval_strategy": "steps", "eval_steps": 7}, r"eval_strategy=\"epoch\" \(got 'steps'\)"),
        ({"seed": 42}, r"re-seeds every RNG with args.seed \(42\), the trial's seed is 3"),
    ],
    ids=["eval-strategy", "seed"],
)
def test_huggingface_arguments_the_trial_cannot_follow_are_refused(
    huggingface_module: str, tmp_path: Path, trainer_args: dict[str, Any], problem: str
) -> None:
    params = {"output_dir": str(tmp_path / "out"), "trainer_args": trainer_args}
    with pytest.raises(TrainFunctionError, match=problem):
        run_trial(config(huggingface_module, params), lambda result: None)


# -- Both ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("library", ["lightning", "huggingface"])
def test_steps_per_epoch_other_than_the_trainers_are_refused_before_training(
    library: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    module = request.getfixturevalue(f"{library}_module")
    params: dict[str, Any] = {"declared": 8}
    if library == "huggingface":
        params["output_dir"] = str(tmp_path / "out")
    with pytest.raises(TrainFunctionError, match="takes 7 optimizer steps an epoch"):
        run_trial(config(module, params), lambda result: None)
    assert importlib.import_module(module).RATES == []


def test_steps_per_epoch_rounds_the_last_accumulation_up() -> None:
    assert steps_per_epoch(7) == 7
    assert steps_per_epoch(7, 2) == 4
    assert steps_per_epoch(range(8), 2) == 4
    with pytest.raises(ValueError, match="at least one batch"):
        steps_per_epoch(0)
    with pytest.raises(ValueError, match="positive int"):
        steps_per_epoch(4, 0)


@pytest.mark.parametrize(
    ("module", "install"),
    [("lightning", "pip install lightning"), ("huggingface", "pip install transformers")],
)
def test_without_the_library_the_import_error_says_what_to_install(
    module: str, install: str
) -> None:
    blocked = {"lightning": "lightning", "huggingface": "transformers"}[module]
    # A fresh interpreter where the library cannot be imported (a None entry in sys.modules).
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        f"try:\n    import lrtune.integrations.{module}\n"
        "except ImportError as error:\n    print(error)\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert install in printed
