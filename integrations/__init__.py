"""Callbacks that make a Lightning or Hugging Face training script an lrtune train function.

- `lrtune.integrations.lightning.LrtuneCallback(ctx)`, for a `lightning.Trainer`;
- `lrtune.integrations.huggingface.LrtuneTrainerCallback(ctx)`, for a `transformers.Trainer`.

Each drives the trainer's optimizer with the trial's schedule every optimizer step, reports every
epoch to the trial, and stops the trainer when the trial says stop. Neither library is a
dependency of lrtune: importing a submodule without its library raises an ImportError naming the
package to install. This module itself imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Sized

__all__ = ["steps_per_epoch"]


def steps_per_epoch(batches: int | Sized, accumulate_grad_batches: int = 1) -> int:
    """Optimizer steps in an epoch of `batches` training batches (a count, or a loader with a
    `len`) with gradients accumulated over `accumulate_grad_batches` batches: what
    `TrainFunction(..., steps_per_epoch=)` wants.

    Lightning and the Hugging Face Trainer both step on an epoch's last, shorter accumulation,
    so this is ceil(batches / accumulate_grad_batches). For the HF Trainer the batches are
    `ceil(len(train_dataset) / per_device_train_batch_size)` (floor with dataloader_drop_last).
    """
    count = batches if isinstance(batches, int) else len(batches)
    if isinstance(count, bool) or count <= 0:
        raise ValueError(f"an epoch needs at least one batch, got {count!r}")
    if (
        isinstance(accumulate_grad_batches, bool)
        or not isinstance(accumulate_grad_batches, int)
        or accumulate_grad_batches <= 0
    ):
        raise ValueError(
            f"accumulate_grad_batches must be a positive int, got {accumulate_grad_batches!r}"
        )
    return math.ceil(count / accumulate_grad_batches)
