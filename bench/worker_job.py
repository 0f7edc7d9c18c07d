"""One lrtune job through the real worker daemon, on a SQLite of its own: how the benchmarks
run a job (`run_worker(once=True)`, as `lrtune worker` runs it), timed from the worker's start
to the job's end."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def worker_job(
    spec: Any, *, home: Path | None = None, num_cpus: int | None = None, **settings: Any
) -> Iterator[tuple[Any, Any, float]]:
    """Run `spec` to its end; yield the store (open for the block), the finished job and the
    worker's seconds. `home` defaults to a temporary folder; `settings` are `Settings` fields
    (e.g. checkpoint_every_epochs, code_path); `num_cpus` sizes a local Ray the worker starts."""
    from lrtune.service.migrate import upgrade_to_head
    from lrtune.service.settings import Settings
    from lrtune.service.store import Store
    from lrtune.service.worker import run_worker

    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = f"sqlite:///{home / 'bench.db'}"
        upgrade_to_head(url)
        store = Store.from_url(url)
        stack.callback(store.dispose)
        job, _ = store.create_job(spec=spec)
        started = time.perf_counter()
        run_worker(
            Settings(database_url=url, home=home, **settings),
            once=True,
            store=store,
            num_cpus=num_cpus,
        )
        seconds = time.perf_counter() - started
        yield store, store.get_job(job.id), seconds
