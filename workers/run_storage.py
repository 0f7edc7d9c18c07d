"""The run storage (LRTUNE_STORAGE): where a job's Tune experiments live, which trial
checkpoints a running job keeps, and removing them all when it ends.

Tune's own `CheckpointConfig(num_to_keep)` deletes a superseded checkpoint at once, while the
experiment state in the storage (saved every TUNE_GLOBAL_CHECKPOINT_S, uploaded in the
background) may still name it for a moment. A worker killed in that moment leaves a state
whose restore fails the trial ("Could not recover from checkpoint as it does not exist on
storage anymore"; tests/test_faults.py ran into it). So Tune keeps every checkpoint, and
`PruneCheckpoints` deletes one only when it has been obsolete (superseded by a newer one of its
trial, or its trial finished) for `grace_s`, far longer than the state takes to catch up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback, Checkpoint

log = logging.getLogger(__name__)

# Far above the 2 s between experiment-state snapshots (TUNE_GLOBAL_CHECKPOINT_S) and their
# upload: a checkpoint obsolete this long is named by no state a restore could read.
OBSOLETE_GRACE_S = 60.0


@dataclass
class _Kept:
    checkpoint: Checkpoint
    obsolete_since: float | None = None


class PruneCheckpoints(Callback):
    """Tune callback: keep each trial's latest checkpoint; delete the others `grace_s` after
    they became obsolete. What is left when the job ends, `remove_checkpoints` removes."""

    def __init__(self, *, grace_s: float = OBSOLETE_GRACE_S, sweep_every_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.sweep_every_s = sweep_every_s
        self._kept: dict[str, list[_Kept]] = {}
        self._swept_at = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the experiment folder: keep only the configuration.
        return {"grace_s": self.grace_s, "sweep_every_s": self.sweep_every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def on_checkpoint(
        self, iteration: int, trials: list[Any], trial: Any, checkpoint: Checkpoint, **info: Any
    ) -> None:
        now = time.monotonic()
        kept = self._kept.setdefault(trial.trial_id, [])
        for entry in kept:
            if entry.obsolete_since is None:
                entry.obsolete_since = now
        kept.append(_Kept(checkpoint))
        self._sweep(now)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        now = time.monotonic()
        for entry in self._kept.get(trial.trial_id, []):
            if entry.obsolete_since is None:
                entry.obsolete_since = now

    def on_step(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self._swept_at >= self.sweep_every_s:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for trial_id, kept in list(self._kept.items()):
            due = [
                entry
                for entry in kept
                if entry.obsolete_since is not None and now - entry.obsolete_since >= self.grace_s
            ]
            for entry in due:
                _delete(entry.checkpoint)
            self._kept[trial_id] = [entry for entry in kept if entry not in due]
            if not self._kept[trial_id]:
                del self._kept[trial_id]


def _delete(checkpoint: Checkpoint) -> None:
    filesystem = checkpoint.filesystem
    if filesystem is None:
        return
    try:
        filesystem.delete_dir(checkpoint.path)
    except FileNotFoundError:
        pass
    except Exception:  # storage unreachable now: the job's end removes it
        log.warning("could not delete checkpoint %s", checkpoint.path, exc_info=True)


def storage_uri(storage: str | Path) -> str:
    """An absolute local path for a folder (Tune and pyarrow both want one), a URI as given."""
    text = str(storage)
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def experiment_name(job_key: str) -> str:
    """The job's one Tune experiment (its search, then its confirmation) in the storage."""
    return f"job-{job_key}"


def remove_checkpoints(storage: str | Path, job_key: str) -> int:
    """Delete the trial checkpoints of a job that has ended (Tune's experiment state stays:
    it is small and tells what ran). Returns how many were removed."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage_uri(storage))
    removed = 0
    # "job-<key>-confirm": the confirmation's own experiment, in lrtune versions that ran it
    # as a second Tune run (a job such a worker began may end under this one).
    for name in (experiment_name(job_key), f"{experiment_name(job_key)}-confirm"):
        selector = pyarrow.fs.FileSelector(
            f"{root.rstrip('/')}/{name}", recursive=True, allow_not_found=True
        )
        for info in filesystem.get_file_info(selector):
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(
                "checkpoint_"
            ):
                filesystem.delete_dir(info.path)
                removed += 1
    return removed
