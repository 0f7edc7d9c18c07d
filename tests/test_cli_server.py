"""Server-side commands: `lrtune db upgrade/current`, `lrtune api` and the schema guard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from lrtune.service.cli import app
from typer.testing import CliRunner

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


def test_api_migrates_the_embedded_database_and_serves(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "LRTUNE_HOME": str(tmp_path)}
    env.pop("LRTUNE_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "lrtune.service.cli", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and ready is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                time.sleep(0.3)
        assert ready is not None and ready.status_code == 200, ready and ready.text
        assert (tmp_path / "lrtune.db").exists()
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200
        assert "lrtune" in page.text
    finally:
        server.terminate()
        server.wait(timeout=20)
