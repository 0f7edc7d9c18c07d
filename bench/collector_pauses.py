"""Where the tail latency of GET /v1/jobs/{id}/trials came from: the garbage collector.

In process, against a seeded database, a page of trials is read as the route reads it (plain
rows) and as it was read before (ORM objects), and so is one job; each path counts the
collector's passes by generation and their pauses. Then a full collection of the API's start-up
heap is timed before and after `gc.freeze()` (what `lrtune api` does before serving).

Run from the repository root: .venv/bin/python -m bench.collector_pauses [--url URL]
Without --url it seeds 10 jobs of 100 trials (20 epochs each) into a temporary SQLite, as
bench_api seeds; the figures go into bench_api's section of RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrtune.schemas.jobs import TrialPage
from lrtune.service.app import create_app
from lrtune.service.conversions import trial_from_row
from lrtune.service.migrate import upgrade_to_head
from lrtune.service.models import TrialRow
from lrtune.service.responses import json_response
from lrtune.service.store import Store
from sqlalchemy import select, text

from bench.bench_api import seed


def passes(work: Callable[[], Any], requests: int) -> tuple[float, dict[int, int], float]:
    """CPU ms per call, collector passes by generation, and the longest pause (ms)."""
    counts = {0: 0, 1: 0, 2: 0}
    longest = 0.0
    started = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal started, longest
        if phase == "start":
            started = time.perf_counter()
        else:
            counts[info["generation"]] += 1
            longest = max(longest, (time.perf_counter() - started) * 1000)

    for _ in range(20):
        work()
    gc.callbacks.append(on_gc)
    try:
        cpu = time.process_time()
        for _ in range(requests):
            work()
        cpu_ms = (time.process_time() - cpu) / requests * 1000
    finally:
        gc.callbacks.remove(on_gc)
    return cpu_ms, counts, longest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", help="a database seeded by bench_api.seed")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    url = args.url
    if url is None:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='lrtune-gc-')) / 'bench.db'}"
        upgrade_to_head(url)
        seed(Store.from_url(url), jobs=10, trials_per_job=100, epochs=20)
    create_app()  # import what the API imports, as a served process holds it
    store = Store.from_url(url)
    with store.engine.connect() as connection:
        job_ids = [row[0] for row in connection.execute(text("SELECT id FROM jobs"))]
    rng = random.Random(0)

    def trials_page() -> None:
        json_response(store.list_trials(job_id=rng.choice(job_ids), tenant_id=1))

    def trials_page_as_orm_objects() -> None:
        def work(session: Any) -> TrialPage:
            query = (
                select(TrialRow)
                .where(TrialRow.job_id == rng.choice(job_ids))
                .order_by(TrialRow.id.desc())
                .limit(51)
            )
            rows = list(session.scalars(query))
            return TrialPage(items=[trial_from_row(r) for r in rows[:50]], next_cursor=None)

        json_response(store._run(work, write=False))

    def one_job() -> None:
        json_response(store.get_job(rng.choice(job_ids), tenant_id=1))

    print(f"{args.requests} calls each on {store.engine.dialect.name}")
    print("| read | CPU ms a call | gen0 | gen1 | gen2 | longest pause ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, work in [
        ("a page of trials, plain rows (now)", trials_page),
        ("a page of trials, ORM objects (before)", trials_page_as_orm_objects),
        ("one job", one_job),
    ]:
        cpu_ms, counts, longest = passes(work, args.requests)
        generations = " | ".join(str(counts[g]) for g in (0, 1, 2))
        print(f"| {name} | {cpu_ms:.2f} | {generations} | {longest:.1f} |")

    def full_collection_ms() -> float:
        started = time.perf_counter()
        gc.collect()
        return (time.perf_counter() - started) * 1000

    before = min(full_collection_ms() for _ in range(3))
    gc.freeze()
    after = min(full_collection_ms() for _ in range(3))
    print(
        f"A full collection of the start-up heap ({gc.get_freeze_count():,} objects): "
        f"{before:.0f} ms; after gc.freeze(): {after:.1f} ms"
    )


if __name__ == "__main__":
    main()
