"""README "Tune your own model", command by command: `lrtune serve --code-path`, submit, watch,
recommend; then the example's code is edited and the job resubmitted with no restart, and the
new code is what runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Tune your own model"


def readme_commands() -> tuple[str, list[str]]:
    """The section's two sh blocks: the serve command, then the client commands."""
    text = (ROOT / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2, "the section shows serve, then submit / watch / recommend"
    lines = [
        [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
        for block in blocks
    ]
    [serve] = lines[0]
    return serve, lines[1]


def command(line: str) -> list[str]:
    """A README line as argv: `.venv/bin/lrtune` is this interpreter's lrtune."""
    argv = shlex.split(line)
    assert argv[0] == ".venv/bin/lrtune", line
    return [str(Path(sys.executable).parent / "lrtune"), *argv[1:]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readme_own_model_section_runs_and_an_edit_takes_effect_without_a_restart(
    ray_local: str, tmp_path: Path
) -> None:
    serve_line, client_lines = readme_commands()
    assert "--code-path examples/own-model" in serve_line
    # The commands run in a copy of the repository's examples, so the test can edit one.
    shutil.copytree(ROOT / "examples" / "own-model", tmp_path / "examples" / "own-model")
    port = free_port()
    env = {**os.environ, "LRTUNE_HOME": str(tmp_path / "home"), "RAY_ADDRESS": ray_local}
    env.pop("LRTUNE_DATABASE_URL", None)
    env["LRTUNE_URL"] = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [*command(serve_line), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def run(argv: list[str]) -> str:
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        logs = (tmp_path / "serve.log").read_text()[-3000:]
        assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}\n{logs}"
        return done.stdout

    try:

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/workloads").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(
            serving,
            timeout=90,
            what="`lrtune serve` to answer",
            logs=lambda: (tmp_path / "serve.log").read_text()[-3000:],
            every=0.5,
        )

        outputs = [run(command(line)) for line in client_lines]
        assert outputs[0].strip() == "1"  # the job id, as the README says
        job = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/1").json()
        assert job["status"] == "succeeded", job
        assert "LambdaLR" in outputs[2] or "lr_lambda" in outputs[2], outputs[2]

        # Edit the example: it reports one more metric. Resubmit; the new code runs.
        example = tmp_path / "examples" / "own-model" / "own_model" / "classifier.py"
        source = example.read_text()
        edited = source.replace(
            "val_accuracy=accuracy)", "val_accuracy=accuracy, val_error=1 - accuracy)"
        )
        assert edited != source
        example.write_text(edited)
        submit, watch = client_lines[0], client_lines[1].replace(" 1", " 2", 1)
        assert run(command(submit)).strip() == "2"
        run(command(watch))

        def metric_names(job_id: int) -> set[str]:
            trials = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}/trials").json()
            first = trials["items"][0]["id"]
            rows = httpx.get(f"http://127.0.0.1:{port}/v1/trials/{first}/metrics").json()
            return set(rows[0]["metrics"])

        assert metric_names(1) == {"val_accuracy"}
        assert metric_names(2) == {"val_accuracy", "val_error"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
