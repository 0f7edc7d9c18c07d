"""The dashboard in a real browser (Debian's chromium through Playwright) against a live service.

A finished job is written through the store's functions (the worker's path into SQL), the service
runs under uvicorn on a loopback port, and the pages are driven as a person would. Screenshots go
to pytest's tmp dir and, when LRTUNE_TEST_ARTIFACTS is set, are copied there.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from lrtune.schemas.jobs import JobSpec, TrialMetric
from lrtune.service.app import create_app
from lrtune.service.settings import Settings
from lrtune.service.store import Store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

POLICIES = ("fixed", "cosine", "clr")
EPOCHS = 12


def seed_finished_job(store: Store) -> int:
    """A succeeded digits job: three policies x four trials, twelve epochs each, one diverged."""
    spec = JobSpec.model_validate(
        {
            "name": "digits: fixed vs cosine vs clr",
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": list(POLICIES),
            "budget": {"epochs": EPOCHS, "trials_per_policy": 4},
        }
    )
    job, _ = store.create_job(spec=spec)
    store.claim_next_job(worker_id="test-worker", lease_seconds=600)
    schedules = {
        "fixed": lambda k: {"policy": "fixed", "lr": 0.02 * (k + 1)},
        "cosine": lambda k: {"policy": "cosine", "lr": 0.05 * (k + 1), "decay_steps": 360},
        "clr": lambda k: {
            "policy": "clr",
            "base_lr": 0.001,
            "max_lr": 0.1 * (k + 1),
            "step_size": 60,
        },
    }
    ceiling = {"fixed": 0.90, "cosine": 0.95, "clr": 0.93}
    for p_index, policy in enumerate(POLICIES):
        for k in range(4):
            schedule = schedules[policy](k)
            trial = store.create_trial(
                job_id=job.id,
                policy=policy,
                schedule=schedule,
                search_config={key: v for key, v in schedule.items() if key != "policy"},
                seed=k,
                ray_trial_id=f"{policy}-{k}",
            )
            store.update_trial_status(trial_id=trial.id, status="running")
            diverged = policy == "clr" and k == 3
            rows = []
            for epoch in range(1, EPOCHS + 1):
                accuracy = ceiling[policy] - 0.02 * k - 0.6 * math.exp(-(epoch + p_index) / 3)
                loss = 2.3 * math.exp(-epoch / (3 + k)) + 0.1 * (1 + k)
                if diverged and epoch > 4:
                    accuracy, loss = 0.1, math.nan
                rows.append(
                    TrialMetric(
                        epoch=epoch,
                        step=epoch * 30,
                        lr=schedule.get("lr", schedule.get("max_lr", 0.1)),
                        train_loss=loss * 0.9 if not math.isnan(loss) else loss,
                        val_loss=loss,
                        metrics={"val_accuracy": accuracy},
                        elapsed_s=0.4 * epoch,
                    )
                )
                if diverged and epoch > 4:
                    break
            store.record_trial_results(trial_id=trial.id, results=rows)
            store.update_trial_status(
                trial_id=trial.id, status="diverged" if diverged else "completed"
            )
    store.mark_job_succeeded(job_id=job.id)
    return job.id


class LiveService:
    """uvicorn serving create_app(settings) in a thread on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveService:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def service(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    folder = tmp_path_factory.mktemp("dashboard")
    database = folder / "lrtune.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    store = Store.from_url(url)
    job_id = seed_finished_job(store)
    store.dispose()
    with LiveService(Settings(database_url=url, home=folder / "home")) as live:
        yield live.url, job_id


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    # Script errors fail the test; answers of 404 (views not built yet) and 422 (the invalid
    # form) are logged by the browser as failed loads, and are expected.
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield page
    context.close()
    assert not problems, problems


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    artifacts = os.environ.get("LRTUNE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path


def test_jobs_list_shows_the_finished_job(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, job_id = service
    page.goto(f"{url}/#/jobs")
    row = page.locator(f"[data-job-id='{job_id}']")
    row.wait_for()
    assert "digits: fixed vs cosine vs clr" in row.inner_text()
    assert row.get_by_test_id("status").inner_text() == "succeeded"
    assert "12/12" in row.inner_text()
    assert "cosine" in row.inner_text()  # the best so far is a cosine trial
    screenshot(page, tmp_path, "jobs-list")


def test_job_page_draws_curves_leaderboard_and_recommendation(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, job_id = service
    page.goto(f"{url}/#/jobs/{job_id}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    # One line per trial on each learning-curve chart, drawn on a canvas.
    for chart in ("metric-chart", "loss-chart"):
        element = page.get_by_test_id(chart)
        assert element.get_attribute("data-series") == "12"
        assert element.locator("canvas").count() == 1
    assert page.get_by_test_id("curves-note").inner_text() == "12 trials"
    board = page.get_by_test_id("leaderboard").inner_text()
    assert board.index("cosine") < board.index("clr") < board.index("fixed")
    lr_chart = page.get_by_test_id("lr-chart")
    lr_chart.locator("canvas").wait_for()
    page.wait_for_function(
        "document.querySelector('[data-testid=lr-chart]').dataset.series === '3'"
    )
    recommendation = page.get_by_test_id("recommendation")
    answer = httpx.get(f"{url}/v1/jobs/{job_id}/recommendation")
    if answer.status_code == 200:
        body = answer.json()
        assert body["winner"]["policy"] in recommendation.get_by_test_id("winner").inner_text()
        assert recommendation.get_by_test_id("rationale").inner_text() == body["rationale"]
        assert recommendation.get_by_test_id("code").inner_text().strip() == (
            body["code"]["pytorch"].strip()
        )
    else:
        assert answer.status_code == 404
        assert "not available" in recommendation.inner_text()
    if httpx.get(f"{url}/v1/jobs/{job_id}/range-test").status_code == 404:
        assert "not available yet" in page.get_by_test_id("range-test").inner_text()
    # Finished jobs have no cancel button; the trials table pages through the trials.
    assert page.get_by_test_id("cancel").count() == 0
    assert page.get_by_test_id("trials").locator("tbody tr").count() == 12
    screenshot(page, tmp_path, "job-page")


def test_trial_page_shows_spec_curves_and_metrics(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, job_id = service
    best = httpx.get(f"{url}/v1/jobs/{job_id}").json()["best"]
    page.goto(f"{url}/#/trials/{best['trial_id']}")
    page.get_by_test_id("metrics-table").wait_for()
    assert page.get_by_test_id("metrics-table").locator("tbody tr").count() == EPOCHS
    assert '"policy": "cosine"' in page.get_by_test_id("schedule").inner_text()
    for chart in ("trial-metric-chart", "trial-loss-chart", "trial-lr-chart"):
        assert page.get_by_test_id(chart).locator("canvas").count() == 1
    screenshot(page, tmp_path, "trial-page")


def test_new_job_form_previews_and_submits_a_valid_job(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, _ = service
    page.goto(f"{url}/#/new")
    page.get_by_test_id("new-job-form").wait_for()
    page.locator("input[name=name]").fill("from the form")
    page.locator("input[data-policy=sgdr]").check()
    # Each chosen policy's card draws the schedule's shape from the preview endpoint.
    page.get_by_test_id("preview-sgdr").locator("canvas").wait_for()
    page.get_by_test_id("preview-cosine").locator("canvas").wait_for()
    spec = page.get_by_test_id("spec-preview").inner_text()
    assert '"sgdr"' in spec
    screenshot(page, tmp_path, "new-job-form")
    page.get_by_test_id("submit").click()
    page.wait_for_url("**/#/jobs/*")
    job_id = int(page.url.rsplit("/", 1)[1])
    job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
    assert job["name"] == "from the form"
    assert job["status"] == "queued"
    assert [p["policy"] for p in job["spec"]["policies"]] == [
        "fixed",
        "cosine",
        "clr",
        "sgdr",
        "one_cycle",
    ]
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    assert page.get_by_test_id("cancel").count() == 1  # a queued job can be cancelled


def test_new_job_form_shows_the_422_message(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, _ = service
    page.goto(f"{url}/#/new")
    page.get_by_test_id("new-job-form").wait_for()
    page.locator("textarea[data-space=clr]").fill('{"max_lr": {"loguniform": [1.0, 0.1]}}')
    page.get_by_test_id("submit").click()
    error = page.get_by_test_id("submit-result").get_by_test_id("error")
    error.wait_for()
    assert "bounds are reversed" in error.inner_text()
    assert "policies" in error.inner_text()
    assert page.url.endswith("#/new")
    screenshot(page, tmp_path, "new-job-422")
