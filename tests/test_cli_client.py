"""The REST client commands of `lrtune` against a live service, success and error exits alike."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from lrtune.client import commands
from lrtune.schemas.jobs import TrialMetric, TrialProbe
from lrtune.schemas.recommendations import BoundSuggestion, RangeTestResult, mean_and_spread
from lrtune.service.cli import app as cli
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from typer.testing import CliRunner

from tests.conftest import JobSeeder, LiveService

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


@pytest.fixture
def service_url(settings: Settings) -> Iterator[str]:
    """uvicorn serving the app over a fresh database, in a thread, on a free loopback port."""
    with LiveService(settings) as live:
        yield live.url


@pytest.fixture
def finished_job(store: Store, seed_job: JobSeeder, job_body: dict[str, Any]) -> int:
    """A succeeded job with two trials per policy, three epochs each, written by the store."""
    job_id = seed_job.job(job_body)
    for policy, lr in (("fixed", 0.1), ("fixed", 0.03), ("clr", 0.2), ("clr", 0.05)):
        schedule = (
            {"policy": "fixed", "lr": lr}
            if policy == "fixed"
            else {"policy": "clr", "base_lr": 0.001, "max_lr": lr, "step_size": 10}
        )
        epochs = [
            seed_job.epoch(
                e, 0.5 + lr + 0.1 * e, lr=lr, train_loss=1 / e, val_loss=1.2 / e, elapsed_s=0.1 * e
            )
            for e in (1, 2, 3)
        ]
        seed_job.trial(
            job_id, policy=policy, schedule=schedule, search_config={"lr": lr}, epochs=epochs
        )
    store.mark_job_succeeded(job_id=job_id)
    return job_id


def run(url: str, *args: str, token: str | None = None) -> tuple[int, str, str]:
    # Tables as wide as a wide terminal's. The console took its width when it was imported,
    # from that process's COLUMNS (an xdist worker has none): set it for the command.
    env = {"COLUMNS": "200", "LRTUNE_TOKEN": token}
    with patch.object(commands.out, "_width", 200):
        result = runner.invoke(cli, [*args, "--url", url], env=env)
    return result.exit_code, result.stdout, result.stderr


def assert_one_error_line(code: int, stderr: str, *words: str) -> None:
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_submit_prints_the_id_of_yaml_and_json_jobs(service_url: str, store: Store) -> None:
    for example in ("job-digits.yaml", "job-mnist1d.json"):
        code, out, _ = run(service_url, "submit", str(EXAMPLES / example))
        assert code == 0
        job = store.get_job(int(out.strip()))
        assert job.status == "queued"
    assert store.get_job(1).spec.workload.name == "digits"
    assert store.get_job(2).spec.workload.name == "mnist1d"


def test_submit_with_an_idempotency_key_makes_one_job(service_url: str) -> None:
    path = str(EXAMPLES / "job-digits.yaml")
    first = run(service_url, "submit", path, "--idempotency-key", "k1")
    again = run(service_url, "submit", path, "--idempotency-key", "k1")
    assert first[0] == again[0] == 0
    assert first[1] == again[1]


def test_submit_errors_are_one_line(service_url: str, tmp_path: Path) -> None:
    invalid = tmp_path / "bad.json"
    invalid.write_text(json.dumps({"workload": {"name": "digits"}, "budget": {"epochs": 0}}))
    code, out, err = run(service_url, "submit", str(invalid))
    assert_one_error_line(code, err, "budget.epochs", "HTTP 422")
    assert out == ""
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    assert_one_error_line(*run(service_url, "submit", str(broken))[::2], "not valid YAML")
    missing = tmp_path / "missing.yaml"
    assert_one_error_line(*run(service_url, "submit", str(missing))[::2], "cannot read")


def test_jobs_lists_newest_first_and_pages(service_url: str, finished_job: int) -> None:
    run(service_url, "submit", str(EXAMPLES / "job-digits.yaml"))
    code, out, err = run(service_url, "jobs", "--limit", "1")
    assert code == 0
    assert "digits schedules" in out and "queued" in out
    assert "more: --cursor" in err
    cursor = err.split("--cursor", 1)[1].strip()
    code, out, _ = run(service_url, "jobs", "--limit", "1", "--cursor", cursor)
    assert code == 0 and "succeeded" in out and "4/4" in out
    code, out, _ = run(service_url, "jobs", "--status", "succeeded")
    assert code == 0 and "queued" not in out
    assert_one_error_line(*run(service_url, "jobs", "--cursor", "nonsense")[::2], "cursor")


def test_status_shows_progress_and_best(service_url: str, finished_job: int) -> None:
    code, out, _ = run(service_url, "status", str(finished_job))
    assert code == 0
    assert "succeeded" in out
    assert "4/4" in out and "completed 4" in out
    assert "clr, trial 3" in out  # max_lr 0.2: val_accuracy 0.5 + 0.2 + 0.3 at epoch 3
    assert_one_error_line(*run(service_url, "status", "999")[::2], "no job with id 999", "404")


def test_watch_ends_with_the_job(service_url: str, finished_job: int, store: Store) -> None:
    code, out, _ = run(service_url, "watch", str(finished_job), "--interval", "0.05")
    assert code == 0
    assert "4/4" in out
    assert f"job {finished_job} succeeded; best 1 (clr)" in out

    queued = int(run(service_url, "submit", str(EXAMPLES / "job-digits.yaml"))[1])
    threading.Timer(0.3, lambda: store.cancel_job(queued)).start()
    code, out, err = run(service_url, "watch", str(queued), "--interval", "0.05")
    assert_one_error_line(code, err, f"job {queued} cancelled")
    assert_one_error_line(*run(service_url, "watch", "999")[::2], "no job with id 999")


def test_trials_lists_a_jobs_trials(service_url: str, finished_job: int) -> None:
    code, out, _ = run(service_url, "trials", str(finished_job))
    assert code == 0
    assert out.count("completed") == 4
    code, out, _ = run(service_url, "trials", str(finished_job), "--policy", "clr")
    assert code == 0 and "fixed" not in out and out.count("clr") == 2
    assert_one_error_line(*run(service_url, "trials", "999")[::2], "404")


def test_probes_lists_a_trials_probes(service_url: str, finished_job: int, store: Store) -> None:
    trial_id = store.list_trials(job_id=finished_job).items[-1].id
    code, out, _ = run(service_url, "probes", str(trial_id))
    assert code == 0 and f"trial {trial_id} has no probes" in out
    store.record_trial_probes(
        trial_id=trial_id,
        probes=[
            TrialProbe.model_validate(
                {
                    "epoch": epoch,
                    "step": 10 * epoch,
                    "cooldown_steps": 7 * epoch,
                    "train_loss": 0.25,
                    "val_loss": math.nan if epoch == 3 else 0.5,
                    "metrics": {"val_accuracy": 0.8125},
                    "elapsed_s": 0.1,
                    "decision": decision,
                }
            )
            for epoch, decision in ((1, "continue"), (3, None))
        ],
    )
    code, out, err = run(service_url, "probes", str(trial_id))
    assert code == 0, err
    header, first, third = [" ".join(line.split()) for line in out.strip().splitlines()]
    assert header == "epoch step cooldown steps train_loss val_loss val_accuracy decision"
    assert first == "1 10 7 0.25 0.5 0.8125 continue"
    assert third == "3 30 21 0.25 nan 0.8125 -"
    assert_one_error_line(*run(service_url, "probes", "999")[::2], "no trial with id 999", "404")


def test_recommend_in_every_format(service_url: str, finished_job: int) -> None:
    code, out, err = run(service_url, "recommend", str(finished_job))
    assert code == 0, err
    # clr with max_lr 0.2 ends at val_accuracy 0.5 + 0.2 + 0.3 = 1.0, one seed.
    assert "Recommendation for job" in out and "(final)" in out and "winner: clr" in out
    payload = json.loads(run(service_url, "recommend", str(finished_job), "--format", "json")[1])
    assert payload["final"] is True
    assert payload["winner"]["policy"] == "clr"
    assert payload["winner"]["metric_mean"] == pytest.approx(1.0)
    assert payload["winner"]["n_seeds"] == 1
    assert [p["policy"] for p in payload["by_policy"]] == ["clr", "fixed"]
    torch_code = run(service_url, "recommend", str(finished_job), "--format", "torch")[1]
    assert torch_code.strip() == payload["code"]["pytorch"].strip()
    assert "CyclicLR" in torch_code
    keras_code = run(service_url, "recommend", str(finished_job), "--format", "keras")[1]
    assert keras_code.strip() == payload["code"]["keras"].strip()
    assert "class LrtuneSchedule(keras.optimizers.schedules.LearningRateSchedule)" in keras_code
    hf_code = run(service_url, "recommend", str(finished_job), "--format", "huggingface")[1]
    assert hf_code.strip() == payload["code"]["huggingface"].strip()
    assert "optimizers = (optimizer, scheduler)" in hf_code
    assert payload["exact"] == {"pytorch": True, "keras": True, "huggingface": True}
    assert_one_error_line(*run(service_url, "recommend", "999")[::2], "404")
    code, _, err = run(service_url, "recommend", str(finished_job), "--format", "pdf")
    assert code == 2 and "pdf" in err


def test_range_test_shows_the_bounds_and_the_curve(
    service_url: str, finished_job: int, store: Store
) -> None:
    code, _, err = run(service_url, "range-test", str(finished_job))
    assert_one_error_line(code, err, "404", "no LR range test")
    assert_one_error_line(*run(service_url, "range-test", "999")[::2], "404")
    lrs = [1e-4 * 10 ** (i / 4) for i in range(16)]
    losses = [2.0 - 0.1 * i for i in range(15)] + [math.inf]
    store.save_range_test(
        job_id=finished_job,
        result=RangeTestResult(
            lr=lrs,
            loss=losses,
            smoothed_loss=[*losses[:-1], math.nan],
            suggestion=BoundSuggestion(
                min_lr=0.001, max_lr=0.01, min_method="decade below", max_method="lowest / 3"
            ),
            ramp="exponential",
            iterations=16,
            stopped_early=True,
        ),
    )
    code, out, err = run(service_url, "range-test", str(finished_job))
    assert code == 0, err
    assert "min_lr 0.001 (decade below)" in out and "max_lr 0.01 (lowest / 3)" in out
    assert "16 steps, exponential ramp, stopped early" in out
    payload = json.loads(run(service_url, "range-test", str(finished_job), "--format", "json")[1])
    assert payload["loss"][-1] == "Infinity" and payload["smoothed_loss"][-1] == "NaN"
    assert payload["lr"] == pytest.approx(lrs)


def test_cancel_queued_and_finished_jobs(service_url: str, finished_job: int) -> None:
    queued = run(service_url, "submit", str(EXAMPLES / "job-digits.yaml"))[1].strip()
    code, out, _ = run(service_url, "cancel", queued)
    assert code == 0 and out.strip() == f"job {queued} is cancelled"
    assert run(service_url, "cancel", queued)[0] == 0  # idempotent
    code, _, err = run(service_url, "cancel", str(finished_job))
    assert_one_error_line(code, err, "already succeeded", "409")


def test_best_lists_settings_of_finished_jobs(service_url: str, finished_job: int) -> None:
    code, out, _ = run(service_url, "best", "--workload", "digits")
    assert code == 0
    assert "fixed" in out and "clr" in out and "val_accuracy" in out
    code, out, _ = run(service_url, "best", "--workload", "cifar10")
    assert code == 0 and "no finished job yet" in out


def test_unreachable_service_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run(f"http://127.0.0.1:{port}", "jobs")
    assert_one_error_line(code, err, "cannot reach lrtune")


def test_console_script_reads_lrtune_url(service_url: str, finished_job: int) -> None:
    lrtune = Path(sys.executable).parent / "lrtune"
    done = subprocess.run(
        [str(lrtune), "status", str(finished_job)],
        env={"LRTUNE_URL": service_url, "LRTUNE_TOKEN": "secret", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout


def test_status_timeline_prints_each_phase_and_each_trials_start_up(
    service_url: str, store: Store, seed_job: JobSeeder, job_body: dict[str, Any]
) -> None:
    job = store.get_job(seed_job.job(job_body))
    for phase in ("planning", "search"):
        assert store.begin_job_phase(job_id=job.id, phase=phase, worker_id="w")
    epoch = TrialMetric(epoch=1, step=10, lr=0.1, metrics={"val_accuracy": 0.5}, elapsed_s=0.25)
    trial_id = seed_job.trial(job.id, epochs=[epoch])
    store.mark_job_succeeded(job_id=job.id)
    assert store.begin_job_phase(job_id=job.id, phase="recommendation", worker_id="w")
    store.end_job_phase(job_id=job.id, phase="recommendation", worker_id="w")

    code, out, _ = run(service_url, "status", str(job.id), "--timeline")
    assert code == 0, out
    lines = out.splitlines()
    phase_rows = [line.split()[0] for line in lines if line.split()[-1:] in (["-"], ["w"])]
    assert phase_rows[:4] == ["queued", "planning", "search", "recommendation"], out
    assert any(line.split()[:1] == ["total"] and "100.0%" in line for line in lines), out
    assert "job wall-clock (submitted to finished)" in out
    assert "start-up s" in out and "busy s" in out
    (trial_row,) = [line for line in lines if line.split()[:1] == [str(trial_id)]]
    assert "fixed" in trial_row and "completed" in trial_row and "0.25" in trial_row

    code, plain, _ = run(service_url, "status", str(job.id))
    assert code == 0 and "recommendation" not in plain and "start-up" not in plain
    code, _, err = run(service_url, "status", "999", "--timeline")
    assert_one_error_line(code, err, "no job with id 999", "HTTP 404")


@pytest.mark.parametrize(
    ("mean", "std", "shown"),
    [
        (0.977, 0.001283, "0.9770 ± 0.0013"),
        (0.91234, 0.0213, "0.912 ± 0.021"),
        (123.4, 12.3, "123 ± 12"),
        (0.5, None, "0.5"),
        (0.5, 0.0, "0.5 ± 0"),
    ],
)
def test_a_mean_is_shown_to_its_spreads_precision(
    mean: float, std: float | None, shown: str
) -> None:
    assert mean_and_spread(mean, std) == shown


def test_whoami_and_status_name_the_token(settings: Settings, store: Store) -> None:
    viewer_record, viewer = store.create_token(tenant="research", label="viewer", scope="read")
    ci_record, ci = store.create_token(tenant="research", label="ci")
    job_file = str(EXAMPLES / "job-digits.yaml")
    with LiveService(settings.model_copy(update={"auth": True})) as live:
        code, out, _ = run(live.url, "whoami", token=viewer)
        assert code == 0
        rows = {
            line.split()[0]: line.split(maxsplit=1)[1].strip() for line in out.splitlines() if line
        }
        assert rows == {
            "tenant": "research",
            "token": f"viewer (token {viewer_record.id})",
            "scope": "read",
            "rights": "read",
        }
        code, _, err = run(live.url, "submit", job_file, token=viewer)
        assert_one_error_line(code, err, "scope is 'read'", "needs scope 'submit'", "403")
        assert_one_error_line(*run(live.url, "whoami")[::2], "bearer token", "401")

        job_id = run(live.url, "submit", job_file, token=ci)[1].strip()
        assert run(live.url, "cancel", job_id, token=ci)[0] == 0
        code, out, _ = run(live.url, "status", job_id, token=viewer)
    assert code == 0
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert f"submitted by ci (token {ci_record.id})" in lines
    assert f"cancelled by ci (token {ci_record.id})" in lines


def test_whoami_with_auth_off_has_every_right(service_url: str) -> None:
    code, out, _ = run(service_url, "whoami")
    assert code == 0
    assert "default" in out and "LRTUNE_AUTH=off" in out
    assert "read, submit, code" in out  # the service is on this machine
