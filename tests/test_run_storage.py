"""The run storage's checkpoints: obsolete ones deleted only after a grace period (an experiment
state snapshot may still name them until then), every one removed when the job ends."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from lrtune.workers.run_storage import PruneCheckpoints, remove_checkpoints, storage_uri
from ray.tune import Checkpoint


def _checkpoint(root: Path, trial: str, index: int) -> Checkpoint:
    folder = root / "job-7" / trial / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    (folder / "trial.pt").write_bytes(b"state")
    return Checkpoint.from_directory(str(folder))


def test_a_superseded_checkpoint_stays_for_the_grace_period_then_goes(tmp_path: Path) -> None:
    prune = PruneCheckpoints(grace_s=0.3, sweep_every_s=0.0)
    trial = SimpleNamespace(trial_id="a")
    first, second = _checkpoint(tmp_path, "a", 0), _checkpoint(tmp_path, "a", 1)

    prune.on_checkpoint(0, [], trial, first)
    prune.on_checkpoint(1, [], trial, second)
    assert Path(first.path).exists()  # just superseded: a snapshot may still name it

    time.sleep(0.35)
    prune.on_step(2, [])
    assert not Path(first.path).exists()
    assert Path(second.path).exists()  # the latest is always kept while the trial runs

    prune.on_trial_complete(3, [], trial)
    prune.on_step(4, [])
    assert Path(second.path).exists()
    time.sleep(0.35)
    prune.on_step(5, [])
    assert not Path(second.path).exists()


def test_the_callback_pickles_to_its_settings_only(tmp_path: Path) -> None:
    prune = PruneCheckpoints(grace_s=5.0)
    prune.on_checkpoint(0, [], SimpleNamespace(trial_id="a"), _checkpoint(tmp_path, "a", 0))
    state = prune.__getstate__()
    assert state == {"grace_s": 5.0, "sweep_every_s": 5.0}


def test_remove_checkpoints_clears_both_experiments_of_the_job_only(tmp_path: Path) -> None:
    for trial in ("a", "b"):
        _checkpoint(tmp_path, trial, 0)
    confirm = tmp_path / "job-7-confirm" / "c" / "checkpoint_000000"
    confirm.mkdir(parents=True)
    other = tmp_path / "job-8" / "a" / "checkpoint_000000"
    other.mkdir(parents=True)
    (tmp_path / "job-7" / "experiment_state.json").write_text("{}")

    assert remove_checkpoints(tmp_path, "7") == 3
    assert list(tmp_path.rglob("job-7*/**/checkpoint_*")) == []
    assert (tmp_path / "job-7" / "experiment_state.json").exists()
    assert other.exists()
    assert remove_checkpoints(tmp_path / "nowhere", "7") == 0
    assert storage_uri("s3://bucket/runs") == "s3://bucket/runs"
    assert storage_uri(tmp_path) == str(tmp_path.resolve())
