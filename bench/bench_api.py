"""Latency of the job read endpoints under concurrent load, with 10,000 trials and 200,000 metric
rows stored, on SQLite and PostgreSQL (target: p99 under 25 ms at 100 requests per second).

Run from the repository root: .venv/bin/python -m bench.bench_api [--write]
PostgreSQL is measured when LRTUNE_TEST_POSTGRES_URL (an admin URL) is set; a database named
lrtune_bench_<pid> is created there and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
from lrtune.schemas.jobs import JobSpec, TrialMetric
from lrtune.service.migrate import upgrade_to_head
from lrtune.service.store import Store
from sqlalchemy.engine import make_url

from bench.local_api import running_api
from bench.results_file import machine_line, write_section

HEADING = "Job API latency (issue 3)"
POLICIES = ["fixed", "exponential", "clr", "sgdr"]


def seed(store: Store, *, jobs: int, trials_per_job: int, epochs: int) -> list[int]:
    """Succeeded jobs full of completed trials, written through the store as a worker would."""
    spec = JobSpec.model_validate(
        {
            "workload": {"name": "digits"},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": POLICIES,
            "budget": {"epochs": epochs, "trials_per_policy": trials_per_job // len(POLICIES)},
        }
    )
    rng = random.Random(0)
    job_ids = []
    for _ in range(jobs):
        job, _ = store.create_job(spec=spec)
        store.claim_next_job(worker_id="bench", lease_seconds=3600)
        for index in range(trials_per_job):
            policy = POLICIES[index % len(POLICIES)]
            lr = 10 ** rng.uniform(-3, 0)
            trial = store.create_trial(
                job_id=job.id,
                policy=policy,
                schedule={"policy": "fixed", "lr": lr},
                search_config={"lr": lr},
                seed=index,
                ray_trial_id=f"bench-{job.id}-{index}",
            )
            peak = rng.uniform(0.5, 0.98)
            results = [
                TrialMetric(
                    epoch=epoch,
                    step=epoch * 22,
                    lr=lr,
                    train_loss=2.3 / epoch,
                    val_loss=2.4 / epoch,
                    metrics={"val_accuracy": peak * epoch / epochs},
                    elapsed_s=0.4 * epoch,
                )
                for epoch in range(1, epochs + 1)
            ]
            store.record_trial_results(trial_id=trial.id, results=results)
            store.update_trial_status(trial_id=trial.id, status="completed")
        store.mark_job_succeeded(job_id=job.id)
        job_ids.append(job.id)
    return job_ids


async def load(
    base_url: str, paths: list[str], *, rate: float, seconds: float
) -> tuple[list[float], int]:
    """Open-loop load: requests start on schedule whether or not earlier ones have answered;
    latency counts from the scheduled start, so a stalled server cannot hide its queue."""
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def one(path: str, scheduled: float) -> None:
            nonlocal failures
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                answer = await client.get(path)
                answer.json()
                if answer.status_code != 200:
                    failures += 1
            except httpx.TimeoutException:
                # A server (or a machine) too busy to answer in 30 s: a failure, not a crash.
                failures += 1
            latencies.append((time.perf_counter() - scheduled) * 1000)

        # Warm the connections and the server's caches first.
        await asyncio.gather(*(client.get(p) for p in paths[:20]))
        start = time.perf_counter() + 0.1
        count = int(rate * seconds)
        await asyncio.gather(*(one(paths[i % len(paths)], start + i / rate) for i in range(count)))
    return latencies, failures


def measure(url: str, job_ids: list[int], *, rate: float, seconds: float) -> list[tuple]:
    rng = random.Random(1)
    endpoints = {
        "GET /v1/jobs/{id}": [f"/v1/jobs/{rng.choice(job_ids)}" for _ in range(500)],
        "GET /v1/jobs/{id}/trials (first page)": [
            f"/v1/jobs/{rng.choice(job_ids)}/trials" for _ in range(500)
        ],
        "GET /v1/best": ["/v1/best", "/v1/best?workload=digits", "/v1/best?policy=clr"],
    }
    rows = []
    with running_api({"LRTUNE_DATABASE_URL": url}) as base_url:
        for name, paths in endpoints.items():
            load_before = os.getloadavg()[0]
            latencies, failures = asyncio.run(load(base_url, paths, rate=rate, seconds=seconds))
            latencies.sort()
            rows.append(
                (
                    f"{name} (load {load_before:.1f})",
                    len(latencies),
                    failures,
                    statistics.median(latencies),
                    latencies[int(0.99 * (len(latencies) - 1))],
                    latencies[-1],
                )
            )
            print(rows[-1], flush=True)
    return rows


def run_database(label: str, url: str, args: argparse.Namespace) -> tuple[str, list[tuple], float]:
    upgrade_to_head(url)
    store = Store.from_url(url)
    started = time.perf_counter()
    job_ids = seed(store, jobs=args.jobs, trials_per_job=args.trials // args.jobs, epochs=20)
    seeded_s = time.perf_counter() - started
    store.dispose()
    print(f"{label}: seeded in {seeded_s:.0f} s", flush=True)
    return label, measure(url, job_ids, rate=args.rate, seconds=args.seconds), seeded_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="per endpoint")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="lrtune-bench-") as tmp:
        results.append(run_database("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args))
    admin = os.environ.get("LRTUNE_TEST_POSTGRES_URL")
    if admin:
        admin_url = make_url(admin).set(drivername="postgresql")
        name = f"lrtune_bench_{os.getpid()}"
        conninfo = admin_url.render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
            # Seeding commits 30,000 transactions; not waiting for each fsync makes that minutes
            # faster and changes nothing about reads.
            connection.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')  # type: ignore[arg-type]
        try:
            url = admin_url.set(database=name).render_as_string(hide_password=False)
            results.append(run_database("PostgreSQL", url, args))
        finally:
            with psycopg.connect(conninfo, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]

    table = [
        "| database | endpoint (1-min load average before) | requests | non-200 | p50 ms "
        "| p99 ms | max ms | p99 < 25 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, rows, _ in results:
        table += [
            f"| {label} | {n} | {count:,} | {bad} | {p50:.1f} | {p99:.1f} | {worst:.1f} "
            f"| {'yes' if p99 < 25 else 'no'} |"
            for n, count, bad, p50, p99, worst in rows
        ]
    body = "\n".join(
        [
            f"Machine: {machine_line()}.",
            f"Stored: {args.jobs} succeeded jobs, {args.trials:,} completed trials, "
            f"{args.trials * 20:,} metric rows (20 epochs each), written through the store "
            + "; ".join(f"{label} seeded in {s:.0f} s" for label, _, s in results)
            + ".",
            "One `lrtune api` (uvicorn, one process) on loopback; an open-loop httpx client in "
            f"another process sends {args.rate:.0f} requests per second for {args.seconds:.0f} s "
            "per endpoint (random job ids), latency counted from each request's scheduled start "
            "to its parsed JSON body. Target: p99 under 25 ms. The 1-min load average shows how "
            f"busy the {os.cpu_count()} cores already were: server, client and database share "
            "them, so tail latency there measures CPU contention as much as lrtune.",
            "",
            *table,
        ]
    )
    print(body)
    if args.write:
        write_section(HEADING, body)


if __name__ == "__main__":
    main()
