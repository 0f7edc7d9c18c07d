"""A tabular regression as a `Workload`: lrtune's own loop trains it.

The data are made here from a fixed seed (a smooth function of 8 features plus noise), so the
example runs anywhere; put your own tensors in their place. The factory is called with the
job's `workload.params`, after lrtune seeded the global RNGs with the trial's seed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from lrtune.workers import TensorBatches, Workload
from torch import Tensor, nn


def root_mean_squared_error(outputs: Tensor, targets: Tensor) -> float:
    return float(torch.sqrt(torch.mean((outputs - targets) ** 2)).item())


def make(n_train: int = 2000, n_val: int = 500, hidden: int = 64, batch_size: int = 64) -> Workload:
    generator = torch.Generator().manual_seed(1234)  # the same data for every trial
    inputs = torch.randn(n_train + n_val, 8, generator=generator)
    targets = torch.sin(inputs[:, :4].sum(dim=1, keepdim=True)) + 0.5 * inputs[:, 4:5] ** 2
    targets += 0.1 * torch.randn(targets.shape, generator=generator)
    model = nn.Sequential(
        OrderedDict(
            body=nn.Sequential(
                nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
            ),
            head=nn.Linear(hidden, 1),
        )
    )
    # The seed of the batch order: drawn from the global RNG lrtune seeded for this trial. In a
    # job lrtune reorders a TensorBatches by the job's data order, whatever this seed.
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    return Workload(
        model=model,
        train_loader=TensorBatches(
            inputs[:n_train], targets[:n_train], batch_size=batch_size, shuffle=True, seed=seed
        ),
        val_loader=TensorBatches(
            inputs[n_train:], targets[n_train:], batch_size=512, shuffle=False
        ),
        loss_fn=nn.MSELoss(),
        metrics={"val_rmse": root_mean_squared_error},
    )
