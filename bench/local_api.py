"""Run `lrtune api` (uvicorn, one process) on a free loopback port, for benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


@contextmanager
def running_api(env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the API in its own process (its own LRTUNE_HOME unless `env` names one); yield
    its base URL once /healthz answers; stop it on exit."""
    port = _free_port()
    full_env = {"LRTUNE_HOME": tempfile.mkdtemp(prefix="lrtune-bench-"), **os.environ}
    full_env.update(env or {})
    # The `lrtune api` a deployment runs (it prepares the process for serving, see
    # service/cli.py); its access log goes to stdout, which a benchmark does not want to print.
    server = subprocess.Popen(
        [sys.executable, "-m", "lrtune.service.cli", "api", "--port", str(port)],
        env=full_env,
        stdout=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, server)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(base_url: str, server: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"the API exited with code {server.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the API did not start")
