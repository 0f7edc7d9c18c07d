"""Soak run: `lrtune api` and one `lrtune worker` under mixed traffic for `--minutes` (30), with the
worker killed (-9) every `--kill-every` minutes and restarted at once, as a supervisor would, and
the API killed and restarted once; then every job must reach a final state with exactly its
planned trials and each trial exactly its epochs. Not in CI.

From the repository root: nice -n 5 .venv/bin/python -m bench.bench_soak [--minutes 30] [--write]
A fresh SQLite under a temporary LRTUNE_HOME by default; `--database-url` runs on that database
instead (migrated to head first; only the jobs this run submitted are checked).

This process is the load generator (httpx, a few closed-loop clients, each waiting for its
answer and a short think time before the next request) and the supervisor of the two servers.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lrtune.schemas.jobs import Job, Trial
from lrtune.service.migrate import upgrade_to_head
from lrtune.service.store import CANCELLED_TRIAL_ERROR, Store

from bench.results_file import machine_line, write_section

HEADING = "Soak run (issue 15)"
FINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")
UNFINISHED_TRIAL_STATUSES = ("pending", "running")
# The tenant's cap on queued + running jobs: the submitter outpaces one worker on purpose, so
# the cap answers 429 (expected, counted apart) and bounds the queue left to drain at the end.
MAX_ACTIVE_JOBS = 6
# Of the submissions: a quarter carry a new Idempotency-Key; one in ten replays a key already
# answered (30% of those with another spec: 409; else the same job, 200); one in four is
# followed by a cancel of a recent job.
NEW_KEY_SHARE = 0.25
REPLAY_SHARE = 0.1
OTHER_SPEC_SHARE = 0.3
CANCEL_SHARE = 0.25
POLICIES = ["fixed", "cosine", "exponential", "clr", "sgdr", "one_cycle"]
PREVIEWS: list[dict[str, Any]] = [
    {"policy": "clr", "base_lr": 0.001, "max_lr": 0.1, "step_size": 250, "mode": "triangular2"},
    {"policy": "sgdr", "eta_max": 0.1, "eta_min": 0.001, "t_0": 200, "t_mult": 2},
    {"policy": "cosine", "lr": 0.1, "decay_steps": 3000, "warmup_steps": 100},
    {"policy": "one_cycle", "max_lr": 0.1, "total_steps": 4000},
]


@dataclass
class Request:
    route: str
    status: int | None  # None: no answer (connection refused, reset or timed out)
    seconds: float
    expected: bool  # a 429 or 409 where the request was bound to meet one
    at: float  # when it was sent (time.monotonic)


@dataclass
class Traffic:
    """Every request made, and the jobs this run's submissions were answered with."""

    requests: list[Request] = field(default_factory=list)
    accepted: set[int] = field(default_factory=set)
    keys: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    # Replays of a used key: same spec -> [answered with the key's job, answered otherwise];
    # another spec -> [409, answered otherwise].
    same_spec_replays: list[int] = field(default_factory=lambda: [0, 0])
    other_spec_replays: list[int] = field(default_factory=lambda: [0, 0])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def accept(self, job_id: int) -> None:
        with self.lock:
            self.accepted.add(job_id)

    def some_jobs(self) -> list[int]:
        with self.lock:
            return sorted(self.accepted)[-20:]


class Servers:
    """The API and worker processes, their logs, and the kills and restarts done to them."""

    def __init__(self, *, home: Path, database_url: str, logs: Path, num_cpus: int) -> None:
        self.env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS",)}
        self.env.update(
            LRTUNE_HOME=str(home),
            LRTUNE_DATABASE_URL=database_url,
            LRTUNE_MAX_CONCURRENT_JOBS=str(MAX_ACTIVE_JOBS),
        )
        self.logs = logs
        self.num_cpus = num_cpus
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.spawned = itertools.count(1)
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_kills = 0
        self.kills_mid_job = 0
        self.kills_with_leftovers = 0
        self.api_restarts = 0
        self.api_down: list[tuple[float, float]] = []  # (killed at, answering again at)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{next(self.spawned):02d}-{name}.log").open("wb")
        # Its own session and process group, so that what a killed worker leaves (its local
        # Ray) can be found and ended as a supervisor would, and no signal reaches this one.
        return subprocess.Popen(
            [sys.executable, "-m", "lrtune.service.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_api(self) -> None:
        self.api = self._spawn("api", ["api", "--port", str(self.port)])
        deadline = time.monotonic() + 120
        while not _ready(self.base_url):
            if self.api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {self.logs}")
            time.sleep(0.2)

    def start_worker(self) -> None:
        self.worker = self._spawn("worker", ["worker", "--num-cpus", str(self.num_cpus)])

    def kill_worker(self, *, mid_job: bool) -> None:
        """kill -9 the worker, then end what it left (its local Ray), as systemd's default
        KillMode=control-group does before a restart; then start a new one at once."""
        assert self.worker is not None
        self.worker_kills += 1
        self.kills_mid_job += mid_job
        self.kills_with_leftovers += _kill_9_with_group(self.worker)
        self.start_worker()

    def restart_api(self) -> None:
        assert self.api is not None
        killed_at = time.monotonic()
        self.api.send_signal(signal.SIGKILL)
        self.api.wait(timeout=30)
        self.start_api()
        self.api_restarts += 1
        self.api_down.append((killed_at, time.monotonic()))

    def stop(self) -> None:
        for process in (self.worker, self.api):
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _kill_9_with_group(process)


def _kill_9_with_group(process: subprocess.Popen[bytes]) -> int:
    """SIGKILL the process, then the rest of its process group (what it started, its local Ray,
    if Ray's own fate-sharing has not ended them); 1 if anything was left, else 0."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(1.0)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the group id is its pid
    except ProcessLookupError:
        return 0
    return 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---- the load generator -------------------------------------------------------------------------


def job_spec(rng: random.Random) -> dict[str, Any]:
    """A small job: digits or mnist1d, an mlp, 2-4 epochs, 1-3 policies of 1-2 trials; some
    with ASHA (cooldown-judged) and some with a confirmation run."""
    workload = rng.choice(["digits", "digits", "mnist1d"])
    spec: dict[str, Any] = {
        "name": "soak",
        "workload": {"name": workload, "params": {"model": "mlp"}},
        "metric": {"name": "val_accuracy", "mode": "max"},
        "policies": rng.sample(POLICIES, rng.randint(1, 3)),
        "budget": {
            "epochs": rng.randint(2, 4),
            "trials_per_policy": rng.randint(1, 2),
            "max_concurrent_trials": 2,
        },
        "search": {"algorithm": "random", "seed": rng.randrange(1000)},
    }
    if rng.random() < 0.3:
        spec["early_stopping"] = {"kind": "asha", "grace_epochs": 1, "reduction_factor": 2}
    if rng.random() < 0.15:
        spec["confirm"] = {"top_k": 1, "seeds": 1}
    return spec


class LoadGenerator:
    def __init__(
        self, servers: Servers, traffic: Traffic, *, seed: int, submit_every_s: float
    ) -> None:
        self.servers = servers
        self.traffic = traffic
        self.seed = seed
        self.submit_every_s = submit_every_s
        self.stopping = threading.Event()

    def call(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        route: str,
        *,
        expect: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            answer = client.request(method, self.servers.base_url + path, **kwargs)
        except httpx.TransportError:
            self.traffic.note(Request(route, None, time.monotonic() - started, False, started))
            return None
        self.traffic.note(
            Request(
                route,
                answer.status_code,
                time.monotonic() - started,
                answer.status_code in expect,
                started,
            )
        )
        return answer

    def submitter(self) -> None:
        """Submit a job every `submit_every_s` on average, some with an Idempotency-Key, some
        replaying a used key; cancel a recent job after some submissions (see the shares)."""
        rng = random.Random(self.seed)
        retry: list[tuple[str, dict[str, Any]]] = []  # keyed submissions that got no answer
        with httpx.Client(timeout=30) as client:
            while not self.stopping.wait(rng.uniform(0.5, 1.5) * self.submit_every_s):
                spec, key, other_spec = job_spec(rng), None, False
                if retry:
                    key, spec = retry.pop()
                elif self.traffic.keys and rng.random() < REPLAY_SHARE:
                    key = rng.choice(list(self.traffic.keys))
                    spec = dict(self.traffic.keys[key][0])
                    other_spec = rng.random() < OTHER_SPEC_SHARE
                    if other_spec:
                        spec["name"] = "soak, another spec under a used key"
                elif rng.random() < NEW_KEY_SHARE:
                    key = uuid.uuid4().hex
                replay = key is not None and key in self.traffic.keys
                answer = self.call(
                    client,
                    "POST",
                    "/v1/jobs",
                    "POST /v1/jobs",
                    json=spec,
                    headers={"Idempotency-Key": key} if key is not None else {},
                    # 429: the tenant's cap on active jobs, except for a replay of a used key.
                    expect=(409,) if other_spec else () if replay else (429,),
                )
                if answer is None:
                    if key is not None:
                        retry.append((key, spec))
                    continue
                if key is not None and replay:
                    self._count_replay(key, answer, other_spec=other_spec)
                if answer.status_code in (200, 201):
                    job_id = answer.json()["id"]
                    self.traffic.accept(job_id)
                    if key is not None and not replay:
                        self.traffic.keys[key] = (spec, job_id)
                if rng.random() < CANCEL_SHARE and self.traffic.accepted:
                    job_id = rng.choice(self.traffic.some_jobs())
                    path = f"/v1/jobs/{job_id}/cancel"
                    # 409: the job had already succeeded or failed.
                    self.call(client, "POST", path, "POST /v1/jobs/{id}/cancel", expect=(409,))

    def _count_replay(self, key: str, answer: httpx.Response, *, other_spec: bool) -> None:
        if other_spec:
            self.traffic.other_spec_replays[answer.status_code != 409] += 1
            return
        same_job = answer.status_code == 200 and answer.json()["id"] == self.traffic.keys[key][1]
        self.traffic.same_spec_replays[not same_job] += 1

    def reader(self, index: int) -> None:
        """Poll jobs, list jobs and trials, read a trial's metrics, preview schedules."""
        rng = random.Random(self.seed * 1000 + index)
        with httpx.Client(timeout=30) as client:
            while not self.stopping.wait(rng.uniform(0.1, 0.6)):
                jobs = self.traffic.some_jobs()
                action = rng.choices(
                    ["job", "jobs", "trials", "metrics", "preview"], weights=[4, 2, 3, 1, 2]
                )[0]
                if action == "preview" or not jobs:
                    body = {"schedule": rng.choice(PREVIEWS), "steps": 4000, "every": 20}
                    self.call(
                        client,
                        "POST",
                        "/v1/schedules/preview",
                        "POST /v1/schedules/preview",
                        json=body,
                    )
                elif action == "job":
                    job_id = rng.choice(jobs)
                    self.call(client, "GET", f"/v1/jobs/{job_id}", "GET /v1/jobs/{id}")
                elif action == "jobs":
                    query = rng.choice(["?limit=20", "?status=running", "?status=succeeded"])
                    self.call(client, "GET", f"/v1/jobs{query}", "GET /v1/jobs")
                else:
                    job_id = rng.choice(jobs)
                    answer = self.call(
                        client, "GET", f"/v1/jobs/{job_id}/trials", "GET /v1/jobs/{id}/trials"
                    )
                    if action == "metrics" and answer is not None and answer.status_code == 200:
                        items = answer.json()["items"]
                        if items:
                            trial_id = rng.choice(items)["id"]
                            path = f"/v1/trials/{trial_id}/metrics"
                            self.call(client, "GET", path, "GET /v1/trials/{id}/metrics")


# ---- the final-state check --------------------------------------------------------------------


@dataclass
class Check:
    jobs: collections.Counter[str] = field(default_factory=collections.Counter)
    trials: collections.Counter[str] = field(default_factory=collections.Counter)
    epochs: int = 0
    restored: int = 0  # trials resumed from a checkpoint after a kill
    resumed_jobs: list[int] = field(default_factory=list)  # run by more than one worker
    failed_jobs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_final_state(store: Store, job_ids: set[int]) -> Check:
    """Every job final; a succeeded one has exactly its planned trials, none made twice; each
    completed trial stored epochs 1..budget.epochs once, every other one 1..epochs_done once."""
    found = Check()
    for job_id in sorted(job_ids):
        job = store.get_job(job_id)
        found.jobs[job.status] += 1
        if job.status not in FINAL_JOB_STATUSES:
            found.problems.append(f"job {job_id} is {job.status}, not final")
            continue
        if job.status == "failed":
            found.failed_jobs.append(f"job {job_id}: {job.error}")
        workers = {p.worker_id for p in store.job_timeline(job_id).phases if p.worker_id}
        if len(workers) > 1:
            found.resumed_jobs.append(job_id)
        trials = _all_trials(store, job_id)
        if job.status == "succeeded" and len(trials) != job.progress.planned:
            found.problems.append(
                f"job {job_id} succeeded with {len(trials)} trials, {job.progress.planned} planned"
            )
        keys = [t.ray_trial_id for t in trials]
        if len(set(keys)) != len(keys):
            found.problems.append(f"job {job_id} has a trial made twice: {sorted(keys)}")
        for trial in trials:
            cancelled = trial.status == "failed" and trial.error == CANCELLED_TRIAL_ERROR
            found.trials["failed (the job cancelled)" if cancelled else trial.status] += 1
            found.restored += trial.restored_from_epoch is not None
            found.problems.extend(_trial_problems(store, job, trial))
            found.epochs += trial.epochs_done
    return found


def _trial_problems(store: Store, job: Job, trial: Trial) -> list[str]:
    where = f"job {job.id} trial {trial.id} ({trial.status})"
    if trial.status in UNFINISHED_TRIAL_STATUSES:
        return [f"{where} is unfinished in a {job.status} job"]
    stored = [m.epoch for m in store.list_trial_metrics(trial_id=trial.id)]
    expected = list(range(1, trial.epochs_done + 1))
    problems = []
    if trial.status == "completed" and trial.epochs_done != job.spec.budget.epochs:
        problems.append(f"{where} completed {trial.epochs_done} of {job.spec.budget.epochs}")
    if stored != expected:
        problems.append(f"{where} stored epochs {stored}, expected {expected}")
    return problems


def _all_trials(store: Store, job_id: int) -> list[Trial]:
    trials, cursor = [], None
    while True:
        page = store.list_trials(job_id=job_id, limit=200, cursor=cursor)
        trials += page.items
        if page.next_cursor is None:
            return trials
        cursor = page.next_cursor


def _run_job_ids(store: Store, first_id: int) -> set[int]:
    """Every job of this run in the database, answered or not (a submission in flight when
    the API was killed may have been stored without its answer reaching us)."""
    ids: set[int] = set()
    cursor = None
    while True:
        page = store.list_jobs(limit=200, cursor=cursor)
        ids |= {job.id for job in page.items if job.id >= first_id}
        if page.next_cursor is None or min(job.id for job in page.items) < first_id:
            return ids
        cursor = page.next_cursor


def wait_until_final(store: Store, job_ids: set[int], *, seconds: float) -> float:
    """Poll until every job is final or `seconds` pass; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if all(store.get_job(job_id).status in FINAL_JOB_STATUSES for job_id in job_ids):
            break
        time.sleep(5)
    return time.monotonic() - started


# ---- the run and its report -------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[str, bool]:
    home = Path(tempfile.mkdtemp(prefix="lrtune-soak-"))
    logs = home / "logs"
    logs.mkdir()
    database_url = args.database_url or f"sqlite:///{home / 'lrtune.db'}"
    upgrade_to_head(database_url)
    store = Store.from_url(database_url)
    first_id = max((job.id for job in store.list_jobs(limit=1).items), default=0) + 1
    servers = Servers(home=home, database_url=database_url, logs=logs, num_cpus=args.num_cpus)
    traffic = Traffic()
    generator = LoadGenerator(servers, traffic, seed=args.seed, submit_every_s=args.submit_every)
    print(f"soak: home {home}, database {_label(database_url)}, logs in {logs}", flush=True)

    servers.start_api()
    servers.start_worker()
    loads = [os.getloadavg()[0]]
    threads = [threading.Thread(target=generator.submitter, daemon=True)]
    threads += [
        threading.Thread(target=generator.reader, args=(i,), daemon=True)
        for i in range(args.readers)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()

    duration = args.minutes * 60
    kill_times = [
        started + k * args.kill_every * 60
        for k in range(1, int(duration // (args.kill_every * 60)) + 1)
        if k * args.kill_every * 60 < duration
    ]
    # Between two worker kills (at 13.5 of 30 min), so the two faults are told apart in the logs.
    api_restart_at = started + duration * 0.45
    next_load = started + 60
    while (now := time.monotonic()) < started + duration:
        if kill_times and now >= kill_times[0]:
            kill_times.pop(0)
            # Only one worker: a running job is the one it is killed in the middle of.
            servers.kill_worker(mid_job=bool(store.list_jobs(status="running", limit=1).items))
            print(f"{_minutes(now - started)}: worker killed -9 and restarted", flush=True)
        if api_restart_at and now >= api_restart_at:
            api_restart_at = 0
            servers.restart_api()
            print(f"{_minutes(now - started)}: API killed -9 and restarted", flush=True)
        if now >= next_load:
            loads.append(os.getloadavg()[0])
            next_load += 60
            print(
                f"{_minutes(now - started)}: {len(traffic.requests)} requests, "
                f"{len(traffic.accepted)} jobs accepted, load {loads[-1]:.1f}",
                flush=True,
            )
        time.sleep(0.5)
    generator.stopping.set()
    for thread in threads:
        thread.join(timeout=60)
    load_seconds = time.monotonic() - started

    job_ids = _run_job_ids(store, first_id)
    print(f"load over; waiting for {len(job_ids)} jobs to end", flush=True)
    drained_s = wait_until_final(store, job_ids, seconds=args.drain_minutes * 60)
    loads.append(os.getloadavg()[0])
    servers.stop()
    check = check_final_state(store, job_ids)
    unknown = traffic.accepted - job_ids
    if unknown:
        check.problems.append(f"accepted jobs missing from the database: {sorted(unknown)}")
    store.dispose()
    print(f"logs kept in {logs}", flush=True)
    body = report(
        args,
        database_url=database_url,
        traffic=traffic,
        servers=servers,
        check=check,
        job_ids=job_ids,
        load_seconds=load_seconds,
        drained_s=drained_s,
        loads=loads,
    )
    return body, not check.problems


def report(
    args: argparse.Namespace,
    *,
    database_url: str,
    traffic: Traffic,
    servers: Servers,
    check: Check,
    job_ids: set[int],
    load_seconds: float,
    drained_s: float,
    loads: list[float],
) -> str:
    answered = [r for r in traffic.requests if r.status is not None]
    # No answer is expected for a request sent while the API was down, or in flight (up to its
    # 30 s timeout) when it was killed.
    down = [(killed - 30, back) for killed, back in servers.api_down]
    expected = [
        r
        for r in traffic.requests
        if r.expected or (r.status is None and any(a <= r.at <= b for a, b in down))
    ]
    expected_ids = {id(r) for r in expected}
    unexpected = [
        r
        for r in traffic.requests
        if id(r) not in expected_ids and (r.status is None or r.status >= 400)
    ]
    routes = sorted({r.route for r in traffic.requests})
    table = [
        "| route | requests | answered | p50 ms | p99 ms | max ms | statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for route in routes:
        mine = [r for r in traffic.requests if r.route == route]
        times = sorted(r.seconds * 1000 for r in mine if r.status is not None)
        statuses = collections.Counter(
            "no answer" if r.status is None else str(r.status) for r in mine
        )
        table.append(
            f"| {route} | {len(mine):,} | {len(times):,} | {_pct(times, 0.5)} | "
            f"{_pct(times, 0.99)} | {_pct(times, 1.0)} | "
            + ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items()))
            + " |"
        )
    down_s = sum(b - a for a, b in servers.api_down)
    lines = [
        f"Machine: {machine_line()}. 1-min load average {min(loads):.1f} to {max(loads):.1f} "
        f"(mean {sum(loads) / len(loads):.1f}, sampled each minute): other sessions' tests and "
        "benchmarks loaded the machine during the run, so latencies are those of a busy "
        "2-core box, not of lrtune alone.",
        f"Setup: `lrtune api` and one `lrtune worker --num-cpus {args.num_cpus}` (local Ray) "
        f"as processes on {_label(database_url)}, the tenant capped at {MAX_ACTIVE_JOBS} "
        "active jobs (LRTUNE_MAX_CONCURRENT_JOBS), default lease (60 s). Load from another "
        f"process: {args.readers} closed-loop readers (think time 0.1-0.6 s: poll a job, list "
        "jobs, list a job's trials, read a trial's metrics, preview a schedule) and one "
        f"submitter (a job every ~{args.submit_every:.0f} s: digits or mnist1d mlp, 2-4 epochs, "
        "1-3 policies x 1-2 trials, 30% with ASHA and cooldown probes, 15% with a "
        f"confirmation run; {NEW_KEY_SHARE:.0%} with a new Idempotency-Key, {REPLAY_SHARE:.0%} "
        f"replaying a used key ({OTHER_SPEC_SHARE:.0%} of those with another spec); a cancel of "
        f"a recent job after {CANCEL_SHARE:.0%} of submissions). "
        f"Run with: `nice -n 5 .venv/bin/python -m bench.bench_soak {' '.join(sys.argv[1:])}`.",
        "",
        f"- Load for {load_seconds / 60:.1f} min; then {drained_s / 60:.1f} min until every job "
        f"had ended (bound {args.drain_minutes:g} min).",
        f"- Faults: worker killed -9 {servers.worker_kills} times, {servers.kills_mid_job} of them "
        f"with a job running (every {args.kill_every:g} min, restarted at once; after "
        f"{servers.kills_with_leftovers} of the kills the rest of the worker's process group "
        "(its local Ray) was still there a second later and was killed, as systemd's "
        "KillMode=control-group does); API killed -9 and "
        f"restarted {servers.api_restarts} time(s), {down_s:.1f} s without an API.",
        f"- Requests: {len(traffic.requests):,} sent, {len(answered):,} answered "
        f"({len(answered) / load_seconds:.1f}/s).",
        "- Expected, not counted as errors: 429 at the tenant's cap of active jobs, 409 for an "
        "Idempotency-Key replayed with another spec or a cancel of a job that had ended, no "
        f"answer while the API was down or in flight when it was killed: {_by_status(expected)}.",
        f"- Errors (any other 4xx or 5xx, or no answer outside the API restart): "
        f"{_by_status(unexpected) if unexpected else 'none'}.",
        "- Idempotency-Key replays: with the same spec, answered 200 with the key's first job "
        f"{traffic.same_spec_replays[0]} of {sum(traffic.same_spec_replays)}; with another "
        f"spec, 409 {traffic.other_spec_replays[0]} of {sum(traffic.other_spec_replays)}.",
        "",
        *table,
        "",
        f"Final state, read from the database through the store: {len(job_ids)} jobs of this "
        f"run ({len(traffic.accepted)} with an answer to the submitter): "
        + ", ".join(f"{s} {n}" for s, n in sorted(check.jobs.items()))
        + f"; {sum(check.trials.values())} trials: "
        + ", ".join(f"{s} {n}" for s, n in sorted(check.trials.items()))
        + f"; {len(check.resumed_jobs)} jobs interrupted by a kill and finished by the next "
        f"worker ({', '.join(map(str, check.resumed_jobs)) or 'none'}); {check.restored} trials "
        "resumed from a checkpoint after a kill; "
        f"{check.epochs:,} epochs stored.",
        "Checked: every job final; each succeeded job has exactly its planned trials, no Tune "
        "trial made twice; each completed trial stored epochs 1..budget.epochs once, each pruned, "
        "diverged, failed or cancelled one 1..epochs_done once; no trial left pending or running. "
        + (
            "**All held.**"
            if not check.problems
            else f"**{len(check.problems)} problem(s):** " + "; ".join(check.problems[:20])
        ),
    ]
    if check.failed_jobs:
        lines.append("Failed jobs: " + "; ".join(check.failed_jobs[:10]))
    return "\n".join(lines)


def _pct(sorted_ms: list[float], q: float) -> str:
    if not sorted_ms:
        return "-"
    return f"{sorted_ms[min(len(sorted_ms) - 1, int(q * (len(sorted_ms) - 1)))]:.0f}"


def _by_status(requests: list[Request]) -> str:
    counts = collections.Counter(
        (r.route, "no answer" if r.status is None else str(r.status)) for r in requests
    )
    return ", ".join(f"{n} x {s} on {route}" for (route, s), n in sorted(counts.items())) or "none"


def _label(database_url: str) -> str:
    return "PostgreSQL" if database_url.startswith("postgresql") else "a fresh SQLite"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:5.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--kill-every", type=float, default=5.0, help="minutes between kill -9s")
    parser.add_argument("--drain-minutes", type=float, default=20.0, help="bound on the wait")
    parser.add_argument("--submit-every", type=float, default=15.0, help="seconds, on average")
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2, help="the worker's local Ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", help="default: a fresh SQLite in a temporary folder")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    body, held = run(args)
    print(body)
    if args.write:
        write_section(HEADING, body)
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
