"""The worker daemon: claim a queued job, run it (an LR range test as a Ray task; a search as a
Ray Tune experiment, after a range test for lr_bounds "auto" and followed by the confirmation
run), keep its lease alive, and mark it succeeded, failed (with the reason) or cancelled.

Plain code over two protocols, `JobQueue` (the store's job functions) and `ResultSink` (where
trials and epochs go), so it never imports the service; `lrtune.service.worker` wires the real
store in. A worker that dies leaves its job running with a lease that expires; the next worker
to claim it resumes the experiment from Ray Tune's state in the run storage, each unfinished
trial from its latest checkpoint; the checkpoints are removed when the job ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lrtune.schemas.jobs import (
    Job,
    JobPhaseName,
    JobSpec,
    Resources,
    default_early_stopping,
    population_problem,
)
from lrtune.schemas.recommendations import RangeTestResult
from lrtune.workers.early_stopping import probe_epochs
from lrtune.workers.job_events import job_event
from lrtune.workers.results import HalvingSink, sink_registered
from lrtune.workers.user_code import CodeSnapshot

if TYPE_CHECKING:
    from lrtune.workers.experiment import TrainingPlan

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

    def hand_back_job(self, *, job_id: int, worker_id: str) -> bool: ...


class Lease:
    """A claimed job's lease, extended by a heartbeat thread until `release()`.

    `lost` is set when the store says another worker holds the job now: this worker must stop
    and leave the job's state alone. Once this worker is stopping (`stop` set) the job is
    `handed_back`: its run ends as if the worker had died (its trials resume from their
    checkpoints), and the lease is kept until then, for no other worker to start it meanwhile.
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        job_id: int,
        worker_id: str,
        lease_seconds: float,
        stop: threading.Event | None = None,
    ) -> None:
        self.queue = queue
        self.job_id = job_id
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.stop = stop or threading.Event()
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

    @property
    def handed_back(self) -> bool:
        return self.stop.is_set()

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


class JobSink(HalvingSink, Protocol):
    """A job's `ResultSink` plus what the daemon and the searchers (closing a horizon-halving
    rung, picking what to confirm) record about the job as a whole."""

    def stored_range_test(self) -> RangeTestResult | None:
        """The job's range test if one was stored already (a resumed job does not rerun it)."""
        ...

    def save_range_test(self, result: RangeTestResult) -> None: ...

    def on_job_succeeded(self) -> None:
        """The job has succeeded: store what is final about it (its recommendation)."""
        ...

    def end_phase(self, phase: JobPhaseName) -> None:
        """`phase`, the job's last (its recommendation), ends now; never raises."""
        ...


SinkFactory = Callable[[int, Lease], JobSink]


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs: its id, the run storage (Ray Tune state and trial checkpoints: a
    folder or a pyarrow filesystem URI), the checkpoint period, lease and polling periods,
    users' code folders and how long planning a job may take."""

    storage: str | Path
    worker_id: str = ""
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    checkpoint_every_epochs: int = 0
    # Folders of users' code (`--code-path`): snapshotted for each job when it starts.
    code_paths: tuple[str, ...] = ()
    # Installed packages entrypoints may also come from (LRTUNE_ENTRYPOINT_PACKAGES).
    entrypoint_packages: tuple[str, ...] = ()
    # Longest a job's planning (importing user code, building the workload once) may take.
    planning_timeout_s: float = 300.0

    def with_defaults(self) -> WorkerOptions:
        if self.worker_id:
            return self
        return replace(self, worker_id=default_worker_id())


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
            run_job(queue, job, make_sink=make_sink, options=options, stop=stop)
            ran += 1
        if once:
            break
        if job is None:
            stop.wait(options.poll_seconds)
    return ran


def run_job(
    queue: JobQueue,
    job: Job,
    *,
    make_sink: SinkFactory,
    options: WorkerOptions,
    stop: threading.Event | None = None,
) -> None:
    """Run one claimed job to its end and record how it ended (unless the lease was lost).
    Once `stop` is set its run ends as a dying worker's would, and the job is handed back to
    the queue: the next worker claims it at once and resumes it from its checkpoints."""
    lease = Lease(
        queue,
        job_id=job.id,
        worker_id=options.worker_id,
        lease_seconds=options.lease_seconds,
        stop=stop,
    ).start()
    ran = False  # this worker ran the job (and so may clean up after it)
    try:
        if not queue.mark_job_running(job_id=job.id, worker_id=options.worker_id):
            return  # another worker took it between the claim and now
        ran = True
        job_event(job.id, "claimed by worker %s", options.worker_id)
        if queue.is_cancel_requested(job.id):
            queue.mark_job_cancelled(job_id=job.id)
            job_event(job.id, "cancelled")
            return
        sink = make_sink(job.id, lease)
        code = snapshot_code(options, job.spec)
        if job.spec.kind == "range_test":
            range_test(job, sink=sink, code=code)
            error = None
        else:
            error = _run_search(job, sink=sink, options=options, code=code)
        if lease.handed_back:
            pass  # handed back below, once the lease's heartbeat has stopped
        elif lease.lost.is_set():
            log.warning("job %s: lease lost, leaving it to the worker that holds it", job.id)
        elif queue.is_cancel_requested(job.id):
            queue.mark_job_cancelled(job_id=job.id)
            job_event(job.id, "cancelled")
        elif error is not None:
            queue.mark_job_failed(job_id=job.id, error=error)
            job_event(job.id, "failed: %s", error)
        else:
            queue.mark_job_succeeded(job_id=job.id)
            _after_success(job, sink)
    except Exception as exc:  # the job fails with the reason; the worker goes on
        if lease.handed_back:
            log.info("job %s: its run stopped for the hand-back (%s)", job.id, type(exc).__name__)
            return  # handed back in `finally`
        log.exception("job %s failed", job.id)
        if not lease.lost.is_set():
            reason = _last_line(f"{type(exc).__name__}: {exc}")
            queue.mark_job_failed(job_id=job.id, error=reason)
            job_event(job.id, "failed: %s", reason)
    finally:
        lease.release()
        if lease.handed_back:
            queue.hand_back_job(job_id=job.id, worker_id=options.worker_id)
            log.info("job %s: handed back for the next worker to resume", job.id)
        elif ran and job.spec.kind == "search" and not lease.lost.is_set():
            _remove_checkpoints(job, options)


def _remove_checkpoints(job: Job, options: WorkerOptions) -> None:
    """A job that has ended needs its trials' checkpoints no more (a job whose lease was lost
    keeps them: the worker that holds it now resumes from them)."""
    from lrtune.workers.run_storage import remove_checkpoints

    try:
        removed = remove_checkpoints(options.storage, str(job.id))
    except Exception:  # storage unreachable: the job's outcome stands, the files stay
        log.exception("job %s: removing its checkpoints failed", job.id)
        return
    log.info("job %s: removed %d trial checkpoints", job.id, removed)


def _after_success(job: Job, sink: JobSink) -> None:
    if job.spec.kind == "search":
        sink.begin_phase("recommendation")
    try:
        sink.on_job_succeeded()
    except Exception:  # the job did succeed; its recommendation is computed on read instead
        log.exception("job %s: storing its final recommendation failed", job.id)
    if job.spec.kind == "search":
        sink.end_phase("recommendation")


class PlanningError(RuntimeError):
    """The job's training cannot be planned: the user's code fails to import or build, hangs,
    or kills its process. The job fails with this message; the worker goes on."""


def snapshot_code(options: WorkerOptions, spec: JobSpec) -> CodeSnapshot | None:
    """The users' code folders as they are now: what every process of one job imports. None
    for a built-in workload, which imports none of it (no zip to make and ship to trials).
    An entrypoint from anywhere else fails the job here, before anything is imported."""
    from lrtune.workers.user_code import (
        CodePathError,
        CodeSnapshot,
        EntrypointRefused,
        EntrypointSources,
    )

    entrypoint = spec.workload.entrypoint
    if entrypoint is None:
        return None
    try:
        EntrypointSources.of(options.code_paths, options.entrypoint_packages).check(entrypoint)
        return CodeSnapshot.take(options.code_paths, packages=options.entrypoint_packages)
    except (CodePathError, EntrypointRefused) as error:
        raise PlanningError(str(error)) from None


# Said on a job that asks for cooldown-judged ASHA but trains a train function.
RAW_JUDGED_NOTE = (
    "early stopping judges the raw metric at its rungs: the job trains a train function, "
    "which lrtune cannot branch for a cooldown probe"
)


def plan_training(spec: JobSpec, *, code: CodeSnapshot | None, timeout_s: float) -> TrainingPlan:
    """The job's training, inspected by a Ray task that imports the user's code
    and builds the workload once: an entrypoint that raises, hangs past `timeout_s` or exits
    its process costs that task, not the worker. Raises PlanningError.

    A built-in workload is lrtune's own code: it is planned here, without a task's start-up.
    """
    if spec.workload.entrypoint is None:
        return _planning_task(spec, None)
    import ray
    from ray.exceptions import GetTimeoutError, RayError, RayTaskError

    # No CPU reserved: a short task, which must not queue behind running trials.
    task = ray.remote(_planning_task).options(num_cpus=0, max_retries=0)
    ref = task.remote(spec, code)
    try:
        plan: TrainingPlan = ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise PlanningError(
            f"planning took longer than {timeout_s:g} s (importing the entrypoint and building "
            "the workload once); is the entrypoint waiting on something?"
        ) from None
    except RayTaskError as error:
        cause = error.cause if error.cause is not None else error
        raise PlanningError(_last_line(f"{type(cause).__name__}: {cause}")) from None
    except RayError as error:  # the process died: os._exit, a segfault, out of memory
        raise PlanningError(
            f"the process planning the job died ({type(error).__name__}) while importing the "
            f"entrypoint or building the workload: {_last_line(str(error))}"
        ) from None
    return plan


def _planning_task(spec: JobSpec, code: CodeSnapshot | None) -> TrainingPlan:
    """Runs on a Ray worker: what the job trains (see plan_training)."""
    from lrtune.workers.experiment import inspect_training
    from lrtune.workers.user_code import describe_user_error

    try:
        return inspect_training(spec, code)
    except Exception as error:
        raise PlanningError(describe_user_error(error)) from error


def range_test(job: Job, *, sink: JobSink, code: CodeSnapshot | None = None) -> RangeTestResult:
    """The job's LR range test: the stored one when a worker already ran it, else run now: in
    this process for a built-in workload on a CPU, else as a Ray task with the job's
    resources_per_trial (user code stays out of the worker; a GPU job gets a GPU node)."""
    stored = sink.stored_range_test()
    if stored is not None:
        return stored
    sink.begin_phase("range_test")
    spec = job.spec
    result: RangeTestResult
    if spec.workload.entrypoint is None and spec.resources_per_trial.gpu == 0:
        # lrtune's own workload on a CPU: run here, sparing a Ray task's process start (seconds
        # on a small machine), with the threads the task would have had.
        with torch_threads(max(1, math.floor(spec.resources_per_trial.cpu))):
            result = _range_test_task(spec, None)
    else:
        import ray

        task = ray.remote(_range_test_task).options(
            num_cpus=spec.resources_per_trial.cpu,
            num_gpus=spec.resources_per_trial.gpu,
            max_retries=0,
        )
        result = ray.get(task.remote(spec, code))
    sink.save_range_test(result)
    bounds = result.suggestion
    job_event(job.id, "range test: lr bounds %.3g to %.3g", bounds.min_lr, bounds.max_lr)
    return result


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block (Ray gives a task as many)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _range_test_task(spec: JobSpec, code: CodeSnapshot | None) -> RangeTestResult:
    """Runs on a Ray worker: the range test on the job's workload, optimizer and groups."""
    import ray
    import torch
    from lrtune.workers.lr_range_test import run_range_test

    if code is not None:
        code.activate()
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return run_range_test(
        workload=spec.workload,
        optimizer=spec.optimizer,
        test=spec.range_test,
        param_groups=spec.param_groups,
        seed=spec.search.seed,
        device=device,
    )


def _run_search(
    job: Job, *, sink: JobSink, options: WorkerOptions, code: CodeSnapshot | None
) -> str | None:
    """Run the job: range test for lr_bounds "auto", then its Tune experiment (the search and,
    when the job asks for one, the confirmation). The job's error when no trial ran to an end,
    else None."""
    from lrtune.workers.experiment import plan_experiment, run_experiment

    key = str(job.id)
    spec = job.spec
    sink.begin_phase("planning")
    training = plan_training(spec, code=code, timeout_s=options.planning_timeout_s)
    if training.train_function and spec.lr_bounds == "auto":
        # The range test runs lrtune's own loop, which a train function replaces.
        return (
            'lr_bounds "auto" runs the LR range test in lrtune\'s own training loop, and this '
            "job's entrypoint returns a TrainFunction (its own loop): give lr_bounds "
            "{min, max} instead"
        )
    if training.train_function and probe_epochs(spec):
        sink.add_note(RAW_JUDGED_NOTE)
    if spec.early_stopping.chosen_by == "lrtune":
        sink.add_note(default_early_stopping(spec)[1])
    if spec.execution == "auto":
        spec = _resolve_execution(spec, training, sink)
    bounds = None
    if spec.lr_bounds == "auto":
        bounds = range_test(job, sink=sink, code=code).suggestion
    if sink.should_stop():
        return None
    if spec.budget.max_concurrent_trials is None:
        slots = free_trial_slots(spec.resources_per_trial)
        spec = spec.model_copy(
            update={"budget": spec.budget.model_copy(update={"max_concurrent_trials": slots})}
        )
        sink.add_note(
            f"{slots} trials at once (budget.max_concurrent_trials is unset): as many as the "
            "Ray cluster's free CPUs and GPUs held when the worker started the job"
        )
    plan = plan_experiment(
        spec,
        job_key=key,
        storage_path=options.storage,
        steps_per_epoch=training.steps_per_epoch,
        orders_data=training.orders_data,
        bounds=bounds,
        checkpoint_every_epochs=options.checkpoint_every_epochs,
        code=code,
    )
    sink.save_search_spaces(plan.search_spaces)
    job_event(job.id, "planned: %d trials, execution %s", plan.total_trials, spec.execution)
    with sink_registered(key, sink):
        sink.begin_phase("search")
        results = list(run_experiment(plan))
    errors = [result.error for result in results if result.error is not None]
    if len(results) > 0 and len(errors) == len(results):
        return f"every trial failed; the first: {_last_line(str(errors[0]))}"
    return None


def _resolve_execution(spec: JobSpec, training: TrainingPlan, sink: JobSink) -> JobSpec:
    """Execution "auto": populations when the job's trials can train as one batched model,
    else one trial at a time; the job's notes say which, and why not populations."""
    problem = population_problem(spec) or training.not_fusible
    execution = "trials" if problem else "population"
    sink.add_note(
        f'execution "auto" ran {execution}'
        + (f": {problem}" if problem else ": the trials train as batched models")
    )
    return spec.model_copy(update={"execution": execution})


def free_trial_slots(resources: Resources) -> int:
    """How many trials asking `resources` each the Ray cluster's free CPUs and GPUs hold now
    (at least one: a job on a busy cluster waits its turn for a slot)."""
    import ray

    free = ray.available_resources()
    # Ray reports fractions of a resource as floats (0.25 x 4 may read 0.9999999).
    slots = math.floor(free.get("CPU", 0.0) / resources.cpu + 1e-6)
    if resources.gpu > 0:
        slots = min(slots, math.floor(free.get("GPU", 0.0) / resources.gpu + 1e-6))
    return max(1, slots)


def _last_line(text: str) -> str:
    """A traceback's last line says what went wrong; the job's error keeps just that."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text
