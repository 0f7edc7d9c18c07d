"""Hugging Face: `LrtuneTrainerCallback(ctx)` makes a `transformers.Trainer` run an lrtune trial.

    import math
    from transformers import Trainer, TrainingArguments
    from lrtune.integrations import steps_per_epoch
    from lrtune.integrations.huggingface import LrtuneTrainerCallback
    from lrtune.workers import TrainFunction

    def make(**params):
        train_set, val_set = ...
        batches = math.ceil(len(train_set) / 32)

        def train(ctx):
            model = Model(...)
            optimizer = torch.optim.AdamW(ctx.param_groups(model), weight_decay=0.01)
            args = TrainingArguments(output_dir=..., num_train_epochs=ctx.epochs,
                                     per_device_train_batch_size=32, gradient_accumulation_steps=2,
                                     eval_strategy="epoch", seed=ctx.seed,
                                     use_cpu=ctx.device.type == "cpu", report_to=[])
            trainer = Trainer(model=model, args=args, train_dataset=train_set,
                              eval_dataset=val_set, compute_metrics=...,
                              optimizers=(optimizer, ctx.lr_scheduler(optimizer)),
                              callbacks=[LrtuneTrainerCallback(ctx)])
            trainer.train()

        return TrainFunction(train, steps_per_epoch=steps_per_epoch(batches, 2))

The Trainer steps the scheduler it is given right after each `optimizer.step()`, before the
callbacks' `on_step_end`. With `optimizers=(optimizer, ctx.lr_scheduler(optimizer))` it steps
the trial's own, and its logged "learning_rate" is the trial's. Without one (the Trainer's
optimizer, or `optimizers=(optimizer, None)`), the callback puts `ctx.lr_scheduler(optimizer)` on
the Trainer's optimizer itself and steps it in `on_step_end`, after the Trainer's scheduler, so
the trial's rate is the one every step trains with (the Trainer's logged "learning_rate" is then
its own scheduler's, not the rate used). Either way, on `on_step_end` the trial's scheduler is
brought to `state.global_step`: a step the Trainer skipped (an fp16 overflow) still counts, as
it does in the Trainer's step count. With param_groups rules in the job, the optimizer must be
built from `ctx.param_groups(model)`.

Every epoch the callback reports, after the epoch's evaluation (`eval_strategy="epoch"`), the
evaluation's metrics (`eval_loss` as val_loss, every other `eval_X` as val_X, the timings left
out) and the epoch's mean training loss, from the "loss" entries of the Trainer's log history
(the callback makes the Trainer log at every epoch's end, so none straddles two epochs). When the
report answers stop, it sets `control.should_training_stop`. The Trainer must match the trial:
`num_train_epochs=ctx.epochs` (no max_steps), `ctx.steps_per_epoch` optimizer steps an epoch,
and `seed=ctx.seed` (the Trainer re-seeds every RNG with it). It saves no lrtune checkpoints,
so a trial that is resumed starts over from epoch 1.
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import (
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ImportError as error:  # pragma: no cover - exercised without transformers installed
    raise ImportError(
        "lrtune.integrations.huggingface needs transformers (and accelerate, for its Trainer): "
        "pip install transformers accelerate"
    ) from error

import torch
from lrtune.integrations import steps_per_epoch
from lrtune.workers.train_function import TrainFunctionError, TrialContext, TrialLRScheduler

__all__ = ["LrtuneTrainerCallback", "steps_per_epoch"]

# The timings `Trainer.evaluate` adds to its metrics: not metrics of the model.
_TIMINGS = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "tokens_per_second",
    "model_preparation_time",
)


class LrtuneTrainerCallback(TrainerCallback):
    """Drives a Hugging Face Trainer's optimizer with the trial's schedule, reports each epoch's
    evaluation to the trial and stops the Trainer when told to; see the module's docstring."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.scheduler: TrialLRScheduler | None = None
        self._training = False
        self._epoch_start = 0  # the global step the current epoch started at

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        ctx = self.ctx
        if self.scheduler is not None:
            raise TrainFunctionError("LrtuneTrainerCallback: one trainer.train() per trial")
        if args.eval_strategy != "epoch":
            raise TrainFunctionError(
                'LrtuneTrainerCallback reports every epoch\'s evaluation: eval_strategy="epoch" '
                f"(got {getattr(args.eval_strategy, 'value', args.eval_strategy)!r})"
            )
        if args.max_steps > 0 or args.num_train_epochs != ctx.epochs:
            raise TrainFunctionError(
                f"LrtuneTrainerCallback: the trial trains {ctx.epochs} epochs; pass "
                f"num_train_epochs=ctx.epochs and no max_steps (got num_train_epochs="
                f"{args.num_train_epochs}, max_steps={args.max_steps})"
            )
        if state.max_steps != ctx.total_steps:
            raise TrainFunctionError(
                f"LrtuneTrainerCallback: the Trainer takes {state.max_steps // ctx.epochs} "
                f"optimizer steps an epoch, the TrainFunction declared {ctx.steps_per_epoch}: "
                "declare steps_per_epoch=lrtune.integrations.steps_per_epoch(batches, "
                "gradient_accumulation_steps)"
            )
        if args.seed != ctx.seed:
            raise TrainFunctionError(
                f"LrtuneTrainerCallback: the Trainer re-seeds every RNG with args.seed "
                f"({args.seed}), the trial's seed is {ctx.seed}: pass seed=ctx.seed"
            )
        if isinstance(lr_scheduler, TrialLRScheduler):
            self.scheduler = lr_scheduler  # optimizers=(optimizer, ctx.lr_scheduler(optimizer))
        elif optimizer is None:
            raise TrainFunctionError("LrtuneTrainerCallback: the Trainer has no optimizer")
        else:
            self.scheduler = ctx.lr_scheduler(optimizer)
        self._training = True
        self._epoch_start = state.global_step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        scheduler = self._scheduler()
        while scheduler.last_epoch < state.global_step:
            scheduler.step()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        # The losses since the last log are logged now, before the epoch's evaluation.
        control.should_log = True
        return control

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrainerControl | None:
        if not self._training or state.global_step == 0:  # trainer.evaluate(), eval_on_start
            return None
        epoch = round(state.epoch or 0)
        values = evaluation_metrics(metrics or {})
        if "val_loss" not in values:
            raise TrainFunctionError(
                f"LrtuneTrainerCallback: the evaluation after epoch {epoch} has no eval_loss "
                f"(got {sorted(metrics or {})}); the model must return a loss given the labels"
            )
        train_loss = epoch_train_loss(state.log_history, self._epoch_start, state.global_step)
        if train_loss is None:
            raise TrainFunctionError(
                f"LrtuneTrainerCallback: the Trainer logged no training loss in epoch {epoch}"
            )
        self._epoch_start = state.global_step
        val_loss = values.pop("val_loss")
        if self.ctx.report(epoch, train_loss=train_loss, val_loss=val_loss, **values):
            control.should_training_stop = True
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._training = False

    def _scheduler(self) -> TrialLRScheduler:
        if self.scheduler is None:
            raise TrainFunctionError("LrtuneTrainerCallback: training started without it")
        return self.scheduler


def evaluation_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """An evaluation's metrics as an epoch reports them: `eval_X` as `val_X`, without the
    timings and anything that is not a number."""
    values: dict[str, float] = {}
    for name, value in metrics.items():
        bare = name.removeprefix("eval_")
        if bare == name or bare in _TIMINGS or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            values[f"val_{bare}"] = float(value)
    return values


def epoch_train_loss(log_history: list[dict[str, Any]], start: int, end: int) -> float | None:
    """The mean training loss over steps (start, end] from the Trainer's log history: each
    "loss" entry is the mean over the steps since the previous one, so they are weighted by
    those steps. None when nothing was logged in between."""
    total, steps, previous = 0.0, 0, 0
    for entry in log_history:
        if "loss" not in entry or "step" not in entry:
            continue
        step = int(entry["step"])
        if start < step <= end:
            total += float(entry["loss"]) * (step - previous)
            steps += step - previous
        previous = step
    return total / steps if steps else None
