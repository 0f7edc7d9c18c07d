"""First paint of the dashboard's job page for a job of 2,000 trials and 40,000 metric rows.

The job is written through the store (as the workers write it), `lrtune`'s app is served by
uvicorn in a subprocess, and Debian's chromium (through Playwright) opens the job page in a fresh
browser context each run; the time is from navigation start to the page's mark
`lrtune:job-page-drawn` (header, progress, leaderboard and both learning-curve charts drawn).

Run from the repository root: .venv/bin/python -m bench.bench_dashboard [--write]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from lrtune.schemas.jobs import JobSpec, TrialMetric
from lrtune.service.migrate import upgrade_to_head
from lrtune.service.store import Store

from bench.results_file import machine_line, write_section

POLICIES = ("fixed", "cosine", "clr", "one_cycle")
TRIALS_PER_POLICY = 500
EPOCHS = 20
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BUDGET_MS = 2000.0


def seed_big_job(store: Store) -> int:
    """A succeeded job: 4 policies x 500 trials x 20 epochs = 2,000 trials, 40,000 metric rows."""
    spec = JobSpec.model_validate(
        {
            "name": "bench: 2,000 trials",
            "workload": {"name": "mnist1d"},
            "policies": list(POLICIES),
            "budget": {"epochs": EPOCHS, "trials_per_policy": TRIALS_PER_POLICY},
        }
    )
    job, _ = store.create_job(spec=spec)
    store.claim_next_job(worker_id="bench", lease_seconds=3600)
    rng = random.Random(0)
    for p_index, policy in enumerate(POLICIES):
        for k in range(TRIALS_PER_POLICY):
            lr = 10 ** rng.uniform(-3, 0)
            trial = store.create_trial(
                job_id=job.id,
                policy=policy,
                schedule={"policy": "fixed", "lr": lr}
                if policy == "fixed"
                else _schedule(policy, lr),
                search_config={"lr": lr},
                seed=k,
                ray_trial_id=f"{policy}-{k}",
            )
            ceiling = 0.8 + 0.03 * p_index - 0.2 * abs(math.log10(lr) + 1.3) / 2
            rows = [
                TrialMetric(
                    epoch=e,
                    step=e * 32,
                    lr=lr,
                    train_loss=2.3 * math.exp(-e / 5) + 0.05,
                    val_loss=2.3 * math.exp(-e / 6) + 0.1 + rng.uniform(0, 0.05),
                    metrics={"val_accuracy": ceiling * (1 - math.exp(-e / 4))},
                    elapsed_s=0.5 * e,
                )
                for e in range(1, EPOCHS + 1)
            ]
            store.record_trial_results(trial_id=trial.id, results=rows)
            store.update_trial_status(trial_id=trial.id, status="completed")
    store.mark_job_succeeded(job_id=job.id)
    return job.id


def _schedule(policy: str, lr: float) -> dict[str, object]:
    total = EPOCHS * 32
    if policy == "cosine":
        return {"policy": "cosine", "lr": lr, "decay_steps": total}
    if policy == "clr":
        return {"policy": "clr", "base_lr": lr / 10, "max_lr": lr, "step_size": total // 8}
    return {"policy": "one_cycle", "max_lr": lr, "total_steps": total}


def serve(database_url: str, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LRTUNE_DATABASE_URL": database_url, "LRTUNE_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "lrtune.service.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the service did not start")


def measure(url: str, job_id: int, runs: int) -> tuple[list[float], list[float]]:
    """(ms to the job page's drawn mark, ms to first contentful paint) for each run."""
    from playwright.sync_api import sync_playwright

    drawn, paints = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1360, "height": 1000})
            page = context.new_page()
            page.goto(f"{url}/#/jobs/{job_id}")
            page.wait_for_function("document.body.dataset.jobPage === 'drawn'", timeout=30_000)
            drawn.append(
                page.evaluate("performance.getEntriesByName('lrtune:job-page-drawn')[0].startTime")
            )
            paints.append(
                page.evaluate(
                    "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
                    " || 0"
                )
            )
            series = page.get_by_test_id("metric-chart").get_attribute("data-series")
            assert series == str(25 * len(POLICIES)), series
            context.close()
        browser.close()
    return drawn, paints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        database_url = f"sqlite:///{Path(folder) / 'lrtune.db'}"
        upgrade_to_head(database_url)
        store = Store.from_url(database_url)
        started = time.perf_counter()
        job_id = seed_big_job(store)
        seeding_s = time.perf_counter() - started
        store.dispose()
        process, url = serve(database_url, Path(folder) / "home")
        try:
            curves_ms, size = [], 0
            for _ in range(10):
                started = time.perf_counter()
                answer = httpx.get(f"{url}/v1/jobs/{job_id}/curves", timeout=30)
                curves_ms.append((time.perf_counter() - started) * 1000)
                size = len(answer.content)
            drawn, paints = measure(url, job_id, args.runs)
        finally:
            process.terminate()
            process.wait(timeout=10)
    verdict = "under" if max(drawn) < BUDGET_MS else "OVER"
    body = f"""{machine_line()}; SQLite; Debian chromium {_chromium_version()}, headless.

A succeeded job of {len(POLICIES) * TRIALS_PER_POLICY:,} trials ({len(POLICIES)} policies x {TRIALS_PER_POLICY}) and {len(POLICIES) * TRIALS_PER_POLICY * EPOCHS:,} metric rows,
written through the store in {seeding_s:.0f} s. The job page loads the job, then one
`GET /v1/jobs/{{id}}/curves` (each policy's standing from the trials table, and the curves of the
25 best trials of each policy: 100 lines per chart), and pages the trials table 50 at a time.

| measure | median | max |
| --- | --- | --- |
| job page drawn (navigation start to header, leaderboard and both curve charts), {args.runs} cold loads | {statistics.median(drawn):.0f} ms | {max(drawn):.0f} ms |
| first contentful paint | {statistics.median(paints):.0f} ms | {max(paints):.0f} ms |
| `GET /v1/jobs/{{id}}/curves` ({size / 1024:.0f} KiB), 10 requests | {statistics.median(curves_ms):.0f} ms | {max(curves_ms):.0f} ms |

Budget: first paint of the job page under {BUDGET_MS / 1000:.0f} s: {verdict} it.

Reproduce: `.venv/bin/python -m bench.bench_dashboard --write`."""  # noqa: E501
    print(body)
    if args.write:
        write_section("Dashboard (issue 6)", body)


def _chromium_version() -> str:
    try:
        done = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return "(unknown version)"
    return done.stdout.strip().removeprefix("Chromium ").split(" ")[0]


if __name__ == "__main__":
    main()
