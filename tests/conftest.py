"""Fixtures: a fresh, migrated database per test on SQLite and on PostgreSQL, apps over it, and
one local Ray per test process; the suite's tiers.

Tiers are markers. A test is `unit` unless it is marked `ray` (it takes `ray_local`, or starts a
Ray of its own), `browser`, `cluster` or `slow`; `make test-fast` runs the unit tier alone.

Every fixture that needs a database is parametrised over both: a test that takes `database_url`,
`store`, `app` or `api_client` runs once per database, except a Ray end-to-end test, which runs
on one: PostgreSQL where LRTUNE_TEST_POSTGRES_URL is set, else SQLite (the SQL paths are the
store's, tested on both; `both_databases` keeps a few Ray tests on both). The PostgreSQL half needs
LRTUNE_TEST_POSTGRES_URL (an admin URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres); it
is skipped, and the summary says so, where that variable is unset, and fails where it is set but
the server cannot be reached. Each session migrates one template database; each test gets a
copy (CREATE DATABASE ... TEMPLATE on PostgreSQL, a file copy on SQLite), dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec, TrialMetric, TrialStatus
from lrtune.service.app import create_app
from lrtune.service.migrate import upgrade_to_head
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from sqlalchemy.engine import make_url

POSTGRES_ENV = "LRTUNE_TEST_POSTGRES_URL"
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
HEAVY_TIERS = ("ray", "browser", "cluster", "slow")
_counter = itertools.count()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that takes the process's Ray as `ray` and every test of no heavier tier
    as `unit`, and keep one database for Ray tests not marked `both_databases`."""
    ray_database = "postgres" if os.environ.get(POSTGRES_ENV) else "sqlite"
    kept, dropped = [], []
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        if not any(item.get_closest_marker(tier) for tier in HEAVY_TIERS):
            item.add_marker(pytest.mark.unit)
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("database_kind") if callspec is not None else None
        one_database = item.get_closest_marker("ray") and not item.get_closest_marker(
            "both_databases"
        )
        if kind is not None and one_database and kind != ray_database:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not os.environ.get(POSTGRES_ENV):
        terminalreporter.write_line(
            f"PostgreSQL half SKIPPED: {POSTGRES_ENV} is unset, so only SQLite was tested "
            f"(set it, e.g. {POSTGRES_ENV}=postgresql://postgres@127.0.0.1:5432/postgres)",
            yellow=True,
            bold=True,
        )


class PostgresServer:
    """Creates and drops databases through an admin URL; names carry the pid, so runs in
    parallel (other checkouts, CI jobs) never touch each other's databases."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url).set(drivername="postgresql")
        self.prefix = f"lrtune_test_{os.getpid()}"

    def url(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def execute(self, sql: str) -> None:
        conninfo = self.url(self.admin_url.database or "postgres")
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def create(self, name: str, *, template: str | None = None) -> str:
        self.drop(name)
        suffix = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{suffix}')
        return self.url(name)

    def drop(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


Curves = dict[str, list[tuple[Any, ...]]]


def job_curves_by_key(store: Store, job_id: int) -> Curves:
    """Every trial's epochs (all but the wall-clock column) by trial key: what two runs of the
    same job must agree on, number for number."""
    return {
        str(trial.ray_trial_id): [
            (m.epoch, m.step, m.lr, m.train_loss, m.val_loss, m.metrics)
            for m in store.list_trial_metrics(trial_id=trial.id)
        ]
        for trial in store.list_trials(job_id=job_id, limit=1000).items
    }


def use_code_path(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> list[str]:
    """Make `folders` this process's code path, as a trial process's snapshot does: their
    modules importable, and the only place entrypoints may come from. Undone after the test;
    modules of earlier tests' snapshots are forgotten first, so a name is always this test's."""
    from lrtune.workers import user_code

    snapshot = user_code.CodeSnapshot.take(list(folders))
    assert snapshot is not None
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(user_code, "_active_sources", user_code.active_sources())
    user_code.forget_modules([str(Path(tempfile.gettempdir()) / "lrtune-code")])
    return snapshot.activate()


@pytest.fixture
def curves_by_key() -> Callable[[Store, int], Curves]:
    """`job_curves_by_key`, for tests that compare two runs of a job."""
    return job_curves_by_key


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    logs: Callable[[], str] | None = None,
    every: float = 0.2,
) -> None:
    """Poll `predicate` until it holds; past `timeout` seconds, fail saying what was awaited
    (and the tail of the logs, when given)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = f"\n{logs()}" if logs is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(every)


class LiveService:
    """uvicorn serving create_app(settings) in a thread on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveService:
        self.thread.start()

        def started() -> bool:
            assert self.thread.is_alive(), "the service did not start"
            return bool(self.server.started)

        wait_until(started, timeout=20, what="the service to start", every=0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def epoch_row(
    epoch: int,
    value: float,
    *,
    metric: str = "val_accuracy",
    step: int | None = None,
    lr: float = 0.1,
    train_loss: float | None = 1.0,
    val_loss: float | None = 1.0,
    elapsed_s: float = 0.1,
) -> TrialMetric:
    """One epoch as a trial reports it; `value` is the job's metric (val_accuracy by default)."""
    return TrialMetric(
        epoch=epoch,
        step=10 * epoch if step is None else step,
        lr=lr,
        train_loss=train_loss,
        val_loss=val_loss,
        metrics={metric: value},
        elapsed_s=elapsed_s,
    )


class JobSeeder:
    """Seeds a job with trials and epochs through the store's functions, as a worker writes
    them: the one factory for tests that need a job's history without running it."""

    epoch = staticmethod(epoch_row)

    def __init__(self, store: Store) -> None:
        self.store = store

    def job(self, body: dict[str, Any], *, worker_id: str = "w") -> int:
        """A job from `body`, claimed by `worker_id` (running)."""
        job, _ = self.store.create_job(spec=JobSpec.model_validate(body))
        claimed = self.store.claim_next_job(worker_id=worker_id, lease_seconds=600)
        assert claimed is not None and claimed.id == job.id
        return job.id

    def trial(
        self,
        job_id: int,
        *,
        epochs: Sequence[TrialMetric] = (),
        policy: str = "fixed",
        schedule: dict[str, Any] | None = None,
        search_config: dict[str, Any] | None = None,
        seed: int = 0,
        phase: str = "search",
        ray_trial_id: str | None = None,
        status: TrialStatus | None = "completed",
    ) -> int:
        """A trial with its epochs, left in `status` (None: pending, as created); as on a worker,
        it runs before its epochs are recorded."""
        trial = self.store.create_trial(
            job_id=job_id,
            policy=policy,
            schedule=schedule or {"policy": policy, "lr": 0.1},
            search_config={} if search_config is None else search_config,
            seed=seed,
            phase=phase,
            ray_trial_id=ray_trial_id,
        )
        if status is not None:
            self.store.update_trial_status(trial_id=trial.id, status="running")
        if epochs:
            self.store.record_trial_results(trial_id=trial.id, results=list(epochs))
        if status is not None and status != "running":
            self.store.update_trial_status(trial_id=trial.id, status=status)
        return trial.id


@pytest.fixture
def seed_job(store: Store) -> JobSeeder:
    """A `JobSeeder` over the test's store."""
    return JobSeeder(store)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[str]:
    """One local Ray for the test process (each xdist worker starts its own); yields its
    address."""
    import ray

    if not ray.is_initialized():
        # The machine's 2 CPUs shared among the test processes: 1 each under `make test`'s two,
        # 2 for a lone pytest (bench/RESULTS.md "Test suite" measured 1 a process 18% faster
        # than 2: fewer trial processes fighting over the cores). LRTUNE_TEST_RAY_CPUS overrides.
        processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        cpus = int(os.environ.get("LRTUNE_TEST_RAY_CPUS", max(1, 2 // processes)))
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"PostgreSQL half skipped: {POSTGRES_ENV} is unset")
    server = PostgresServer(admin_url)
    try:
        server.execute("SELECT 1")
    except psycopg.Error as error:
        pytest.fail(f"{POSTGRES_ENV} is set but PostgreSQL cannot be reached: {error}")
    return server


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"{postgres_server.prefix}_template"
    upgrade_to_head(postgres_server.create(name))
    yield name
    postgres_server.drop(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture(params=DATABASES)
def database_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def database_url(
    database_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A fresh database at the migrations' head, on SQLite and on PostgreSQL."""
    if database_kind == "sqlite":
        path = tmp_path / "lrtune.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    template: str = request.getfixturevalue("postgres_template")
    name = f"{server.prefix}_{next(_counter)}"
    yield server.create(name, template=template)
    server.drop(name)


@pytest.fixture
def empty_database_url(
    database_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    if database_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"{server.prefix}_empty_{next(_counter)}"
    yield server.create(name)
    server.drop(name)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.from_url(database_url)
    yield store
    store.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, home=tmp_path / "home")


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def api_client(app: FastAPI) -> Iterator[TestClient]:
    """An HTTP client (httpx, through FastAPI's TestClient) over an app on a fresh database."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def job_body() -> dict[str, Any]:
    """A small, valid job spec as a client sends it."""
    return {
        "name": "digits schedules",
        "workload": {"name": "digits", "params": {"model": "mlp"}},
        "metric": {"name": "val_accuracy", "mode": "max"},
        "policies": ["fixed", "clr"],
        "budget": {"epochs": 3, "trials_per_policy": 2},
    }
