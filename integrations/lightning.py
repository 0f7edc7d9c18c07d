"""PyTorch Lightning: `LrtuneCallback(ctx)` makes a `lightning.Trainer` run an lrtune trial.

    import lightning as L
    from lrtune.integrations import steps_per_epoch
    from lrtune.integrations.lightning import LrtuneCallback
    from lrtune.workers import TrainFunction

    class Net(L.LightningModule):
        def __init__(self, ctx): ...             # keep ctx for configure_optimizers
        def training_step(self, batch, batch_idx):
            ...; self.log("train_loss", loss, on_epoch=True); return loss
        def validation_step(self, batch, batch_idx):
            ...; self.log("val_loss", loss); self.log("val_accuracy", accuracy)
        def configure_optimizers(self):          # the optimizer only: the callback schedules it
            return torch.optim.AdamW(self.ctx.param_groups(self), weight_decay=0.01)

    def make(**params):
        loader, val_loader = ...

        def train(ctx):
            trainer = L.Trainer(max_epochs=ctx.epochs, accumulate_grad_batches=2,
                                accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
                                devices=1, callbacks=[LrtuneCallback(ctx)])
            trainer.fit(Net(ctx), loader, val_loader)

        return TrainFunction(train, steps_per_epoch=steps_per_epoch(loader, 2))

What the callback does:

- at the start of training it puts `ctx.lr_scheduler(optimizer)` on the trainer's one optimizer
  and steps it after every optimizer step (`trainer.global_step`, so gradient accumulation counts
  in optimizer steps, as lrtune's schedules do). `configure_optimizers` must return no scheduler
  of its own, and the trainer must match the trial: `max_epochs=ctx.epochs` and
  `ctx.steps_per_epoch` optimizer steps an epoch (`steps_per_epoch(batches, accumulation)`).
- at the end of every training epoch (its validation done) it reports the epoch from the logged
  metrics (`trainer.callback_metrics`): `train_loss` (log it with `on_epoch=True`, so it is the
  epoch's mean; a `train_loss_epoch` is read as train_loss), `val_loss`, and every other `val_*`
  metric as it is named (the job's metric must be among them). A validation must run every epoch.
- when the report answers stop (cancelled, stopped early, diverged) it sets
  `trainer.should_stop`, and fit returns after that epoch.

It saves no lrtune checkpoints, so a trial that is resumed starts over from epoch 1.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised without lightning installed
    raise ImportError(
        "lrtune.integrations.lightning needs PyTorch Lightning: pip install lightning"
    ) from error

from lrtune.integrations import steps_per_epoch
from lrtune.workers.train_function import TrainFunctionError, TrialContext, TrialLRScheduler

__all__ = ["LrtuneCallback", "steps_per_epoch"]


class LrtuneCallback(pl.Callback):
    """Drives a Lightning Trainer's optimizer with the trial's schedule, reports each epoch to
    the trial and stops the trainer when told to; see the module's docstring."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.scheduler: TrialLRScheduler | None = None
        self._validated = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctx = self.ctx
        if self.scheduler is not None:
            raise TrainFunctionError("LrtuneCallback: one trainer.fit per trial")
        if trainer.max_epochs != ctx.epochs:
            raise TrainFunctionError(
                f"LrtuneCallback: the Trainer has max_epochs={trainer.max_epochs}, the trial "
                f"trains {ctx.epochs}: pass max_epochs=ctx.epochs"
            )
        if len(trainer.optimizers) != 1:
            raise TrainFunctionError(
                f"LrtuneCallback: configure_optimizers must return one optimizer, "
                f"got {len(trainer.optimizers)}"
            )
        if trainer.lr_scheduler_configs:
            raise TrainFunctionError(
                "LrtuneCallback sets the rate itself: configure_optimizers must return the "
                "optimizer alone, without an lr scheduler"
            )
        batches = trainer.num_training_batches
        if not isinstance(batches, int):  # inf: a loader without len
            raise TrainFunctionError(
                "LrtuneCallback needs a training loader with a len (or limit_train_batches=N)"
            )
        expected = steps_per_epoch(batches, trainer.accumulate_grad_batches)
        if expected != ctx.steps_per_epoch:
            raise TrainFunctionError(
                f"LrtuneCallback: the Trainer takes {expected} optimizer steps an epoch "
                f"({batches} batches, accumulate_grad_batches={trainer.accumulate_grad_batches}),"
                f" the TrainFunction declared {ctx.steps_per_epoch}: declare "
                "steps_per_epoch=lrtune.integrations.steps_per_epoch(batches, accumulation)"
            )
        self.scheduler = ctx.lr_scheduler(trainer.optimizers[0])

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # global_step counts optimizer steps: it moves only on an accumulation's last batch.
        scheduler = self._scheduler()
        while scheduler.last_epoch < trainer.global_step:
            scheduler.step()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self._validated:
            raise TrainFunctionError(
                f"LrtuneCallback: no validation ran in epoch {epoch}; the trial needs one every "
                "epoch (a val dataloader and check_val_every_n_epoch=1)"
            )
        self._validated = False
        values = logged_metrics(trainer.callback_metrics)
        for needed in ("train_loss", "val_loss"):
            if needed not in values:
                raise TrainFunctionError(
                    f"LrtuneCallback: the LightningModule logged no {needed!r} in epoch {epoch} "
                    f"(logged: {sorted(trainer.callback_metrics)}); "
                    f'self.log("{needed}", loss, on_epoch=True)'
                )
        train_loss, val_loss = values.pop("train_loss"), values.pop("val_loss")
        if self.ctx.report(epoch, train_loss=train_loss, val_loss=val_loss, **values):
            trainer.should_stop = True

    def _scheduler(self) -> TrialLRScheduler:
        if self.scheduler is None:
            raise TrainFunctionError("LrtuneCallback: training started without on_train_start")
        return self.scheduler


def logged_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The values an epoch reports from Lightning's logged metrics: train_loss, and val_loss
    with the other val_* ones. `on_step` and `on_epoch` logging adds "_step"/"_epoch" to a name:
    the epoch's value is taken under the bare name, the step's is ignored."""
    values: dict[str, float] = {}
    for name, value in metrics.items():
        if name.endswith("_step"):
            continue
        bare = name.removesuffix("_epoch")
        if bare == "train_loss" or bare.startswith("val_"):
            values[bare] = float(value)
    return values
