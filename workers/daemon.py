"""The worker daemon: claim a queued job, run it as a Ray Tune experiment, keep its lease alive,
and mark it succeeded, failed (with the reason) or cancelled.

Plain code over two protocols, `JobQueue` (the store's job functions) and `ResultSink` (where
trials and epochs go), so it never imports the service; `lrtune.service.worker` wires the real
store in. A worker that dies leaves its job running with a lease that expires; the next worker
to claim it resumes the experiment from Ray Tune's state under `storage_path`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lrtune.schemas.jobs import Job
from lrtune.workers.results import ResultSink, sink_registered

log = logging.getLogger(__name__)


class JobQueue(Protocol):
    """The job half of the store, as the daemon uses it (lrtune.service.store.Store fits)."""

    def claim_next_job(self, *, worker_id: str, lease_seconds: float) -> Job | None: ...

    def heartbeat(self, *, job_id: int, worker_id: str, lease_seconds: float) -> bool: ...

    def mark_job_running(self, *, job_id: int, worker_id: str) -> bool: ...

    def mark_job_succeeded(self, *, job_id: int) -> Any: ...

    def mark_job_failed(self, *, job_id: int, error: str) -> Any: ...

    def mark_job_cancelled(self, *, job_id: int) -> Any: ...

    def is_cancel_requested(self, job_id: int) -> bool: ...


class Lease:
    """A claimed job's lease, extended by a heartbeat thread until `release()`.

    `lost` is set when the store says another worker holds the job now: this worker must stop
    and leave the job's state alone.
    """

    def __init__(
        self, queue: JobQueue, *, job_id: int, worker_id: str, lease_seconds: float
    ) -> None:
        self.queue = queue
        self.job_id = job_id
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.lost = threading.Event()
        self._released = threading.Event()
        # Three beats per lease: one late or failed beat does not lose the job.
        self._thread = threading.Thread(
            target=self._beat, name=f"lrtune-heartbeat-{job_id}", daemon=True
        )

    def start(self) -> Lease:
        self._thread.start()
        return self

    def release(self) -> None:
        self._released.set()
        self._thread.join(timeout=self.lease_seconds)

    def _beat(self) -> None:
        while not self._released.wait(self.lease_seconds / 3):
            try:
                held = self.queue.heartbeat(
                    job_id=self.job_id, worker_id=self.worker_id, lease_seconds=self.lease_seconds
                )
            except Exception:  # a database hiccup: the next beat may get through in time
                log.exception("heartbeat of job %s failed", self.job_id)
                continue
            if not held:
                log.warning("worker %s lost the lease of job %s", self.worker_id, self.job_id)
                self.lost.set()
                return


SinkFactory = Callable[[int, Lease], ResultSink]


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs: its id, where Ray Tune state lives, lease and polling periods."""

    storage_path: Path
    worker_id: str = ""
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0

    def with_defaults(self) -> WorkerOptions:
        if self.worker_id:
            return self
        return WorkerOptions(
            storage_path=self.storage_path,
            worker_id=default_worker_id(),
            lease_seconds=self.lease_seconds,
            poll_seconds=self.poll_seconds,
        )


def default_worker_id() -> str:
    """host:pid:random, unique per process even on one machine."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def ensure_ray(*, address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start a local Ray (sized to the machine unless
    `num_cpus` says otherwise); nothing when Ray is already up in this process."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def run_worker_loop(
    queue: JobQueue,
    *,
    make_sink: SinkFactory,
    options: WorkerOptions,
    once: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """Claim and run jobs until `stop` is set; with `once`, run at most one claimable job and
    return. Returns how many jobs this call ran."""
    options = options.with_defaults()
    stop = stop or threading.Event()
    ran = 0
    while not stop.is_set():
        job = queue.claim_next_job(worker_id=options.worker_id, lease_seconds=options.lease_seconds)
        if job is not None:
            run_job(queue, job, make_sink=make_sink, options=options)
            ran += 1
        if once:
            break
        if job is None:
            stop.wait(options.poll_seconds)
    return ran


def run_job(queue: JobQueue, job: Job, *, make_sink: SinkFactory, options: WorkerOptions) -> None:
    """Run one claimed job to its end and record how it ended (unless the lease was lost)."""
    lease = Lease(
        queue, job_id=job.id, worker_id=options.worker_id, lease_seconds=options.lease_seconds
    ).start()
    try:
        if not queue.mark_job_running(job_id=job.id, worker_id=options.worker_id):
            return  # another worker took it between the claim and now
        if queue.is_cancel_requested(job.id):
            queue.mark_job_cancelled(job_id=job.id)
            return
        if job.spec.kind != "search":
            queue.mark_job_failed(
                job_id=job.id, error=f"this worker does not run {job.spec.kind} jobs yet"
            )
            return
        error = _run_search(job, sink=make_sink(job.id, lease), options=options)
        if lease.lost.is_set():
            log.warning("job %s: lease lost, leaving it to the worker that holds it", job.id)
        elif queue.is_cancel_requested(job.id):
            queue.mark_job_cancelled(job_id=job.id)
        elif error is not None:
            queue.mark_job_failed(job_id=job.id, error=error)
        else:
            queue.mark_job_succeeded(job_id=job.id)
    except Exception as exc:  # the job fails with the reason; the worker goes on
        log.exception("job %s failed", job.id)
        if not lease.lost.is_set():
            queue.mark_job_failed(job_id=job.id, error=_last_line(f"{type(exc).__name__}: {exc}"))
    finally:
        lease.release()


def _run_search(job: Job, *, sink: ResultSink, options: WorkerOptions) -> str | None:
    """Run the job's experiment; the job's error when no trial ran to an end, else None."""
    from lrtune.workers.experiment import plan_experiment, run_experiment

    key = str(job.id)
    plan = plan_experiment(job.spec, job_key=key, storage_path=options.storage_path)
    with sink_registered(key, sink):
        results = run_experiment(plan)
    errors = [result.error for result in results if result.error is not None]
    if len(results) > 0 and len(errors) == len(results):
        return f"every trial failed; the first: {_last_line(str(errors[0]))}"
    return None


def _last_line(text: str) -> str:
    """A traceback's last line says what went wrong; the job's error keeps just that."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text
