"""The GPU check (`bench/gpu_check.py`) as the suite's smoke run on the CPU (`--device cpu
--tiny`), so it never rots between the tasks that are lent a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # processes training side by side: 8 s alone, 25 s beside other tests
def test_the_gpu_check_runs_every_check_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tiny"] and set(report["checks"]) == {
        "run_trial",
        "shared_device",
        "population",
        "schedule_free",
        "own_model_amp",
        "charlm",
    }
    for name, entry in report["checks"].items():
        assert entry["ok"], (name, entry)
    assert report["checks"]["run_trial"]["status"] == "completed"
    assert report["checks"]["own_model_amp"]["amp"] is False  # AMP is for CUDA only
    assert [row["k"] for row in report["checks"]["population"]["sizes"]] == [2, 4]
    assert "| population | ok |" in done.stdout
