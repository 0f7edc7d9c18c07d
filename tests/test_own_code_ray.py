"""Users' own code through the worker daemon and a real local Ray: code folders given with
--code-path (LRTUNE_CODE_PATH), imported afresh by each job; train functions as trials; bad
user code failing its trial or its job with the user's own error, and the worker going on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from lrtune.schemas.jobs import Job, JobSpec, Trial, default_early_stopping
from lrtune.schemas.schedules import parse_schedule
from lrtune.service.recommendations import job_recommendation
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.daemon import RAW_JUDGED_NOTE
from lrtune.workers.schedule_math import learning_rate

from tests.conftest import wait_until

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


# What execution "auto" (the default) notes on a job that trains a train function.
TRAIN_FUNCTION_TRIALS = (
    "execution \"auto\" ran trials: '%s' is a train function, which runs its own loop"
)


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
    # One point per policy is too few to halve: the default early stopping is none; a train
    # function runs as trials.
    assert job.notes == [
        default_early_stopping(job.spec)[1],
        TRAIN_FUNCTION_TRIALS % "loop_job:make",
    ]
    assert job.notes[0].startswith("early stopping: none")
    for trial in trials(store, job.id):
        assert trial.status == "completed" and trial.epochs_done == 3
        # A train function orders its own data: the job records no order of its own.
        assert "shuffle_seed" not in trial.search_config
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


def test_user_code_that_cannot_be_planned_fails_its_job_and_the_next_job_succeeds(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    broken = {
        "wrong_type": ("def make():\n    return 42\n", "must return an lrtune.workers.Workload or"),
        "no_len": (
            "import torch\nfrom lrtune.workers import Workload\n"
            "def make():\n    return Workload(model=torch.nn.Linear(2, 2), "
            "train_loader=iter([]), val_loader=[])\n",
            "train_loader has no len()",
        ),
        # Kills the planning task's process at import; the worker must outlive it.
        "exits": ("import os\nos._exit(1)\n", "the process planning the job died"),
    }
    code.mkdir(parents=True, exist_ok=True)
    for name, (source, _) in broken.items():
        (code / f"{name}.py").write_text(source)
    write_loop(code, "loop_after")
    jobs = [store.create_job(spec=spec(f"{name}:make"))[0] for name in broken]
    jobs.append(store.create_job(spec=spec("loop_after:make"))[0])
    # One worker process, as `lrtune worker --code-path` runs, takes the jobs in order.
    env = {
        **os.environ,
        "LRTUNE_DATABASE_URL": str(code_settings.database_url),
        "LRTUNE_HOME": str(code_settings.home),
        "RAY_ADDRESS": ray_local,
    }
    log = code.parent / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "lrtune.service.cli", "worker", "--code-path", str(code)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:

            def last_job_ended() -> bool:
                assert worker.poll() is None, f"the worker died\n{log.read_text()[-3000:]}"
                return store.get_job(jobs[-1].id).status in ("succeeded", "failed")

            wait_until(
                last_job_ended,
                timeout=180,
                what="the last job",
                logs=lambda: log.read_text()[-3000:],
                every=0.5,
            )
            assert worker.poll() is None, "the worker outlives every broken entrypoint"
        finally:
            worker.kill()
            worker.wait(timeout=30)
    ended = [store.get_job(job.id) for job in jobs]
    for job, (name, (_, reason)) in zip(ended, broken.items(), strict=False):
        assert job.status == "failed" and reason in (job.error or ""), (name, job.error)
        assert trials(store, job.id) == []
    assert ended[-1].status == "succeeded", ended[-1].error


def test_a_train_function_with_auto_bounds_fails_its_job_saying_why(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    write_loop(code, "loop_auto")
    [job] = run_jobs(code_settings, store, spec("loop_auto:make", lr_bounds="auto"))
    assert job.status == "failed" and job.error is not None
    assert 'lr_bounds "auto"' in job.error and "give lr_bounds {min, max}" in job.error
    assert trials(store, job.id) == []


def test_an_entrypoint_that_hangs_fails_its_job_at_the_planning_time_limit(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    code.mkdir(parents=True, exist_ok=True)
    (code / "hangs.py").write_text("import time\ntime.sleep(600)\n")
    write_loop(code, "loop_after_hang")
    limited = code_settings.model_copy(update={"planning_timeout_s": 3.0})
    [hung] = run_jobs(limited, store, spec("hangs:make"))
    assert hung.status == "failed" and "planning took longer than 3 s" in (hung.error or "")
    [after] = run_jobs(code_settings, store, spec("loop_after_hang:make"))
    assert after.status == "succeeded", after.error


def test_asha_stops_train_functions_early(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    write_loop(code, "loop_asha")
    job_spec = spec(
        "loop_asha:make",
        budget={"epochs": 3, "trials_per_policy": 4, "max_concurrent_trials": 2},
        early_stopping={"kind": "asha", "grace_epochs": 1, "reduction_factor": 2},
    )
    [job] = run_jobs(code_settings, store, job_spec)
    assert job.status == "succeeded", job.error
    # The job asked for ASHA judged by cooldown probes (the default); it says it judged raw.
    assert job.spec.early_stopping.judge == "cooldown"
    assert job.notes == [RAW_JUDGED_NOTE, TRAIN_FUNCTION_TRIALS % "loop_asha:make"]
    found = trials(store, job.id)
    pruned = [t for t in found if t.status == "pruned"]
    assert pruned and all(t.epochs_done < 3 for t in pruned)
    assert all(t.epochs_done == 3 for t in found if t.status == "completed")
    for trial in found:
        assert len(store.list_trial_metrics(trial_id=trial.id)) == trial.epochs_done


def test_cancel_stops_running_train_functions(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    write_loop(code, "loop_slow", "import time\ntime.sleep(0.5)")
    job, _ = store.create_job(
        spec=spec(
            "loop_slow:make",
            budget={"epochs": 20, "trials_per_policy": 2, "max_concurrent_trials": 2},
        )
    )
    worker = threading.Thread(
        target=run_worker, args=(code_settings,), kwargs={"once": True, "store": store}
    )
    worker.start()
    wait_until(
        lambda: any(t.epochs_done >= 1 for t in trials(store, job.id)),
        timeout=90,
        what="a first epoch",
    )
    store.cancel_job(job.id)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert store.get_job(job.id).status == "cancelled"
    found = trials(store, job.id)
    # Stopped mid-way: 20 epochs of half a second outlast the cancel by far.
    assert all(t.status != "running" and t.epochs_done < 20 for t in found)


# digits, whose first trial process to begin the third epoch dies there (os._exit, as a killed
# process does); the marker file makes the retry live.
DIES_ONCE = """
import os

from lrtune.workers.workloads import build_workload


class DiesOnce:
    def __init__(self, batches, marker):
        self.batches, self.marker = batches, marker

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch):
        if epoch == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        self.batches.set_epoch(epoch)


def make(marker=""):
    workload = build_workload("digits", {"model": "mlp"})
    workload.train_loader = DiesOnce(workload.train_loader, marker)
    return workload
"""


def test_a_retried_trial_records_each_epoch_once_without_on_trial_recover(
    ray_local: str, code_settings: Settings, store: Store, code: Path
) -> None:
    """Tune retries a trial whose process died (MAX_TRIAL_FAILURES) and tells callbacks through
    on_trial_recover, which RecordResults does not implement: the trial's row stays running, and
    the retry's results (its restore, then epochs it had not reported) complete it."""
    code.mkdir(parents=True, exist_ok=True)
    (code / "dies_once.py").write_text(DIES_ONCE)
    marker = code / "died"
    epochs = 4
    # Planning builds digits once in a Ray task: more time than a train function needs.
    settings = code_settings.model_copy(
        update={"checkpoint_every_epochs": 1, "planning_timeout_s": 120.0}
    )
    [job] = run_jobs(
        settings,
        store,
        spec(
            "dies_once:make",
            workload={"entrypoint": "dies_once:make", "params": {"marker": str(marker)}},
            metric={"name": "val_accuracy", "mode": "max"},
            policies=["fixed"],
            budget={"epochs": epochs, "trials_per_policy": 1},
        ),
    )
    assert marker.exists(), "the trial's first process died"
    assert job.status == "succeeded", job.error
    [trial] = trials(store, job.id)
    assert trial.status == "completed" and trial.error is None
    assert trial.restored_from_epoch is not None and 1 <= trial.restored_from_epoch < 3
    assert [m.epoch for m in store.list_trial_metrics(trial_id=trial.id)] == list(
        range(1, epochs + 1)
    )
    assert job.progress.completed == 1 and job.progress.failed == 0
