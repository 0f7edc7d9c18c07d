"""Local `lrtune` commands that need no server: `preview` and `run-trial`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from lrtune.schemas.schedules import parse_schedule
from lrtune.service.cli import app
from lrtune.workers.schedule_math import learning_rates
from typer.testing import CliRunner

runner = CliRunner()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_preview_prints_step_and_rate(tmp_path: Path) -> None:
    spec = {"policy": "clr", "base_lr": 0.1, "max_lr": 1.0, "step_size": 2, "mode": "triangular2"}
    result = runner.invoke(
        app, ["preview", str(_write(tmp_path, "s.json", json.dumps(spec))), "--steps", "10"]
    )
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [int(t) for t, _ in rows] == list(range(10))
    # The CLR paper's triangular2 test vector (reference/schedules.md).
    expected = [0.1, 0.55, 1, 0.55, 0.1, 0.325, 0.55, 0.325, 0.1, 0.2125]
    np.testing.assert_allclose([float(lr) for _, lr in rows], expected, rtol=1e-9)


def test_preview_reads_yaml_and_subsamples(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.yaml", "policy: sgdr\neta_max: 0.5\nt_0: 1\nt_mult: 2\n")
    result = runner.invoke(app, ["preview", str(path), "--steps", "9", "--every", "4"])
    assert result.exit_code == 0, result.output
    rates = [float(line.split("\t")[1]) for line in result.stdout.strip().splitlines()]
    np.testing.assert_allclose(rates, [0.5, 0.426777, 0.48097], rtol=1e-5)


def test_preview_plots_a_png(tmp_path: Path) -> None:
    spec = _write(tmp_path, "s.json", '{"policy": "one_cycle", "max_lr": 1, "total_steps": 500}')
    plot = tmp_path / "curve.png"
    result = runner.invoke(app, ["preview", str(spec), "--steps", "500", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_rejects_an_invalid_spec_naming_the_field(tmp_path: Path) -> None:
    spec = _write(tmp_path, "s.json", '{"policy": "sgdr", "eta_max": 0.1, "eta_min": 1, "t_0": 3}')
    result = runner.invoke(app, ["preview", str(spec), "--steps", "5"])
    assert result.exit_code == 2
    assert "eta_min" in result.output


def test_preview_reports_unreadable_files(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["preview", str(tmp_path / "nope.json"), "--steps", "5"])
    assert missing.exit_code == 2
    assert "cannot read" in missing.output
    broken = runner.invoke(app, ["preview", str(_write(tmp_path, "b.json", "{")), "--steps", "5"])
    assert broken.exit_code == 2
    assert "not valid JSON" in broken.output


def test_preview_values_match_the_library(tmp_path: Path) -> None:
    spec = {"policy": "noisy_linear_cosine", "lr": 0.1, "decay_steps": 50, "seed": 7}
    result = runner.invoke(
        app, ["preview", str(_write(tmp_path, "n.json", json.dumps(spec))), "--steps", "50"]
    )
    rates = [float(line.split("\t")[1]) for line in result.stdout.strip().splitlines()]
    np.testing.assert_allclose(
        rates, learning_rates(parse_schedule(spec), np.arange(50)), rtol=1e-9
    )


def test_run_trial_trains_in_process(tmp_path: Path) -> None:
    config = {
        "workload": {"name": "digits", "params": {"model": "mlp"}},
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "schedule": {"policy": "fixed", "lr": 0.05},
        "epochs": 2,
    }
    path = _write(tmp_path, "t.json", json.dumps([config, {**config, "seed": 1}]))
    result = runner.invoke(app, ["run-trial", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(" epoch ") == 4
    assert "trial 1: completed, best val_accuracy=" in result.stdout
    assert "2 trials in" in result.stdout


def test_run_trial_rejects_a_bad_config_naming_the_field(tmp_path: Path) -> None:
    config = {
        "workload": {"name": "digits"},
        "schedule": {"policy": "fixed", "lr": 0.1},
        "epochs": 0,
    }
    result = runner.invoke(app, ["run-trial", str(_write(tmp_path, "t.json", json.dumps(config)))])
    assert result.exit_code == 2
    assert "epochs" in result.output
