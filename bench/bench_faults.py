"""A worker killed three times: what the restarts cost against the uninterrupted job.

`tests/test_faults.py` checks that such a job completes exactly (every epoch once, equal to the
uninterrupted run's, no finished trial run again); how long it takes is measured here, where a
noisy machine cannot fail a test. The job: 10 trials of 10 epochs of digits' CNN at batch size
1 (about 45 s on two cores), 2 at a time, through `lrtune worker` processes joined to one local
Ray (2 CPUs), with a 2 s lease and a checkpoint every epoch. Each repeat runs it once
undisturbed, then once with a kill -9 of the worker at a random point after a stored epoch,
three times, a new worker started each time.

    .venv/bin/python -m bench.bench_faults --write
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.results_file import machine_line, write_section

HEADING = "Faults: a worker killed three times"
LEASE_SECONDS = 2.0
# The job (shared with tests/test_faults.py): 10 trials of 10 epochs of digits' CNN at batch
# size 1, whose epochs take seconds, so the job's time is mostly training and the restarts' cost
# (process start, lease expiry, Tune restore) can be compared with it. Its rates are small: at
# batch size 1 the default search spaces can diverge, and every trial must train all its epochs.
KILL_SPEC: dict[str, Any] = json.loads(Path(__file__).with_name("kill_job.json").read_text())
KILL_EPOCHS = KILL_SPEC["budget"]["epochs"]
KILL_TRIALS = KILL_SPEC["budget"]["trials_per_policy"] * len(KILL_SPEC["policies"])


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def run_once(home: Path, ray_address: str, *, kills: int, rng: random.Random) -> float:
    """Seconds from submission to the job's end, with `kills` kill -9s of its worker."""
    from lrtune.schemas.jobs import JobSpec
    from lrtune.service.migrate import upgrade_to_head
    from lrtune.service.store import Store

    home.mkdir(parents=True)
    url = f"sqlite:///{home / 'bench.db'}"
    upgrade_to_head(url)
    store = Store.from_url(url)
    env = {
        **os.environ,
        "LRTUNE_DATABASE_URL": url,
        "LRTUNE_HOME": str(home),
        "LRTUNE_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        # As in the test: a checkpoint after every epoch, so each kill lands after one.
        "LRTUNE_CHECKPOINT_EVERY_EPOCHS": "1",
        "RAY_ADDRESS": ray_address,
    }

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "lrtune.service.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def epochs_stored() -> int:
        return sum(t.epochs_done for t in store.list_trials(job_id=job.id, limit=200).items)

    def finished() -> bool:
        return store.get_job(job.id).status in ("succeeded", "failed", "cancelled")

    job, _ = store.create_job(spec=JobSpec.model_validate(KILL_SPEC))
    started = time.monotonic()
    worker = start_worker()
    try:
        for kill in range(kills):
            before = epochs_stored()

            def progressed(before: int = before) -> bool:
                return epochs_stored() > before

            _wait(progressed, 120, f"progress before kill {kill + 1}")
            time.sleep(rng.uniform(0.0, 3.0))
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            worker = start_worker()
        _wait(finished, 600, "the job")
        seconds = time.monotonic() - started
        assert store.get_job(job.id).status == "succeeded", store.get_job(job.id).error
        return seconds
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    import ray

    load = os.getloadavg()[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            calm = run_once(Path(folder) / f"calm-{repeat}", address, kills=0, rng=rng)
            killed = run_once(Path(folder) / f"killed-{repeat}", address, kills=3, rng=rng)
            rows.append((calm, killed))
            print(f"repeat {repeat}: {calm:.1f} s, three kills {killed:.1f} s", flush=True)
    ratios = [killed / calm for calm, killed in rows]
    table = "\n".join(
        f"| {i + 1} | {calm:.1f} s | {killed:.1f} s | {killed / calm:.2f}x |"
        for i, (calm, killed) in enumerate(rows)
    )
    body = f"""Machine: {machine_line()}; load average before: {load:.1f}.

{KILL_TRIALS} trials x {KILL_EPOCHS} epochs of digits' CNN at batch size 1, 2 at a time, through
`lrtune worker` processes on one local Ray (2 CPUs), lease {LEASE_SECONDS:g} s: once
undisturbed, then with the worker killed (kill -9) three times at random points (seed
{args.seed}), a new worker started at once each time. Target: at most 2.5x.

| repeat | undisturbed | three kills | ratio |
| --- | ---: | ---: | ---: |
{table}

Median ratio: **{statistics.median(ratios):.2f}x**. `tests/test_faults.py` checks the same
scenario's outcome (complete, exact, nothing rerun), not its time.

Reproduce: `.venv/bin/python -m bench.bench_faults --write`."""
    print(body)
    if args.write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
