"""lrtune workers: schedule math, the torch adapter, workloads and the Ray Tune runner.

What user code imports is here: `Workload` and `TensorBatches` (a model and its data, trained
by lrtune's loop), `TrainFunction` and `TrialContext` (a training loop of the user's own).
They load on first use, so importing a worker module does not pull torch in where it is not
needed (the API lists workloads without torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Workload": "lrtune.workers.workloads",
    "TensorBatches": "lrtune.workers.workloads",
    "WorkloadError": "lrtune.workers.workloads",
    "TrainFunction": "lrtune.workers.train_function",
    "TrialContext": "lrtune.workers.train_function",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lrtune.workers' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
