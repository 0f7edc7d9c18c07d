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


def _start_server(command: str, *, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`lrtune <command>` on `port`, once it answers /readyz with 200."""
    server = subprocess.Popen(
        [sys.executable, "-m", "lrtune.service.cli", command, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def answers() -> bool:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except httpx.TransportError:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
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
