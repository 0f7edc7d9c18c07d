"""A pretrained mnist1d cnn1d fine-tuned on other data: the workload of bench_claims' claim on
differential learning rates (`--claim differential`).

lrtune's built-in workloads start from random weights, so this entrypoint builds the built-in
mnist1d cnn1d on the fine-tuning data and loads the pretrained body into it; the head stays
freshly initialised (from the trial's seed), as when a pretrained network gets a new task.
"""

from __future__ import annotations

import torch
from lrtune.workers.workloads import Workload, build_workload


def make(
    pretrained: str,
    data_seed: int = 7,
    n_train: int = 500,
    n_test: int = 1000,
    batch_size: int = 64,
) -> Workload:
    # lrtune seeded the global RNGs with the trial's seed just before calling this.
    seed = torch.initial_seed()
    params = {
        "model": "cnn1d",
        "data_seed": data_seed,
        "n_train": n_train,
        "n_test": n_test,
        "batch_size": batch_size,
    }
    workload = build_workload("mnist1d", params, seed=seed)
    state = torch.load(pretrained, weights_only=True)
    body = {name: value for name, value in state.items() if not name.startswith("head.")}
    missing, unexpected = workload.model.load_state_dict(body, strict=False)
    if unexpected or any(not name.startswith("head.") for name in missing):
        raise ValueError(f"{pretrained} does not fit mnist1d's cnn1d: {missing=}, {unexpected=}")
    return workload
