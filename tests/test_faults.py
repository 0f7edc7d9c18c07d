"""Faults survived, on SQLite and PostgreSQL: kill -9 of the API or of the worker mid-job, cancel
across a worker restart, expired leases, trials whose actor dies, jobs whose every trial fails.

The API and the workers run as their own processes (`lrtune api`, `lrtune worker`), joined to the
session's local Ray (2 CPUs); a short lease (LRTUNE_JOB_LEASE_SECONDS) makes reclaiming fast.
Jobs are tiny (digits, mlp, 3 epochs, 2 policies x 2 trials), but for the kill x3 test, whose
job must train long enough (~45 s: 10 trials of 10 epochs of a CNN at batch size 1) for three
kills to land mid-way. What the restarts cost is measured by `bench/bench_faults.py`, not here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from lrtune.schemas.jobs import CANCELLED_TRIAL_ERROR, Job, JobSpec, Trial
from lrtune.service.store import Store

from tests.conftest import wait_until

LEASE_SECONDS = 2.0
EPOCHS = 3
SPEC: dict[str, Any] = {
    "name": "faults",
    "workload": {"name": "digits", "params": {"model": "mlp"}},
    "metric": {"name": "val_accuracy", "mode": "max"},
    "policies": ["fixed", "clr"],
    "budget": {"epochs": EPOCHS, "trials_per_policy": 2, "max_concurrent_trials": 2},
    "search": {"algorithm": "random", "seed": 0},
}
# For the kill x3 test: the job bench/bench_faults.py times, whose CNN epochs take seconds.
SLOW_SPEC: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "bench" / "kill_job.json").read_text()
)
SLOW_EPOCHS = SLOW_SPEC["budget"]["epochs"]
SLOW_TRIALS = SLOW_SPEC["budget"]["trials_per_policy"] * len(SLOW_SPEC["policies"])
# For the API kill test: slow enough (a few seconds per trial) that the job is still running when
# the API is killed after its first stored epoch, however quiet the machine.
API_KILL_SPEC: dict[str, Any] = {
    **SLOW_SPEC,
    "budget": {"epochs": EPOCHS, "trials_per_policy": 2, "max_concurrent_trials": 2},
}

# A worker process like `lrtune worker`, noting in a file each trial it starts (sets running),
# so a test can tell whether a trial finished by an earlier worker ran again.
_RECORDING_WORKER = textwrap.dedent(
    """
    import sys
    from lrtune.service.settings import Settings
    from lrtune.service.store import Store
    from lrtune.service.worker import run_worker

    started = open(sys.argv[1], "a", buffering=1)

    class RecordingStore(Store):
        def update_trial_status(self, **kwargs):
            if kwargs["status"] == "running":
                started.write(f"{kwargs['trial_id']}\\n")
            return super().update_trial_status(**kwargs)

    settings = Settings()
    run_worker(settings, store=RecordingStore(Store.from_settings(settings).engine))
    """
)

# A user workload whose trial process dies (os._exit) as it builds, noting each attempt; planning
# (in the worker's own process, not an actor) gets a real workload.
_DYING_WORKLOAD = textwrap.dedent(
    """
    import os

    import ray
    from lrtune.workers.workloads import build_workload

    def make(attempts: str = ""):
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            with open(attempts, "a") as log:
                log.write(f"{os.getpid()}\\n")
            os._exit(1)
        return build_workload("digits", {"model": "mlp"})
    """
)


class Processes:
    """The API and worker processes of a test, with their logs; all killed at the end."""

    def __init__(self, *, database_url: str, home: Path, ray_address: str, logs: Path) -> None:
        self.env = {
            **os.environ,
            "LRTUNE_DATABASE_URL": database_url,
            "LRTUNE_HOME": str(home),
            "LRTUNE_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
            "RAY_ADDRESS": ray_address,
        }
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        self.count += 1
        log = (self.logs / f"process-{self.count}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append(process)
        return process

    def api(self, port: int) -> subprocess.Popen[bytes]:
        process = self.spawn(["-m", "lrtune.service.cli", "api", "--port", str(port)])
        wait_until(
            lambda: _ready(port), timeout=60, what="the API to answer /readyz", logs=self.tail
        )
        return process

    def worker(self) -> subprocess.Popen[bytes]:
        return self.spawn(["-m", "lrtune.service.cli", "worker"])

    def recording_worker(self, started: Path) -> subprocess.Popen[bytes]:
        return self.spawn(["-c", _RECORDING_WORKER, str(started)])

    def tail(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.logs.glob("process-*.log"))
        )

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def processes(database_url: str, ray_local: str, tmp_path: Path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    found = Processes(
        database_url=database_url, home=tmp_path / "home", ray_address=ray_local, logs=logs
    )
    yield found
    found.kill_all()


def kill_9(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _trials(store: Store, job_id: int) -> list[Trial]:
    return sorted(store.list_trials(job_id=job_id, limit=200).items, key=lambda t: t.id)


def _epochs_stored(store: Store, job_id: int) -> int:
    return sum(t.epochs_done for t in _trials(store, job_id))


def _finished(store: Store, job_id: int) -> bool:
    return store.get_job(job_id).status in ("succeeded", "failed", "cancelled")


def _assert_complete_and_exact(
    store: Store, job: Job, *, epochs: int = EPOCHS, trials: int = 4
) -> None:
    """The job succeeded with exactly its planned trials, each with epochs 1..E once."""
    assert job.status == "succeeded", job.error
    found = _trials(store, job.id)
    assert len(found) == job.progress.planned == trials
    assert len({t.ray_trial_id for t in found}) == trials  # no trial made twice
    for trial in found:
        assert trial.status == "completed", (trial.id, trial.status, trial.error)
        stored = [m.epoch for m in store.list_trial_metrics(trial_id=trial.id)]
        assert stored == list(range(1, epochs + 1)), (trial.id, stored)


@pytest.mark.ray
def test_api_killed_mid_job_then_restarted_the_job_completes_exactly(
    processes: Processes, store: Store
) -> None:
    port = _free_port()
    api = processes.api(port)
    processes.worker()
    base = f"http://127.0.0.1:{port}"
    submitted = httpx.post(
        f"{base}/v1/jobs", json=API_KILL_SPEC, headers={"Idempotency-Key": "once"}
    )
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    wait_until(
        lambda: _epochs_stored(store, job_id) >= 1,
        timeout=90,
        what="a first epoch",
        logs=processes.tail,
    )

    kill_9(api)
    assert not _finished(store, job_id), "the job ended before the kill; nothing was tested"
    processes.api(port)
    # A client retrying its submission against the restarted API gets the same job.
    again = httpx.post(f"{base}/v1/jobs", json=API_KILL_SPEC, headers={"Idempotency-Key": "once"})
    assert again.status_code == 200 and again.json()["id"] == job_id

    def succeeded() -> bool:
        return httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed")

    wait_until(succeeded, timeout=180, what="the job to finish", logs=processes.tail)
    _assert_complete_and_exact(store, store.get_job(job_id))
    # And through the restarted API: every trial's epochs, once each.
    page = httpx.get(f"{base}/v1/jobs/{job_id}/trials", params={"limit": 200}).json()
    assert len(page["items"]) == 4
    for trial in page["items"]:
        metrics = httpx.get(f"{base}/v1/trials/{trial['id']}/metrics").json()
        assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))


@pytest.mark.ray
def test_worker_killed_three_times_the_job_completes_exactly_without_rerunning_trials(
    processes: Processes, store: Store, tmp_path: Path, curves_by_key: Any
) -> None:
    spec = JobSpec.model_validate(SLOW_SPEC)
    # A checkpoint after every epoch, so each kill lands after some running trial's checkpoint.
    processes.env["LRTUNE_CHECKPOINT_EVERY_EPOCHS"] = "1"
    # The same job uninterrupted: what the interrupted one must equal, epoch for epoch.
    calm, _ = store.create_job(spec=spec)
    worker = processes.recording_worker(tmp_path / "calm.txt")
    wait_until(
        lambda: _finished(store, calm.id), timeout=180, what="the calm job", logs=processes.tail
    )
    kill_9(worker)
    _assert_complete_and_exact(
        store, store.get_job(calm.id), epochs=SLOW_EPOCHS, trials=SLOW_TRIALS
    )

    seed = int(os.environ.get("LRTUNE_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    job, _ = store.create_job(spec=spec)
    worker = processes.recording_worker(tmp_path / "started-0.txt")
    finished_when_killed: list[set[int]] = []
    for kill in range(3):
        # A random point of the run: after this worker has stored an epoch, within 3 s more.
        stored = _epochs_stored(store, job.id)
        wait_until(
            lambda before=stored: _epochs_stored(store, job.id) > before,
            timeout=90,
            what=f"progress before kill {kill + 1}",
            logs=processes.tail,
        )
        time.sleep(rng.uniform(0.0, 3.0))
        kill_9(worker)
        assert not _finished(store, job.id), f"finished before kill {kill + 1} (seed {seed})"
        finished_when_killed.append(
            {t.id for t in _trials(store, job.id) if t.status == "completed"}
        )
        worker = processes.recording_worker(tmp_path / f"started-{kill + 1}.txt")
    wait_until(lambda: _finished(store, job.id), timeout=240, what="the job", logs=processes.tail)

    _assert_complete_and_exact(store, store.get_job(job.id), epochs=SLOW_EPOCHS, trials=SLOW_TRIALS)
    for kill, finished in enumerate(finished_when_killed):
        for later in range(kill + 1, 4):
            path = tmp_path / f"started-{later}.txt"
            rerun = (
                finished & {int(x) for x in path.read_text().split()} if path.exists() else set()
            )
            assert not rerun, f"trials completed before kill {kill + 1} ran again: {rerun}"
    # Trials cut off mid-way resumed from their checkpoints, and every epoch of every trial is
    # the uninterrupted job's, number for number.
    resumed = [t for t in _trials(store, job.id) if t.restored_from_epoch is not None]
    assert resumed, f"no trial resumed from a checkpoint (seed {seed})"
    assert all(1 <= t.restored_from_epoch < SLOW_EPOCHS for t in resumed)  # type: ignore[operator]
    assert curves_by_key(store, job.id) == curves_by_key(store, calm.id)


# The README's own-model example: a train function that checkpoints through ctx.
OWN_MODEL = Path(__file__).resolve().parents[1] / "examples" / "own-model"
OWN_LOOP_EPOCHS = 16
OWN_LOOP_SPEC: dict[str, Any] = {
    "name": "own loop",
    # Batches of 4: about half a second per epoch, so 16 epochs outlast the wait below.
    "workload": {
        "entrypoint": "own_model.classifier:make",
        "params": {"width": 8, "batch_size": 4},
    },
    "metric": {"name": "val_accuracy", "mode": "max"},
    "policies": ["fixed", "cosine"],
    "lr_bounds": {"min": 0.0003, "max": 0.01},
    "budget": {"epochs": OWN_LOOP_EPOCHS, "trials_per_policy": 1, "max_concurrent_trials": 2},
    "search": {"algorithm": "random", "seed": 0},
}


@pytest.mark.ray
def test_a_train_function_killed_mid_trial_resumes_from_its_own_checkpoint_exactly(
    processes: Processes, store: Store, curves_by_key: Any
) -> None:
    processes.env["LRTUNE_CODE_PATH"] = str(OWN_MODEL)
    processes.env["LRTUNE_CHECKPOINT_EVERY_EPOCHS"] = "1"
    spec = JobSpec.model_validate(OWN_LOOP_SPEC)
    calm, _ = store.create_job(spec=spec)
    worker = processes.worker()
    wait_until(
        lambda: _finished(store, calm.id), timeout=180, what="the calm job", logs=processes.tail
    )
    kill_9(worker)

    job, _ = store.create_job(spec=spec)
    worker = processes.worker()
    wait_until(
        lambda: any(t.epochs_done >= 3 for t in _trials(store, job.id)),
        timeout=120,
        what="a trial three epochs in",
        logs=processes.tail,
    )
    # Tune snapshots its experiment state (which names the trials' latest checkpoints) every
    # 2 s; after that the kill loses at most the epochs since a trial's last checkpoint.
    time.sleep(2.5)
    kill_9(worker)
    assert not _finished(store, job.id)
    processes.worker()
    wait_until(
        lambda: _finished(store, job.id), timeout=180, what="the resumed job", logs=processes.tail
    )

    _assert_complete_and_exact(store, store.get_job(job.id), epochs=OWN_LOOP_EPOCHS, trials=2)
    resumed = [t for t in _trials(store, job.id) if t.restored_from_epoch is not None]
    assert resumed, "no trial resumed from the train function's checkpoint"
    assert all(1 <= t.restored_from_epoch < OWN_LOOP_EPOCHS for t in resumed)  # type: ignore[operator]
    # The resumed epochs are the uninterrupted job's, number for number: the user's state and
    # the global RNGs came back from ctx.save_checkpoint.
    assert curves_by_key(store, job.id) == curves_by_key(store, calm.id)


@pytest.mark.ray
def test_cancel_is_idempotent_survives_a_worker_restart_and_reaches_cancelled(
    processes: Processes, store: Store
) -> None:
    port = _free_port()
    processes.api(port)
    base = f"http://127.0.0.1:{port}"
    # The slow CNN job: the fast MLP one can finish between its first stored epoch and the kill,
    # and a finished job answers 409 to a cancel.
    job_id = httpx.post(f"{base}/v1/jobs", json=SLOW_SPEC).json()["id"]
    worker = processes.worker()
    wait_until(
        lambda: _epochs_stored(store, job_id) >= 1,
        timeout=90,
        what="a first epoch",
        logs=processes.tail,
    )
    kill_9(worker)

    answers = [httpx.post(f"{base}/v1/jobs/{job_id}/cancel") for _ in range(2)]
    cancelled_at = datetime.now(UTC)
    assert [a.status_code for a in answers] == [202, 202]
    assert [a.json()["status"] for a in answers] == ["cancelling", "cancelling"]
    processes.worker()
    wait_until(
        lambda: store.get_job(job_id).status == "cancelled",
        timeout=60,
        what="cancelled after the restart",
        logs=processes.tail,
    )
    last = httpx.post(f"{base}/v1/jobs/{job_id}/cancel")
    assert last.status_code == 202 and last.json()["status"] == "cancelled"
    trials = _trials(store, job_id)
    assert trials and all(t.created_at <= cancelled_at for t in trials)
    assert all(t.status not in ("pending", "running") for t in trials)
    time.sleep(LEASE_SECONDS)  # the restarted worker started nothing for it since
    assert len(_trials(store, job_id)) == len(trials)
    assert store.get_job(job_id).status == "cancelled"


@pytest.mark.ray
def test_trials_whose_actor_dies_are_retried_then_failed_and_the_job_fails_with_a_summary(
    processes: Processes, store: Store, tmp_path: Path
) -> None:
    from lrtune.workers.experiment import MAX_TRIAL_FAILURES

    code = tmp_path / "code"
    code.mkdir()
    (code / "dying_workload.py").write_text(_DYING_WORKLOAD)
    attempts = tmp_path / "attempts.txt"
    spec = {
        **SPEC,
        "workload": {"entrypoint": "dying_workload:make", "params": {"attempts": str(attempts)}},
        "metric": {"name": "val_loss", "mode": "min"},
        "budget": {"epochs": 1, "trials_per_policy": 1, "max_concurrent_trials": 2},
        "execution": "trials",  # a process per trial, each dying on its own
    }
    job, _ = store.create_job(spec=JobSpec.model_validate(spec))
    # The trials import the user's module from the worker's code path, as every entrypoint must.
    processes.env["LRTUNE_CODE_PATH"] = str(code)
    processes.worker()
    wait_until(
        lambda: _finished(store, job.id), timeout=120, what="the job to end", logs=processes.tail
    )

    final = store.get_job(job.id)
    assert final.status == "failed"
    assert final.error is not None and final.error.startswith("every trial failed")
    trials = _trials(store, job.id)
    assert len(trials) == 2
    for trial in trials:
        assert trial.status == "failed" and trial.error, trial
    # Each trial's process died once per attempt: the first run plus max_failures retries.
    assert len(attempts.read_text().split()) == 2 * (MAX_TRIAL_FAILURES + 1)


def test_an_expired_lease_is_reclaimed_and_an_expired_cancellation_ends(
    store: Store,
) -> None:
    spec = JobSpec.model_validate(SPEC)
    running, _ = store.create_job(spec=spec)
    cancelling, _ = store.create_job(spec=spec)
    # Leases of a second: long enough to still hold at the next check on a loaded machine.
    assert store.claim_next_job(worker_id="dead", lease_seconds=1.0) is not None
    assert store.claim_next_job(worker_id="dead", lease_seconds=1.0) is not None
    trial = store.create_trial(
        job_id=cancelling.id,
        policy="fixed",
        schedule={"policy": "fixed"},
        search_config={},
        seed=0,
    )
    store.update_trial_status(trial_id=trial.id, status="running")
    store.cancel_job(cancelling.id)
    # While the lease holds nobody else gets the job.
    assert store.claim_next_job(worker_id="heir", lease_seconds=60) is None
    time.sleep(1.1)
    reclaimed = store.claim_next_job(worker_id="heir", lease_seconds=60)
    assert reclaimed is not None and reclaimed.id == running.id
    assert not store.heartbeat(job_id=running.id, worker_id="dead", lease_seconds=60)
    assert store.get_job(cancelling.id).status == "cancelled"
    ended = store.get_trial(trial.id)
    assert ended.status == "failed" and ended.error == CANCELLED_TRIAL_ERROR
