"""Server-side commands: `lrtune db upgrade/current`, `lrtune api` and the schema guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from lrtune.client.api import LrtuneClient
from lrtune.service.cli import app
from lrtune.service.migrate import current_revision, downgrade, head_revision, upgrade_to_head
from typer.testing import CliRunner

from tests.conftest import PostgresServer, wait_until

runner = CliRunner()


def test_commands_refuse_a_database_whose_schema_is_behind(
    empty_database_url: str, tmp_path: Path
) -> None:
    env = {"LRTUNE_DATABASE_URL": empty_database_url, "LRTUNE_HOME": str(tmp_path)}
    worker = runner.invoke(app, ["worker", "--once"], env=env)
    assert worker.exit_code == 2
    assert "lrtune db upgrade" in worker.output

    assert "current: empty" in runner.invoke(app, ["db", "current"], env=env).stdout
    upgraded = runner.invoke(app, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    current = runner.invoke(app, ["db", "current"], env=env).stdout
    head = current.split("head: ")[1].strip()
    assert f"current: {head}" in current


def test_db_upgrade_reports_an_unreachable_database(tmp_path: Path) -> None:
    env = {"LRTUNE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = runner.invoke(app, ["db", "upgrade"], env=env)
    assert result.exit_code == 2
    assert "cannot reach the database" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(
    command: str, *, port: int, env: dict[str, str], log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`lrtune <command>` on `port`, once it answers /readyz with 200; its output to `log`
    (a long-running server's), else to a pipe read when it fails to start."""
    server = subprocess.Popen(
        [sys.executable, "-m", "lrtune.service.cli", command, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE if log is None else log.open("ab"),
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except httpx.TransportError:
            if server.poll() is not None:  # it exited: its output says why
                output = log.read_text() if log else server.stdout.read() if server.stdout else ""
                raise AssertionError(f"`lrtune {command}` exited:\n{output}") from None
            return False
        assert ready.status_code == 200, ready.text
        return True

    wait_until(answers, timeout=60, what=f"`lrtune {command}` to answer /readyz", every=0.3)
    return server


def test_api_migrates_the_embedded_database_and_serves(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "LRTUNE_HOME": str(tmp_path)}
    env.pop("LRTUNE_DATABASE_URL", None)
    server = _start_server("api", port=port, env=env)
    try:
        assert (tmp_path / "lrtune.db").exists()
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200
        assert "lrtune" in page.text
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.parametrize("access_log", [False, True], ids=["default", "access-log"])
def test_the_api_logs_no_successful_get_unless_asked(tmp_path: Path, access_log: bool) -> None:
    port = _free_port()
    env = {**os.environ, "LRTUNE_HOME": str(tmp_path)}
    env.pop("LRTUNE_DATABASE_URL", None)
    log = tmp_path / "api.log"
    command = ["api", "--access-log"] if access_log else ["api"]
    server = subprocess.Popen(
        [sys.executable, "-m", "lrtune.service.cli", *command, "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60, what="`lrtune api` to answer", logs=log.read_text)
        assert httpx.get(f"{base}/v1/jobs").status_code == 200
        assert httpx.get(f"{base}/v1/jobs/99").status_code == 404
        assert httpx.post(f"{base}/v1/jobs", json={}).status_code == 422
    finally:
        server.terminate()
        server.wait(timeout=20)
    text = log.read_text()
    assert '"GET /v1/jobs/99 HTTP/1.1" 404' in text and '"POST /v1/jobs HTTP/1.1" 422' in text
    assert ('"GET /v1/jobs HTTP/1.1" 200' in text) is access_log, text


@pytest.mark.ray
def test_the_workers_log_has_no_ray_tune_table_and_no_alembic_plugin_lines(
    tmp_path: Path,
) -> None:
    from lrtune.schemas.jobs import JobSpec
    from lrtune.service.store import Store

    url = f"sqlite:///{tmp_path / 'lrtune.db'}"
    upgrade_to_head(url)
    store = Store.from_url(url)
    job, _ = store.create_job(
        spec=JobSpec.model_validate(
            {
                "workload": {"name": "digits", "params": {"model": "mlp"}},
                "policies": ["fixed"],
                "budget": {"epochs": 1, "trials_per_policy": 1},
            }
        )
    )
    env = {**os.environ, "LRTUNE_HOME": str(tmp_path), "LRTUNE_DATABASE_URL": url}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "lrtune.service.cli", "worker", "--once", "--num-cpus", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert store.get_job(job.id).status == "succeeded"
    text = done.stdout + done.stderr
    for noise in ("Number of trials", "View detailed results", "alembic.runtime.plugins"):
        assert noise not in text, text
    store.dispose()


@pytest.mark.postgres
@pytest.mark.ray
def test_serve_creates_the_schema_of_an_empty_postgres_database_and_runs_a_job(
    postgres_server: PostgresServer, ray_local: str, tmp_path: Path
) -> None:
    name = f"{postgres_server.prefix}_serve_empty"
    url = postgres_server.create(name)
    port = _free_port()
    env = {
        **os.environ,
        "LRTUNE_DATABASE_URL": url,
        "LRTUNE_HOME": str(tmp_path),
        "RAY_ADDRESS": ray_local,
    }
    server = _start_server("serve", port=port, env=env)
    try:
        assert current_revision(url) == head_revision()
        spec = {
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "policies": ["fixed"],
            "budget": {"epochs": 2, "trials_per_policy": 1},
        }
        with LrtuneClient(f"http://127.0.0.1:{port}") as client:
            job = client.wait(client.submit_job(spec).id, poll_s=1, timeout_s=180)
        assert job.status == "succeeded", job
        assert job.progress.completed == job.progress.planned == 1, job
    finally:
        server.terminate()
        server.wait(timeout=40)
        postgres_server.drop(name)


@pytest.mark.postgres
def test_api_refuses_a_postgres_database_at_an_older_revision(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    name = f"{postgres_server.prefix}_api_older"
    url = postgres_server.create(name)
    try:
        upgrade_to_head(url)
        downgrade(url, "-1")
        env = {**os.environ, "LRTUNE_DATABASE_URL": url, "LRTUNE_HOME": str(tmp_path)}
        refused = subprocess.run(
            [sys.executable, "-m", "lrtune.service.cli", "api", "--port", str(_free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "lrtune db upgrade" in refused.stderr + refused.stdout
        assert current_revision(url) != head_revision()
    finally:
        postgres_server.drop(name)


# Slow enough (about a second an epoch) that the job is mid-way when serve is stopped.
STOPPED_JOB = {
    "workload": {"name": "digits", "params": {"model": "cnn", "batch_size": 4}},
    "policies": ["fixed", "cosine"],
    "lr_bounds": {"min": 0.001, "max": 0.01},
    "budget": {"epochs": 6, "trials_per_policy": 2, "max_concurrent_trials": 2},
    "search": {"algorithm": "random", "seed": 0},
}


@pytest.mark.ray
def test_sigterm_to_serve_stops_its_worker_and_ray_and_the_job_resumes_on_the_next_start(
    tmp_path: Path,
) -> None:
    import signal

    import psutil
    from lrtune.service.store import Store

    port = _free_port()
    env = {**os.environ, "LRTUNE_HOME": str(tmp_path)}
    for name in ("LRTUNE_DATABASE_URL", "RAY_ADDRESS"):  # its own SQLite and its own local Ray
        env.pop(name, None)
    log = tmp_path / "serve.log"
    serve = _start_server("serve", port=port, env=env, log=log)
    store = Store.from_url(f"sqlite:///{tmp_path / 'lrtune.db'}")
    try:
        with LrtuneClient(f"http://127.0.0.1:{port}") as client:
            job_id = client.submit_job(STOPPED_JOB).id

        def epochs() -> list[int]:
            trials = store.list_trials(job_id=job_id, limit=100).items
            return [m.epoch for t in trials for m in store.list_trial_metrics(trial_id=t.id)]

        wait_until(
            lambda: len(epochs()) >= 1, timeout=120, what="a first epoch", logs=log.read_text
        )
        # Everything serve started (its worker, the worker's Ray and trial processes), and the
        # worker's process group, which Ray's processes join.
        family = psutil.Process(serve.pid).children(recursive=True)
        groups = {os.getpgid(p.pid) for p in family if p.is_running()} - {os.getpgid(serve.pid)}

        serve.send_signal(signal.SIGTERM)  # serve alone, not its group, as a supervisor does
        serve.wait(timeout=90)

        def left() -> list[psutil.Process]:
            alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            grouped = [p for p in psutil.process_iter() if _process_group(p.pid) in groups]
            return alive + grouped

        def described() -> str:
            rows = [f"{p.pid} {' '.join(p.cmdline())[:160]}" for p in left() if p.is_running()]
            return "\n".join([*rows, log.read_text()[-3000:]])

        wait_until(
            lambda: not left(), timeout=30, what="serve's worker and its Ray to go", logs=described
        )
        handed_back = store.get_job(job_id)
        assert handed_back.status == "queued", "the running job was handed back"
        assert len(epochs()) < 2 * 2 * 6, "stopped mid-way"

        # The next start resumes it: every trial's epochs once each, none lost or stored twice.
        serve = _start_server("serve", port=port, env=env, log=log)
        with LrtuneClient(f"http://127.0.0.1:{port}") as client:
            finished = client.wait(job_id, poll_s=1, timeout_s=240)
        assert finished.status == "succeeded", finished.error
        for trial in store.list_trials(job_id=job_id, limit=100).items:
            stored = [m.epoch for m in store.list_trial_metrics(trial_id=trial.id)]
            assert stored == list(range(1, 7)), (trial.id, stored)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=90)
        store.dispose()


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# A job that passes through every step the log tells: a range test, a search, a confirmation.
LOGGED_JOB = {
    "workload": {"name": "digits", "params": {"model": "mlp"}},
    "policies": ["fixed", "cosine"],
    "lr_bounds": "auto",
    "budget": {"epochs": 2, "trials_per_policy": 1, "max_concurrent_trials": 2},
    "confirm": {"top_k": 1, "seeds": 2},
    "search": {"algorithm": "random", "seed": 0},
}
LIFECYCLE = [
    "submitted by tenant default",
    "claimed by worker ",
    "planning started",
    "planning finished in ",
    "range_test started",
    "range test: lr bounds ",
    "planned: 2 trials, execution population",
    "range_test finished in ",
    "search started",
    "search finished in ",
    "confirmation started",
    "confirmation finished in ",
    "recommendation started",
    "recommends ",
]


@pytest.mark.ray
def test_the_servers_log_tells_each_step_of_a_job_once_in_order_as_json_lines(
    ray_local: str, tmp_path: Path
) -> None:
    import json
    import signal

    port = _free_port()
    env = {
        **os.environ,
        "LRTUNE_HOME": str(tmp_path),
        "LRTUNE_LOG_FORMAT": "json",
        "RAY_ADDRESS": ray_local,
    }
    env.pop("LRTUNE_DATABASE_URL", None)
    log = tmp_path / "serve.log"
    serve = _start_server("serve", port=port, env=env, log=log)
    try:
        with LrtuneClient(f"http://127.0.0.1:{port}") as client:
            job = client.wait(client.submit_job(LOGGED_JOB).id, poll_s=1, timeout_s=240)
            assert job.status == "succeeded", job.error
            winner = client.recommendation(job.id).winner
            assert winner is not None
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=90)
    text = log.read_text()
    for noise in ("Number of trials", "View detailed results", "alembic.runtime.plugins"):
        assert noise not in text, text
    # lrtune's own lines (and uvicorn's) are JSON objects, one a line.
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    events = [r["message"] for r in records if r["logger"] == "lrtune.jobs"]
    assert all(r["job_id"] == job.id for r in records if r["logger"] == "lrtune.jobs")
    prefix = f"job {job.id} "
    steps = [message.removeprefix(prefix) for message in events]
    assert [next((s for s in LIFECYCLE if step.startswith(s)), step) for step in steps] == (
        LIFECYCLE
    ), steps
    assert steps[-1].startswith(f"recommends {winner.policy}: val_accuracy "), steps[-1]
