"""`lrtune worker`: the worker daemon with the real store behind it.

The workers code never imports the service; this module is where the two meet. `StoreSink`
writes a job's trials, epochs and cooldown probes through the store (from the Ray Tune driver,
never from trial actors), and `run_worker` claims and runs jobs; `lrtune worker [--once]
[--worker-id ID] [--num-cpus N] [--metrics-port N]` runs one worker process, with its own
Prometheus series (`lrtune.service.worker_metrics`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from typing import Any

from lrtune.schemas.jobs import (
    FINISHED_TRIAL_STATUSES,
    JobPhaseName,
    RungDecision,
    Trial,
    TrialMetric,
    TrialProbe,
)
from lrtune.schemas.recommendations import RangeTestResult, mean_and_spread
from lrtune.schemas.trials import EpochResult, ProbeResult
from lrtune.service.errors import ConflictError, LrtuneError, NotFoundError
from lrtune.service.recommendations import publish_recommendation
from lrtune.service.settings import Settings
from lrtune.service.store import Store, rung_value
from lrtune.service.worker_metrics import MeteredQueue, WorkerMetrics
from lrtune.workers.daemon import Lease, WorkerOptions, ensure_ray, run_worker_loop
from lrtune.workers.job_events import job_event
from lrtune.workers.recommendation import TrialSummary, trial_summaries
from lrtune.workers.results import FinishedStatus

log = logging.getLogger(__name__)

_TRIALS_PAGE = 500
_FLUSH_SECONDS = 0.5


class StoreSink:
    """A job's `JobSink` over the store; trial keys are stored as the trials' ray_trial_id."""

    def __init__(
        self,
        store: Store,
        *,
        job_id: int,
        lease: Lease | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.lease = lease
        self.metrics = metrics or WorkerMetrics()
        self._trial_ids: dict[str, int] = {}
        self._node_recorded: set[str] = set()
        # Epochs and probes waiting to be written, per trial: one transaction per batch, not per
        # epoch (a 2-second trial of a small model reports hundreds of epochs).
        self._pending: dict[int, list[TrialMetric]] = {}
        self._pending_probes: dict[int, list[TrialProbe]] = {}
        self._last_flush = time.monotonic()

    @property
    def lease_lost(self) -> bool:
        return self.lease is not None and self.lease.lost.is_set()

    @property
    def handed_back(self) -> bool:
        """The worker is stopping: the job's run ends, for the next worker to resume it."""
        return self.lease is not None and self.lease.handed_back

    def on_trial_start(
        self,
        trial_key: str,
        *,
        policy: str,
        schedule: dict[str, Any],
        search_config: dict[str, Any],
        seed: int,
        node_id: str | None,
        phase: str = "search",
    ) -> int | None:
        try:
            trial = self.store.create_trial(
                job_id=self.job_id,
                policy=policy,
                schedule=schedule,
                search_config=search_config,
                seed=seed,
                ray_trial_id=trial_key,
                phase=phase,
            )
        except ConflictError:
            return None  # cancelled or finished: the store takes no new trial
        if trial.status in FINISHED_TRIAL_STATUSES:
            return None
        self.store.update_trial_status(trial_id=trial.id, status="running", node_id=node_id)
        self._trial_ids[trial_key] = trial.id
        self.metrics.running_trials.set(len(self._trial_ids))
        # A trial Tune restarts (its node was lost) may run on another node: record it again.
        self._node_recorded.discard(trial_key)
        return trial.id

    def on_epoch(self, trial_key: str, result: EpochResult, *, node_id: str | None) -> None:
        trial_id = self._trial_ids.get(trial_key)
        if trial_id is None:
            return
        if node_id is not None and trial_key not in self._node_recorded:
            self.store.update_trial_status(trial_id=trial_id, status="running", node_id=node_id)
            self._node_recorded.add(trial_key)
        # The epoch as the trial measured it becomes the stored record, field for field; only
        # the clock is made one the store accepts.
        stored = TrialMetric.model_validate(
            {**result.model_dump(), "elapsed_s": _seconds(result.elapsed_s)}
        )
        self._pending.setdefault(trial_id, []).append(stored)
        self.metrics.epochs.inc()
        self._flush_when_due()

    def on_probe(self, trial_key: str, probe: ProbeResult, *, decision: str | None) -> None:
        trial_id = self._trial_ids.get(trial_key)
        if trial_id is None:
            return
        # Validated here: a decision other than "continue", "stop" or None is a bug upstream.
        stored = TrialProbe.model_validate(
            {**probe.model_dump(), "elapsed_s": _seconds(probe.elapsed_s), "decision": decision}
        )
        self._pending_probes.setdefault(trial_id, []).append(stored)
        self._flush_when_due()

    def on_trial_restored(self, trial_key: str, *, epoch: int) -> None:
        trial_id = self._trial_ids.get(trial_key)
        if trial_id is None:
            trial_id = self._find_trial(trial_key)
        if trial_id is not None:
            self.store.set_restored_from_epoch(trial_id=trial_id, epoch=epoch)

    def on_checkpoint(self, trial_key: str, *, epoch: int) -> None:
        # Tune's experiment state is about to point at this checkpoint, and a trial resumed
        # from it does not report its epochs again: they must be in SQL first. Every trial's
        # buffer goes, not only this one's (they would within half a second anyway).
        self.flush()

    def flush(self) -> None:
        """Write every buffered epoch and probe. Results lost with a dying worker are not lost
        data: the resumed job reruns unfinished trials from their last checkpoint (epoch 1
        without one), and everything up to a checkpoint was written when it was taken."""
        pending, self._pending = self._pending, {}
        probes, self._pending_probes = self._pending_probes, {}
        self._last_flush = time.monotonic()
        for trial_id, results in pending.items():
            self.store.record_trial_results(trial_id=trial_id, results=results)
        for trial_id, trial_probes in probes.items():
            self.store.record_trial_probes(trial_id=trial_id, probes=trial_probes)

    def on_trial_end(self, trial_key: str, *, status: FinishedStatus, error: str | None) -> None:
        trial_id = self._trial_ids.pop(trial_key, None)
        self.metrics.running_trials.set(len(self._trial_ids))
        if trial_id is None:
            trial_id = self._find_trial(trial_key)
        if trial_id is not None:
            # Its epochs and probes reach SQL before its final status does.
            results = self._pending.pop(trial_id, [])
            if results:
                self.store.record_trial_results(trial_id=trial_id, results=results)
            probes = self._pending_probes.pop(trial_id, [])
            if probes:
                self.store.record_trial_probes(trial_id=trial_id, probes=probes)
            self.store.update_trial_status(trial_id=trial_id, status=status, error=error)

    def should_stop(self) -> bool:
        # Tune polls this about every half second, so buffered results never wait much longer
        # than that to reach SQL, even when no new result arrives to trigger a flush.
        if self._pending or self._pending_probes:
            self._flush_when_due()
        return self.lease_lost or self.store.is_cancel_requested(self.job_id)

    def finished_trial_keys(self) -> set[str]:
        return {
            trial.ray_trial_id
            for trial in self._job_trials()
            if trial.ray_trial_id is not None and trial.status in FINISHED_TRIAL_STATUSES
        }

    def stored_range_test(self) -> RangeTestResult | None:
        try:
            return self.store.get_range_test(self.job_id)
        except NotFoundError:
            return None

    def save_range_test(self, result: RangeTestResult) -> None:
        self.store.save_range_test(job_id=self.job_id, result=result)

    def save_search_spaces(self, spaces: dict[str, dict[str, Any]]) -> None:
        self.store.set_search_spaces(job_id=self.job_id, spaces=spaces)

    def set_planned_trials(self, planned: int) -> None:
        self.store.set_planned_trials(job_id=self.job_id, planned=planned)

    def add_note(self, note: str) -> None:
        self.store.add_job_note(job_id=self.job_id, note=note)

    def search_summaries(self) -> list[TrialSummary]:
        inputs = self.store.recommendation_inputs(self.job_id)
        searched = [trial for trial in inputs.trials if trial.phase == "search"]
        return trial_summaries(replace(inputs, trials=searched))

    def rung_values(self, trial_keys: Collection[str]) -> dict[str, float | None]:
        wanted = set(trial_keys)
        return {
            str(trial.ray_trial_id): rung_value(trial)
            for trial in self._job_trials()
            if trial.ray_trial_id in wanted
        }

    def record_rung_decisions(self, decisions: Mapping[str, RungDecision]) -> None:
        self.store.record_rung_decisions(job_id=self.job_id, decisions=decisions)

    def on_job_succeeded(self) -> None:
        found = publish_recommendation(self.store, job_id=self.job_id)
        if found is not None and found.winner is not None:
            winner = found.winner
            job_event(
                self.job_id,
                "recommends %s: %s %s over %d seed(s)",
                winner.policy,
                found.metric,
                mean_and_spread(winner.metric_mean, winner.metric_std),
                winner.n_seeds,
            )

    def begin_phase(self, phase: JobPhaseName) -> None:
        if self.lease is None or self.lease_lost:
            return  # no lease, no job to record phases of
        try:
            recorded = self.store.begin_job_phase(
                job_id=self.job_id, phase=phase, worker_id=self.lease.worker_id
            )
        except LrtuneError:  # a database hiccup costs a line of the timeline, not the job
            log.exception("job %s: recording its %s phase failed", self.job_id, phase)
            return
        if not recorded:
            log.warning(
                "job %s: not recording its %s phase: the job is not this worker's",
                self.job_id,
                phase,
            )
            return
        self._log_phase_change(phase)

    def _log_phase_change(self, phase: JobPhaseName) -> None:
        """The phase that just ended, with its time (and the search's trials), then the one
        that begins."""
        try:
            phases = self.store.job_timeline(self.job_id).phases
            ended = phases[-2] if len(phases) >= 2 else None
            if ended is not None and ended.phase != "queued":
                counts = ""
                if ended.phase == "search":
                    progress = self.store.get_job(self.job_id).progress
                    counts = (
                        f": {progress.completed} completed, {progress.pruned} pruned, "
                        f"{progress.diverged} diverged, {progress.failed} failed"
                    )
                job_event(
                    self.job_id, "%s finished in %.1f s%s", ended.phase, ended.seconds, counts
                )
        except LrtuneError:  # the log line is not worth failing the job for
            log.exception("job %s: reading its timeline failed", self.job_id)
        job_event(self.job_id, "%s started", phase)

    def end_phase(self, phase: JobPhaseName) -> None:
        if self.lease is None or self.lease_lost:
            return
        try:
            self.store.end_job_phase(
                job_id=self.job_id, phase=phase, worker_id=self.lease.worker_id
            )
        except LrtuneError:
            log.exception("job %s: ending its %s phase failed", self.job_id, phase)

    def _flush_when_due(self) -> None:
        if time.monotonic() - self._last_flush >= _FLUSH_SECONDS:
            self.flush()

    def _find_trial(self, trial_key: str) -> int | None:
        # An error can arrive for a trial this process never saw start (a failure on restore).
        return next((t.id for t in self._job_trials() if t.ray_trial_id == trial_key), None)

    def _job_trials(self) -> Iterator[Trial]:
        """Every trial of the job, page by page."""
        cursor: str | None = None
        while True:
            page = self.store.list_trials(job_id=self.job_id, limit=_TRIALS_PAGE, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


def _seconds(elapsed_s: float) -> float:
    """A duration the store accepts: a non-finite or negative clock reading counts as 0."""
    return elapsed_s if math.isfinite(elapsed_s) and elapsed_s >= 0.0 else 0.0


def run_worker(
    settings: Settings,
    *,
    worker_id: str | None = None,
    once: bool = False,
    num_cpus: int | None = None,
    store: Store | None = None,
    stop: threading.Event | None = None,
    metrics_port: int | None = None,
) -> None:
    """Claim and run jobs from the database `settings` names, on the Ray cluster at
    RAY_ADDRESS (or a local Ray sized to the machine, or `num_cpus`); with `once`, run at most
    one claimable job and return; once `stop` is set, hand the running job back and return.
    Ray Tune state and trial checkpoints go to LRTUNE_STORAGE (default LRTUNE_HOME/ray).
    With `metrics_port`, this worker's Prometheus series are served on that port meanwhile."""
    own_store = store is None
    store = store if store is not None else Store.from_settings(settings)
    ensure_ray(address=settings.ray_address, num_cpus=num_cpus)
    options = WorkerOptions(
        storage=settings.resolved_storage,
        checkpoint_every_epochs=settings.checkpoint_every_epochs,
        worker_id=worker_id or "",
        lease_seconds=settings.job_lease_seconds,
        code_paths=settings.code_paths,
        entrypoint_packages=settings.allowed_entrypoint_packages,
        planning_timeout_s=settings.planning_timeout_s,
    )

    metrics = WorkerMetrics()

    def make_sink(job_id: int, lease: Lease) -> StoreSink:
        return StoreSink(store, job_id=job_id, lease=lease, metrics=metrics)

    server = None
    try:
        if metrics_port is not None:
            server = metrics.serve(metrics_port)
            log.info("worker metrics on port %d", metrics_port)
        queue = MeteredQueue(store, metrics)
        run_worker_loop(queue, make_sink=make_sink, options=options, once=once, stop=stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if own_store:
            store.dispose()
