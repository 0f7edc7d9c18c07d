"""Users' own code through the worker daemon and a real local Ray: code folders given with
--code-path (LRTUNE_CODE_PATH), imported afresh by each job; train functions as trials; bad
user code failing its trial or its job with the user's own error, and the worker going on."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from lrtune.schemas.jobs import Job, JobSpec, Trial
from lrtune.schemas.schedules import parse_schedule
from lrtune.service.recommendations import job_recommendation
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.schedule_math import learning_rate

pytestmark = pytest.mark.ray

# A train function on a tiny regression: {body} goes after each epoch's steps, so a test can
# make it misbehave; MARK is reported as a metric, so a test can see which code ran.
LOOP = """
import torch
from torch import nn
from lrtune.workers import TrainFunction

MARK = 1.0


def make(steps=4):
    def train(ctx):
        inputs = torch.randn(64, 4)
        targets = inputs.sum(dim=1, keepdim=True)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).to(ctx.device)
        optimizer = torch.optim.SGD(ctx.param_groups(model), momentum=0.9)
        scheduler = ctx.lr_scheduler(optimizer)
        for epoch in range(1, ctx.epochs + 1):
            losses = []
            for _ in range(steps):
                index = torch.randint(0, 64, (16,))
                loss = nn.functional.mse_loss(model(inputs[index]), targets[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
            train_loss = sum(losses) / len(losses)
            with torch.no_grad():
                val_loss = nn.functional.mse_loss(model(inputs), targets).item()
{body}
            if ctx.report(epoch, train_loss=train_loss, val_loss=val_loss, mark=MARK):
                return

    return TrainFunction(train, steps_per_epoch=steps)
"""


def write_loop(folder: Path, name: str, body: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(LOOP.format(body=textwrap.indent(body, " " * 12)))


def spec(entrypoint: str, **overrides: Any) -> JobSpec:
    data: dict[str, Any] = {
        "workload": {"entrypoint": entrypoint, "params": {}},
        "metric": {"name": "val_loss", "mode": "min"},
        "policies": ["fixed", "cosine"],
        "lr_bounds": {"min": 0.001, "max": 0.05},
        "budget": {"epochs": 3, "trials_per_policy": 1, "max_concurrent_trials": 2},
        "search": {"algorithm": "random", "seed": 0},
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def trials(store: Store, job_id: int) -> list[Trial]:
    return sorted(store.list_trials(job_id=job_id, limit=500).items, key=lambda t: t.id)


def run_jobs(settings: Settings, store: Store, *specs: JobSpec) -> list[Job]:
    """Queue `specs`, then one worker runs them all, in order."""
    created = [store.create_job(spec=s)[0] for s in specs]
    for _ in created:
        run_worker(settings, once=True, store=store)
    return [store.get_job(job.id) for job in created]


@pytest.fixture
def code(tmp_path: Path) -> Path:
    return tmp_path / "code"


@pytest.fixture
def code_settings(settings: Settings, code: Path) -> Settings:
    return settings.model_copy(update={"code_path": str(code), "planning_timeout_s": 20.0})


def test_a_train_function_job_trains_on_the_preview_rates_and_is_recorded(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    write_loop(code, "loop_job")
    [job] = run_jobs(code_settings, store, spec("loop_job:make"))
    assert job.status == "succeeded", job.error
    assert job.trial_errors == []
    for trial in trials(store, job.id):
        assert trial.status == "completed" and trial.epochs_done == 3
        schedule = parse_schedule(trial.schedule)
        rows = store.list_trial_metrics(trial_id=trial.id)
        assert [row.step for row in rows] == [4, 8, 12]
        # Each epoch's rate is the preview's at its last step.
        assert [row.lr for row in rows] == pytest.approx(
            [learning_rate(schedule, row.step - 1) for row in rows], rel=1e-12
        )
        assert all(row.metrics == {"mark": 1.0} for row in rows)
    recommendation = job_recommendation(store, job_id=job.id, tenant_id=None)
    assert recommendation.code["pytorch"]


def test_each_job_imports_the_code_as_it_was_when_the_job_started(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    write_loop(code, "loop_edited")
    [first] = run_jobs(code_settings, store, spec("loop_edited:make"))
    source = (code / "loop_edited.py").read_text()
    (code / "loop_edited.py").write_text(source.replace("MARK = 1.0", "MARK = 2.0"))
    [second] = run_jobs(code_settings, store, spec("loop_edited:make"))
    marks = {
        job.id: {
            row.metrics["mark"]
            for t in trials(store, job.id)
            for row in store.list_trial_metrics(trial_id=t.id)
        }
        for job in (first, second)
    }
    assert marks == {first.id: {1.0}, second.id: {2.0}}


def test_an_exception_in_epoch_3_fails_the_trial_with_the_users_error_and_frame(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    write_loop(code, "loop_raises", "if epoch == 3:\n    raise KeyError('no such column')")
    [job] = run_jobs(code_settings, store, spec("loop_raises:make", policies=["fixed"]))
    [trial] = trials(store, job.id)
    assert trial.status == "failed" and trial.epochs_done == 2
    assert trial.error is not None
    assert trial.error.startswith("KeyError: 'no such column' (at loop_raises.py:"), trial.error
    assert trial.error.endswith(" in train)")
    assert job.status == "failed" and job.error is not None and trial.error in job.error
    assert [(e.error, e.trials) for e in job.trial_errors] == [(trial.error, 1)]


def test_a_nan_loss_ends_the_trial_diverged_and_the_others_go_on(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    # The cosine trial only: its rate is the one searched below 0.01.
    write_loop(
        code,
        "loop_nan",
        "if epoch == 2 and optimizer.param_groups[0]['lr'] > 0.01:\n    train_loss = float('nan')",
    )
    job_spec = spec(
        "loop_nan:make",
        policies=[
            {"policy": "fixed", "search": {"lr": 0.03}},
            {"policy": "cosine", "search": {"lr": 0.003}},
        ],
    )
    [job] = run_jobs(code_settings, store, job_spec)
    assert job.status == "succeeded", job.error
    status = {t.policy: (t.status, t.epochs_done) for t in trials(store, job.id)}
    assert status == {"fixed": ("diverged", 2), "cosine": ("completed", 3)}


def test_the_jobs_metric_never_reported_fails_its_trials_naming_the_metric(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    write_loop(code, "loop_metric")
    job_spec = spec(
        "loop_metric:make", policies=["fixed"], metric={"name": "val_accuracy", "mode": "max"}
    )
    [job] = run_jobs(code_settings, store, job_spec)
    [trial] = trials(store, job.id)
    assert trial.status == "failed" and trial.error is not None
    assert "the job's metric 'val_accuracy' was not reported" in trial.error
    assert job.status == "failed" and "val_accuracy" in (job.error or "")


@pytest.mark.parametrize(
    ("source", "reason", "timeout_s"),
    [
        ("def make():\n    return 42\n", "must return an lrtune.workers.Workload or an", 30),
        (
            "import torch\nfrom lrtune.workers import Workload\n"
            "def make():\n    return Workload(model=torch.nn.Linear(2, 2), "
            "train_loader=iter([]), val_loader=[])\n",
            "train_loader has no len()",
            30,
        ),
        ("import os\nos._exit(1)\n", "the process planning the job died", 30),
        ("import time\ntime.sleep(600)\n", "planning took longer than 3 s", 3),
    ],
    ids=["wrong-type", "no-len", "os-exit", "hangs"],
)
def test_user_code_that_cannot_be_planned_fails_its_job_and_the_next_job_succeeds(
    ray_local: str,
    code_settings: Settings,
    store: Store,
    code: Path,
    source: str,
    reason: str,
    timeout_s: float,
    request: pytest.FixtureRequest,
) -> None:
    name = f"broken_{request.node.callspec.id.replace('-', '_')}"
    code.mkdir(parents=True, exist_ok=True)
    (code / f"{name}.py").write_text(source)
    write_loop(code, "loop_after")
    timed = code_settings.model_copy(update={"planning_timeout_s": timeout_s})
    [broken] = run_jobs(timed, store, spec(f"{name}:make"))
    [after] = run_jobs(code_settings, store, spec("loop_after:make"))
    assert broken.status == "failed" and reason in (broken.error or ""), broken.error
    assert trials(store, broken.id) == []
    assert after.status == "succeeded", after.error
