"""StoreSink over a real store, without Ray: epochs and probes are buffered, flushed in batches,
by a checkpoint and before a trial's final status; restores are recorded at once."""

from __future__ import annotations

import math
from typing import Any

import pytest
from lrtune.schemas.jobs import JobSpec
from lrtune.schemas.trials import EpochResult, ProbeResult
from lrtune.service import worker
from lrtune.service.store import Store
from lrtune.service.worker import StoreSink


@pytest.fixture
def sink(store: Store, job_body: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> StoreSink:
    """The sink of a running job; nothing is flushed for time's sake unless a test says so."""
    monkeypatch.setattr(worker, "_FLUSH_SECONDS", 3600.0)
    job, _ = store.create_job(spec=JobSpec.model_validate(job_body))
    store.claim_next_job(worker_id="w", lease_seconds=60)
    return StoreSink(store, job_id=job.id)


def _start(sink: StoreSink, key: str) -> int:
    trial_id = sink.on_trial_start(
        key, policy="fixed", schedule={"policy": "fixed"}, search_config={}, seed=0, node_id=None
    )
    assert trial_id is not None
    return trial_id


def _epoch(epoch: int) -> EpochResult:
    return EpochResult(
        epoch=epoch,
        step=10 * epoch,
        lr=0.1,
        train_loss=1.0 / epoch,
        val_loss=1.2 / epoch,
        metrics={"val_accuracy": 0.5 + 0.1 * epoch},
        elapsed_s=float(epoch),
    )


def _probe(epoch: int, accuracy: float = 0.9) -> ProbeResult:
    return ProbeResult(
        epoch=epoch,
        step=10 * epoch,
        cooldown_steps=10 * epoch,
        train_loss=0.5,
        val_loss=0.6,
        metrics={"val_accuracy": accuracy},
        elapsed_s=0.3,
    )


def test_a_checkpoint_flushes_every_trials_epochs_and_probes(sink: StoreSink, store: Store) -> None:
    a, b = _start(sink, "a"), _start(sink, "b")
    sink.on_epoch("a", _epoch(1), node_id=None)
    sink.on_probe("a", _probe(1), decision="continue")
    sink.on_epoch("b", _epoch(1), node_id=None)
    sink.on_probe("b", _probe(1, math.nan), decision="stop")
    sink.on_epoch("a", _epoch(2), node_id=None)
    sink.on_probe("a", _probe(2), decision=None)
    # Buffered: nothing is in SQL yet.
    assert store.list_trial_metrics(trial_id=a) == [] and store.list_trial_probes(a) == []

    sink.on_checkpoint("a", epoch=2)
    assert [m.epoch for m in store.list_trial_metrics(trial_id=a)] == [1, 2]
    assert [(p.epoch, p.decision) for p in store.list_trial_probes(a)] == [
        (1, "continue"),
        (2, None),
    ]
    # The other trial's buffer went with it.
    assert [m.epoch for m in store.list_trial_metrics(trial_id=b)] == [1]
    [probe] = store.list_trial_probes(b)
    assert probe.decision == "stop" and math.isnan(probe.metrics["val_accuracy"])
    assert (probe.step, probe.cooldown_steps, probe.elapsed_s) == (10, 10, 0.3)
    assert store.get_trial(a).epochs_done == 2


def test_a_trials_end_writes_its_probes_before_its_status(sink: StoreSink, store: Store) -> None:
    a, b = _start(sink, "a"), _start(sink, "b")
    sink.on_epoch("a", _epoch(1), node_id=None)
    sink.on_probe("a", _probe(1), decision="stop")
    sink.on_probe("b", _probe(1), decision="continue")
    sink.on_trial_end("a", status="pruned", error=None)
    assert store.get_trial(a).status == "pruned"
    assert [(p.epoch, p.decision) for p in store.list_trial_probes(a)] == [(1, "stop")]
    assert [m.epoch for m in store.list_trial_metrics(trial_id=a)] == [1]
    assert store.list_trial_probes(b) == []  # still buffered: only the ended trial was written
    sink.flush()
    assert [p.decision for p in store.list_trial_probes(b)] == ["continue"]


def test_probes_are_flushed_in_the_epochs_batches(
    sink: StoreSink, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _start(sink, "a")
    sink.on_probe("a", _probe(1), decision="continue")
    assert store.list_trial_probes(a) == []
    monkeypatch.setattr(worker, "_FLUSH_SECONDS", 0.0)
    assert not sink.should_stop()  # Tune's poll flushes what is due
    assert [p.epoch for p in store.list_trial_probes(a)] == [1]
    sink.on_probe("a", _probe(2), decision=None)  # due at once now
    assert [p.epoch for p in store.list_trial_probes(a)] == [1, 2]


def test_a_restore_is_recorded_at_once(sink: StoreSink, store: Store) -> None:
    a = _start(sink, "a")
    sink.on_trial_restored("a", epoch=3)
    assert store.get_trial(a).restored_from_epoch == 3
    # A worker that resumes the job sees the trial restored before it saw it start.
    resumed = StoreSink(store, job_id=sink.job_id)
    resumed.on_trial_restored("a", epoch=5)
    assert store.get_trial(a).restored_from_epoch == 5
    resumed.on_trial_restored("never-started", epoch=1)  # nothing to record


def test_probes_of_unknown_trials_are_ignored(sink: StoreSink, store: Store) -> None:
    sink.on_probe("never-started", _probe(1), decision="continue")
    sink.on_checkpoint("never-started", epoch=1)
    assert store.list_trials(job_id=sink.job_id).items == []
