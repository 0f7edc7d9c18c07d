"""The dashboard in a real browser (Debian's chromium through Playwright) against a live service.

A finished job is written through the store's functions (the worker's path into SQL), cooldown
probes and early stopping's decisions included, the service runs under uvicorn on a loopback port,
and the pages are driven as a person would. Screenshots go
to pytest's tmp dir and, when LRTUNE_TEST_ARTIFACTS is set, are copied there.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from lrtune.schemas.jobs import JobSpec, RungDecision, TrialMetric, TrialProbe
from lrtune.schemas.recommendations import mean_and_spread
from lrtune.service.settings import Settings
from lrtune.service.store import Store

from tests.conftest import JobSeeder, LiveService
from tests.test_best_so_far import seed_best_epoch_not_final

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser tests need Debian's chromium at /usr/bin/chromium (apt-get install "
        "chromium)",
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

POLICIES = ("fixed", "cosine", "clr")
EPOCHS = 12
# Trials (policy, seed) probed at the rungs of epochs 1 and 3; fixed-3 is pruned at epoch 3.
PROBED = (("fixed", 0), ("fixed", 3), ("cosine", 0), ("cosine", 1), ("clr", 0), ("clr", 1))
RUNG_EPOCHS = (1, 3)
PRUNED = ("fixed", 3)
RESTORED_FROM_EPOCH = 2  # the pruned trial's worker died once; it resumed from this checkpoint
# What annealing the rate to 0 adds to the metric at a rung: more for the higher rates.
PROBE_GAIN = {"fixed": 0.03, "cosine": 0.015, "clr": 0.06}


def cooldown_probe(
    epoch: int, accuracy: float, loss: float, *, gain: float, decision: RungDecision
) -> TrialProbe:
    """A cooldown probe as the worker reports it: as long as the steps trained so far."""
    return TrialProbe(
        epoch=epoch,
        step=epoch * 30,
        cooldown_steps=epoch * 30,
        train_loss=loss * 0.8,
        val_loss=loss * 0.85,
        metrics={"val_accuracy": accuracy + gain},
        elapsed_s=0.2 * epoch,
        decision=decision,
    )


def seed_finished_job(store: Store) -> int:
    """A succeeded digits job under ASHA: three policies x four trials, twelve epochs each, one
    diverged, six probed at the rungs of epochs 1 and 3, one of them pruned at epoch 3."""
    spec = JobSpec.model_validate(
        {
            "name": "digits: fixed vs cosine vs clr",
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": list(POLICIES),
            "budget": {"epochs": EPOCHS, "trials_per_policy": 4},
            "early_stopping": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 3},
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
            pruned = (policy, k) == PRUNED
            rows = []
            probes = []
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
                if (policy, k) in PROBED and epoch in RUNG_EPOCHS:
                    stop = pruned and epoch == RUNG_EPOCHS[-1]
                    probes.append(
                        cooldown_probe(
                            epoch,
                            accuracy,
                            loss,
                            gain=PROBE_GAIN[policy],
                            decision="stop" if stop else "continue",
                        )
                    )
                if (diverged and epoch > 4) or (pruned and epoch == RUNG_EPOCHS[-1]):
                    break
            store.record_trial_results(trial_id=trial.id, results=rows)
            if probes:
                store.record_trial_probes(trial_id=trial.id, probes=probes)
            if pruned:
                store.set_restored_from_epoch(trial_id=trial.id, epoch=RESTORED_FROM_EPOCH)
            status = "diverged" if diverged else "pruned" if pruned else "completed"
            store.update_trial_status(trial_id=trial.id, status=status)
    store.mark_job_succeeded(job_id=job.id)
    return job.id


WIDE_RUNG_TRIALS = 30
WIDE_RUNG_KEPT = 15


def seed_wide_rung_job(store: Store) -> int:
    """A job whose one rung (epoch 1) judged 30 trials and kept the best 15: too many to list."""
    spec = JobSpec.model_validate(
        {
            "name": "digits: a wide rung",
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": list(POLICIES),
            "budget": {"epochs": 3, "trials_per_policy": WIDE_RUNG_TRIALS // len(POLICIES)},
            "early_stopping": {"kind": "asha", "grace_epochs": 1, "reduction_factor": 2},
        }
    )
    job, _ = store.create_job(spec=spec)
    store.claim_next_job(worker_id="test-worker", lease_seconds=600)
    for k in range(WIDE_RUNG_TRIALS):
        policy = POLICIES[k % len(POLICIES)]
        trial = store.create_trial(
            job_id=job.id,
            policy=policy,
            schedule={"policy": "fixed", "lr": 0.01 * (k + 1)},
            search_config={"lr": 0.01 * (k + 1)},
            seed=k,
            ray_trial_id=f"wide-{k}",
        )
        store.update_trial_status(trial_id=trial.id, status="running")
        accuracy = 0.9 - 0.01 * k  # trial k is judged k-th best
        metric = TrialMetric(
            epoch=1,
            step=30,
            lr=0.01 * (k + 1),
            train_loss=1.0,
            val_loss=1.1,
            metrics={"val_accuracy": accuracy},
            elapsed_s=0.4,
        )
        kept = k < WIDE_RUNG_KEPT
        decision: RungDecision = "continue" if kept else "stop"
        store.record_trial_results(trial_id=trial.id, results=[metric])
        store.record_trial_probes(
            trial_id=trial.id,
            probes=[cooldown_probe(1, accuracy, 1.1, gain=0.05, decision=decision)],
        )
        store.update_trial_status(trial_id=trial.id, status="completed" if kept else "pruned")
    store.mark_job_succeeded(job_id=job.id)
    return job.id


SWEEP_HORIZONS = (2, 4, 6)
SWEEP_RATES = (0.05, 0.2)


def sweep_accuracy(lr: float, epochs: int) -> float:
    """What a horizon reaches: more with length, the lower rate ahead at the longest."""
    return 0.7 + 0.03 * epochs + (0.05 if lr == SWEEP_RATES[0] and epochs == 6 else 0.0)


def seed_sweep_job(store: Store) -> int:
    """A succeeded training-length sweep: two wsd trunks (rates), each cooled down to every
    horizon, one trial per horizon as the worker records them."""
    spec = JobSpec.model_validate(
        {
            "name": "digits: how long to train",
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "metric": {"name": "val_accuracy", "mode": "max"},
            "policies": ["wsd"],
            "horizons": list(SWEEP_HORIZONS),
            "budget": {"trials_per_policy": len(SWEEP_RATES)},
        }
    )
    job, _ = store.create_job(spec=spec)
    store.claim_next_job(worker_id="test-worker", lease_seconds=600)
    for k, lr in enumerate(SWEEP_RATES):
        for epochs in SWEEP_HORIZONS:
            trunk = epochs == SWEEP_HORIZONS[-1]
            key = f"wsd-{k}" if trunk else f"wsd-{k}-h{epochs}"
            point: dict[str, Any] = {"lr": lr, "horizon_epochs": epochs, "trunk": f"wsd-{k}"}
            if not trunk:
                point["fork_step"] = epochs * 30 - 6
            trial = store.create_trial(
                job_id=job.id,
                policy="wsd",
                schedule={"policy": "wsd", "lr": lr, "total_steps": epochs * 30, "decay_frac": 0.2},
                search_config=point,
                seed=k,
                ray_trial_id=key,
            )
            rows = [
                TrialMetric(
                    epoch=epoch,
                    step=epoch * 30,
                    lr=lr,
                    train_loss=1.0 / epoch,
                    val_loss=1.1 / epoch,
                    metrics={"val_accuracy": sweep_accuracy(lr, epoch)},
                    elapsed_s=0.4 * epoch,
                )
                for epoch in range(1, epochs + 1)
            ]
            store.record_trial_results(trial_id=trial.id, results=rows)
            store.update_trial_status(trial_id=trial.id, status="completed")
    store.mark_job_succeeded(job_id=job.id)
    return job.id


class Seeded(NamedTuple):
    database_url: str
    job_id: int
    wide_rung_job_id: int
    sweep_job_id: int
    best_not_final_job_id: int


@pytest.fixture(scope="module")
def seeded(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """The finished jobs, written before the service starts (and before any other job is
    queued: the store claims the oldest)."""
    database = tmp_path_factory.mktemp("dashboard") / "lrtune.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    store = Store.from_url(url)
    try:
        finished, wide, sweep = (
            seed_finished_job(store),
            seed_wide_rung_job(store),
            seed_sweep_job(store),
        )
        best_not_final, _ = seed_best_epoch_not_final(JobSeeder(store))
        store.mark_job_succeeded(job_id=best_not_final)
        return Seeded(url, finished, wide, sweep, best_not_final)
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def service(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    home = tmp_path_factory.mktemp("dashboard-home")
    with LiveService(Settings(database_url=seeded.database_url, home=home)) as live:
        yield live.url, seeded.job_id


@pytest.fixture(scope="module")
def wide_rung_job(seeded: Seeded) -> int:
    return seeded.wide_rung_job_id


def trial_ids(url: str, job_id: int) -> dict[tuple[str, int], int]:
    """(policy, seed) -> trial id, from the API."""
    page = httpx.get(f"{url}/v1/jobs/{job_id}/trials", params={"limit": 100}).json()
    return {(t["policy"], t["seed"]): t["id"] for t in page["items"]}


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
        winner = body["winner"]
        winner_line = recommendation.get_by_test_id("winner").inner_text()
        assert winner["policy"] in winner_line
        assert mean_and_spread(winner["metric_mean"], winner["metric_std"]) in winner_line
        assert recommendation.get_by_test_id("rationale").inner_text() == body["rationale"]
        assert recommendation.get_by_test_id("code").inner_text().strip() == (
            body["code"]["pytorch"].strip()
        )
        # One tab per format: each shows its own code, and says when it is not exact.
        for name in ("keras", "huggingface", "pytorch"):
            recommendation.get_by_test_id(f"code-tab-{name}").click()
            tab = recommendation.get_by_test_id(f"code-tab-{name}")
            assert tab.get_attribute("aria-selected") == "true"
            shown = recommendation.get_by_test_id("code").inner_text().strip()
            assert shown == body["code"][name].strip()
            inexact = recommendation.get_by_test_id("code-inexact")
            assert inexact.is_visible() == (not body["exact"][name])
    else:
        assert answer.status_code == 404
        assert "not available" in recommendation.inner_text()
    if httpx.get(f"{url}/v1/jobs/{job_id}/range-test").status_code == 404:
        assert "not available yet" in page.get_by_test_id("range-test").inner_text()
    # Finished jobs have no cancel button; the trials table pages through the trials.
    assert page.get_by_test_id("cancel").count() == 0
    assert page.get_by_test_id("trials").locator("tbody tr").count() == 12
    screenshot(page, tmp_path, "job-page")


def test_a_format_that_is_not_exact_says_so_on_its_tab(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, job_id = service
    body = httpx.get(f"{url}/v1/jobs/{job_id}/recommendation").json()
    # As a job with discriminative multipliers answers: Keras cannot give them.
    body["exact"]["keras"] = False
    page.route(
        f"**/v1/jobs/{job_id}/recommendation",
        lambda route: route.fulfill(json=body),
    )
    page.goto(f"{url}/#/jobs/{job_id}")
    recommendation = page.get_by_test_id("recommendation")
    recommendation.get_by_test_id("code-tab-keras").click()
    assert recommendation.get_by_test_id("code-inexact").is_visible()
    screenshot(page, tmp_path, "recommendation-keras-not-exact")
    recommendation.get_by_test_id("code-tab-huggingface").click()
    assert not recommendation.get_by_test_id("code-inexact").is_visible()


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


def test_the_dashboards_own_paths_open_their_pages(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, job_id = service
    page.goto(f"{url}/jobs/{job_id}")  # a link pasted without its `#`
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    assert page.url == f"{url}/#/jobs/{job_id}"
    rows = page.get_by_test_id("trials").locator("tbody tr")
    rows.nth(11).wait_for()  # the trials table loads its page after the rest is drawn
    assert rows.count() == 12
    screenshot(page, tmp_path, "job-page-deep-link")
    best = httpx.get(f"{url}/v1/jobs/{job_id}").json()["best"]
    page.goto(f"{url}/trials/{best['trial_id']}")
    page.get_by_test_id("metrics-table").wait_for()
    page.goto(f"{url}/new")
    page.get_by_test_id("new-job-form").wait_for()
    assert page.url == f"{url}/#/new"


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
    assert '"sgdr"' in spec and '"execution"' not in spec  # auto, the default, goes unsaid
    page.locator("select[name=execution]").select_option("population")
    assert '"execution": "population"' in page.get_by_test_id("spec-preview").inner_text()
    screenshot(page, tmp_path, "new-job-form")
    page.get_by_test_id("submit").click()
    page.wait_for_url("**/#/jobs/*")
    job_id = int(page.url.rsplit("/", 1)[1])
    job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
    assert job["name"] == "from the form"
    assert job["status"] == "queued"
    assert job["spec"]["execution"] == "population"
    assert [p["policy"] for p in job["spec"]["policies"]] == [
        "fixed",
        "cosine",
        "clr",
        "sgdr",
        "one_cycle",
    ]
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    assert page.get_by_test_id("cancel").count() == 1  # a queued job can be cancelled


def test_new_job_form_offers_the_new_policies_from_the_catalogue(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, _ = service
    page.goto(f"{url}/#/new")
    page.get_by_test_id("new-job-form").wait_for()
    for policy in ("wsd", "inverse_sqrt", "rex", "plateau"):
        page.locator(f"input[data-policy={policy}]").check()
        page.get_by_test_id(f"preview-{policy}").locator("canvas").wait_for()
    # plateau's card says why its preview is flat: the rate follows the job's metric.
    card = page.locator(".policy-card", has=page.get_by_test_id("preview-plateau"))
    assert "follows the job's metric" in card.locator(".preview-msg").inner_text()
    screenshot(page, tmp_path, "new-job-new-policies")
    page.get_by_test_id("submit").click()
    page.wait_for_url("**/#/jobs/*")
    job = httpx.get(f"{url}/v1/jobs/{int(page.url.rsplit('/', 1)[1])}").json()
    assert {"wsd", "inverse_sqrt", "rex", "plateau"} <= {
        p["policy"] for p in job["spec"]["policies"]
    }


def test_new_job_form_compares_the_schedules_with_a_schedule_free_fixed_arm(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, _ = service
    page.goto(f"{url}/#/new")
    page.get_by_test_id("new-job-form").wait_for()
    for policy in ("cosine", "clr", "one_cycle"):
        page.locator(f"input[data-policy={policy}]").uncheck()
    for policy in ("wsd", "inverse_sqrt", "plateau"):
        page.locator(f"input[data-policy={policy}]").check()
    # A schedule-free job optimizer would run the scheduled policies too: refused, with why.
    page.locator("select[name=optimizer]").select_option("adamw_schedulefree")
    page.get_by_test_id("submit").click()
    error = page.get_by_test_id("submit-result").get_by_test_id("error")
    error.wait_for()
    assert "optimizer.name" in error.inner_text()
    assert "fixed policy (plus warmup) only" in error.inner_text()
    # The fixed card's own optimizer is the comparison the job asks for.
    page.locator("select[name=optimizer]").select_option("adamw")
    page.locator("select[data-arm-optimizer=fixed]").select_option("adamw_schedulefree")
    assert '"adamw_schedulefree"' in page.get_by_test_id("spec-preview").inner_text()
    screenshot(page, tmp_path, "new-job-schedule-free-arm")
    page.get_by_test_id("submit").click()
    page.wait_for_url("**/#/jobs/*")
    spec = httpx.get(f"{url}/v1/jobs/{int(page.url.rsplit('/', 1)[1])}").json()["spec"]
    assert spec["optimizer"]["name"] == "adamw"
    assert {p["policy"]: (p["optimizer"] or {}).get("name") for p in spec["policies"]} == {
        "fixed": "adamw_schedulefree",
        "wsd": None,
        "inverse_sqrt": None,
        "plateau": None,
    }


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


def test_trial_page_draws_the_cooldown_probes_of_a_pruned_trial(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, job_id = service
    trial_id = trial_ids(url, job_id)[PRUNED]
    probes = httpx.get(f"{url}/v1/trials/{trial_id}/probes").json()
    assert [p["decision"] for p in probes] == ["continue", "stop"]
    page.goto(f"{url}/#/trials/{trial_id}")
    page.get_by_test_id("probes-table").wait_for()
    # The probes are a second series on the metric chart, with their own legend entry.
    chart = page.get_by_test_id("trial-metric-chart")
    assert chart.get_attribute("data-series") == "2"
    assert chart.get_attribute("data-probes") == "2"
    assert chart.locator("canvas").count() == 1
    assert "cooldown probe" in page.get_by_test_id("trial-metric-legend").inner_text()
    rows = page.get_by_test_id("probes-table").locator("tbody tr")
    assert rows.count() == len(RUNG_EPOCHS)
    last = rows.nth(1)
    assert last.get_attribute("class") == "stopped-on"
    assert last.get_by_test_id("decision").inner_text() == "stop"
    assert rows.nth(0).get_by_test_id("decision").inner_text() == "continue"
    reached = probes[-1]["metrics"]["val_accuracy"]
    assert last.locator("td").nth(2).inner_text() == f"{reached:.4g}"
    note = page.get_by_test_id("pruned-note").inner_text()
    assert note.startswith(f"pruned at epoch {RUNG_EPOCHS[-1]}; annealed there it reached")
    assert f"{reached:.4g}" in note
    assert page.get_by_test_id("restored").inner_text() == (
        f" · resumed from its epoch {RESTORED_FROM_EPOCH} checkpoint"
    )
    screenshot(page, tmp_path, "trial-page-probes")
    page.get_by_test_id("trial-metric-chart").screenshot(path=str(tmp_path / "probe-chart.png"))


def test_trial_page_without_probes_has_no_probe_section(
    page: Any, service: tuple[str, int]
) -> None:
    url, job_id = service
    trial_id = trial_ids(url, job_id)[("cosine", 2)]
    assert httpx.get(f"{url}/v1/trials/{trial_id}/probes").json() == []
    page.goto(f"{url}/#/trials/{trial_id}")
    page.get_by_test_id("metrics-table").wait_for()
    page.get_by_test_id("trial-metric-chart").locator("canvas").wait_for()
    assert page.get_by_test_id("trial-metric-chart").get_attribute("data-series") == "1"
    for absent in ("probes", "probes-table", "trial-metric-legend", "pruned-note", "restored"):
        assert page.get_by_test_id(absent).count() == 0
    assert "cooldown" not in page.locator("#view").inner_text()


def test_job_page_shows_each_rungs_decisions(
    page: Any, service: tuple[str, int], tmp_path: Path
) -> None:
    url, job_id = service
    ids = trial_ids(url, job_id)
    page.goto(f"{url}/#/jobs/{job_id}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    card = page.get_by_test_id("rungs")
    assert card.is_visible()
    for epoch in RUNG_EPOCHS:
        rung = card.get_by_test_id(f"rung-{epoch}")
        rows = rung.locator("tbody tr[data-trial-id]")
        assert rows.count() == len(PROBED)
        # Best judged first: clr's probe gains the most from annealing.
        assert rows.nth(0).get_attribute("data-trial-id") == str(ids[("clr", 0)])
        decisions = {
            int(rows.nth(i).get_attribute("data-trial-id")): rows.nth(i)
            .get_by_test_id("decision")
            .inner_text()
            for i in range(rows.count())
        }
        pruned_here = epoch == RUNG_EPOCHS[-1]
        assert decisions.pop(ids[PRUNED]) == ("stop" if pruned_here else "continue")
        assert set(decisions.values()) == {"continue"}
        assert rung.get_by_test_id("cut").count() == (1 if pruned_here else 0)
        assert rung.locator("a[href^='#/trials/']").count() == len(PROBED)
    # Six rows a rung: nothing is folded away.
    assert card.get_by_test_id("rungs-toggle").count() == 0
    screenshot(page, tmp_path, "job-page-rungs")
    card.screenshot(path=str(tmp_path / "rungs-card.png"))
    # A trial's link leads to its probes; one kept at every rung has no pruned note.
    last_rung = card.get_by_test_id(f"rung-{RUNG_EPOCHS[-1]}")
    last_rung.locator("tbody tr[data-trial-id] a").first.click()
    page.wait_for_url(f"**/#/trials/{ids[('clr', 0)]}")
    page.get_by_test_id("probes-table").wait_for()
    assert page.get_by_test_id("probes-table").locator("tbody tr").count() == len(RUNG_EPOCHS)
    assert page.get_by_test_id("pruned-note").count() == 0
    assert page.locator("tr.stopped-on").count() == 0
    chart = page.get_by_test_id("trial-metric-chart")
    chart.screenshot(path=str(tmp_path / "kept-probe-chart.png"))


def test_job_page_folds_a_wide_rung_to_its_top_and_its_cut(
    page: Any, service: tuple[str, int], wide_rung_job: int, tmp_path: Path
) -> None:
    url, _ = service
    page.goto(f"{url}/#/jobs/{wide_rung_job}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    rung = page.get_by_test_id("rung-1")
    rows = rung.locator("tbody tr[data-trial-id]")
    # The top ten, then the last kept and the first pruned on either side of the cut.
    assert rows.count() == 12
    ranks = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert ranks == [str(r) for r in [*range(1, 11), WIDE_RUNG_KEPT, WIDE_RUNG_KEPT + 1]]
    gaps = rung.locator("tr.gap")
    assert [gaps.nth(i).inner_text() for i in range(gaps.count())] == [
        f"⋯ {WIDE_RUNG_KEPT - 11} more",
        f"⋯ {WIDE_RUNG_TRIALS - WIDE_RUNG_KEPT - 1} more",
    ]
    assert f"{WIDE_RUNG_KEPT} above continue" in rung.get_by_test_id("cut").inner_text()
    assert f"{WIDE_RUNG_KEPT} of {WIDE_RUNG_TRIALS} continue" in rung.inner_text()
    page.get_by_test_id("rungs").screenshot(path=str(tmp_path / "wide-rung-folded.png"))
    page.get_by_test_id("rungs-toggle").click()
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=rung-1] tbody tr[data-trial-id]').length === 30"
    )
    assert rung.locator("tr.gap").count() == 0
    assert page.get_by_test_id("rungs-toggle").inner_text() == "show fewer"
    screenshot(page, tmp_path, "wide-rung-all")


def test_trial_page_draws_the_snapshot_ensemble_beside_the_metric(
    page: Any, sqlite_template: Path, tmp_path: Path
) -> None:
    """A job with snapshots ranked by its ensemble: the trial's chart has the single model's
    metric beside it, from the first cycle end (epoch 2 here) on."""
    database = tmp_path / "lrtune.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    store = Store.from_url(url)
    spec = JobSpec.model_validate(
        {
            "name": "digits: snapshot ensemble",
            "workload": {"name": "digits", "params": {"model": "mlp"}},
            "snapshots": 3,
            "metric": {"name": "ensemble_val_accuracy"},
            "policies": ["sgdr"],
            "budget": {"epochs": 4, "trials_per_policy": 1},
        }
    )
    job, _ = store.create_job(spec=spec)
    store.claim_next_job(worker_id="test-worker", lease_seconds=600)
    trial = store.create_trial(
        job_id=job.id,
        policy="sgdr",
        schedule={"policy": "sgdr", "eta_max": 0.1, "t_0": 40, "t_mult": 1},
        search_config={"eta_max": 0.1},
        seed=0,
        ray_trial_id="snapshots-0",
    )
    store.update_trial_status(trial_id=trial.id, status="running")
    rows = [
        TrialMetric(
            epoch=epoch,
            step=30 * epoch,
            lr=0.05,
            train_loss=1.0 / epoch,
            val_loss=1.1 / epoch,
            metrics={
                "val_accuracy": 0.8 + 0.02 * epoch,
                **({"ensemble_val_accuracy": 0.83 + 0.02 * epoch} if epoch >= 2 else {}),
            },
            elapsed_s=0.4 * epoch,
        )
        for epoch in range(1, 5)
    ]
    store.record_trial_results(trial_id=trial.id, results=rows)
    store.update_trial_status(trial_id=trial.id, status="completed")
    store.mark_job_succeeded(job_id=job.id)
    store.dispose()
    with LiveService(Settings(database_url=url, home=tmp_path / "home")) as live:
        page.goto(f"{live.url}/#/trials/{trial.id}")
        chart = page.get_by_test_id("trial-metric-chart")
        chart.locator("canvas").wait_for()
        assert chart.get_attribute("data-series") == "2"
        legend = page.get_by_test_id("trial-metric-legend").inner_text()
        assert "ensemble_val_accuracy" in legend and "cooldown" not in legend
        assert legend.replace("ensemble_val_accuracy", "").count("val_accuracy") == 1
        assert "null" not in page.locator("#view").inner_text()  # no probe card, no stray text
        screenshot(page, tmp_path, "trial-page-snapshot-ensemble")


def test_job_page_of_a_sweep_draws_the_metric_against_training_length(
    page: Any, service: tuple[str, int], seeded: Seeded, tmp_path: Path
) -> None:
    url, _ = service
    page.goto(f"{url}/#/jobs/{seeded.sweep_job_id}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    card = page.get_by_test_id("sweep")
    chart = card.get_by_test_id("sweep-chart")
    chart.locator("canvas").wait_for()
    # A line per trunk, and the best at each length.
    assert chart.get_attribute("data-series") == str(len(SWEEP_RATES) + 1)
    assert "2 wsd trunks, each cooled down to 3 lengths" in card.inner_text()
    rows = card.get_by_test_id("sweep-row")
    assert rows.count() == len(SWEEP_HORIZONS)
    for i, epochs in enumerate(SWEEP_HORIZONS):
        best = max(sweep_accuracy(lr, epochs) for lr in SWEEP_RATES)
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[0] == str(epochs) and cells[1] == f"{best:.4f}", cells
    # The lower rate wins only at the longest length.
    assert rows.nth(2).locator("td").nth(3).inner_text() == "0.0500"
    assert rows.nth(0).locator("td").nth(3).inner_text() == "0.200"
    screenshot(page, tmp_path, "sweep-job-page")


def test_a_job_without_horizons_has_no_sweep_card(page: Any, service: tuple[str, int]) -> None:
    url, job_id = service
    page.goto(f"{url}/#/jobs/{job_id}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    assert not page.get_by_test_id("sweep").is_visible()


@pytest.mark.parametrize(("mean", "std"), [(0.977, 0.001283), (0.91234, 0.0213), (123.4, 12.3)])
def test_the_dashboard_shows_a_mean_to_its_spreads_precision_as_the_cli_does(
    page: Any, service: tuple[str, int], mean: float, std: float
) -> None:
    url, _ = service
    page.goto(url)
    shown = page.evaluate(
        "async ([mean, std]) => (await import('/static/ui.js')).fmtMeanStd(mean, std)",
        [mean, std],
    )
    assert shown == mean_and_spread(mean, std)


class AuthService(NamedTuple):
    """A service with LRTUNE_AUTH=on, tokens of tenant "lab" and two of its jobs."""

    url: str
    tokens: dict[str, str]  # by label: viewer (scope read), alice and bob (scope submit)
    token_ids: dict[str, int]
    queued_job_id: int  # submitted by alice
    cancelled_job_id: int  # submitted by alice, cancelled by bob


@pytest.fixture(scope="module")
def auth_service(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthService]:
    database = tmp_path_factory.mktemp("dashboard-auth") / "lrtune.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    store = Store.from_url(url)
    try:
        made = {
            label: store.create_token(tenant="lab", label=label, scope=scope)
            for label, scope in (("viewer", "read"), ("alice", "submit"), ("bob", "submit"))
        }
    finally:
        store.dispose()
    tokens = {label: token for label, (_, token) in made.items()}
    settings = Settings(
        database_url=url, home=tmp_path_factory.mktemp("dashboard-auth-home"), auth=True
    )
    spec = {
        "name": "digits: who",
        "workload": {"name": "digits"},
        "policies": ["fixed"],
        "budget": {"epochs": 2, "trials_per_policy": 1},
    }
    with LiveService(settings) as live:

        def as_(label: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[label]}"}

        queued, cancelled = (
            httpx.post(f"{live.url}/v1/jobs", json=spec, headers=as_("alice")).json()["id"]
            for _ in range(2)
        )
        answer = httpx.post(f"{live.url}/v1/jobs/{cancelled}/cancel", headers=as_("bob"))
        assert answer.status_code == 202, answer.text
        yield AuthService(
            live.url,
            tokens,
            {label: record.id for label, (record, _) in made.items()},
            queued,
            cancelled,
        )


def use_token(page: Any, token: str) -> None:
    """The dashboard's stored token, as if typed at its prompt: set before the page's scripts
    run, unless the test has set another since."""
    page.add_init_script(
        f"if (!localStorage.getItem('lrtune.token')) localStorage.setItem('lrtune.token', "
        f"{token!r})"
    )


def test_a_read_only_token_gets_no_new_job_form_and_no_cancel_button(
    page: Any, auth_service: AuthService, tmp_path: Path
) -> None:
    url = auth_service.url
    use_token(page, auth_service.tokens["viewer"])
    page.goto(f"{url}/#/jobs/{auth_service.queued_job_id}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    assert page.get_by_test_id("status").first.inner_text() == "queued"
    assert page.get_by_test_id("cancel").count() == 0
    screenshot(page, tmp_path, "read-only-job-page")
    page.goto(f"{url}/#/new")
    page.get_by_test_id("read-only").wait_for()
    assert "scope is read" in page.get_by_test_id("read-only").inner_text()
    assert page.get_by_test_id("new-job-form").count() == 0
    screenshot(page, tmp_path, "read-only-new-job")
    page.goto(f"{url}/#/jobs")
    page.locator(f"[data-job-id='{auth_service.queued_job_id}']").wait_for()
    assert page.get_by_test_id("new-job").count() == 0

    # The same pages with a token of scope submit: the button and the form are there.
    page.evaluate(f"localStorage.setItem('lrtune.token', {auth_service.tokens['alice']!r})")
    page.reload()
    page.get_by_test_id("new-job").wait_for()
    page.goto(f"{url}/#/jobs/{auth_service.queued_job_id}")
    page.get_by_test_id("cancel").wait_for()
    page.goto(f"{url}/#/new")
    page.get_by_test_id("new-job-form").wait_for()


def test_the_job_page_names_the_tokens_that_submitted_and_cancelled_the_job(
    page: Any, auth_service: AuthService, tmp_path: Path
) -> None:
    ids = auth_service.token_ids
    use_token(page, auth_service.tokens["viewer"])
    page.goto(f"{auth_service.url}/#/jobs/{auth_service.cancelled_job_id}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    assert page.get_by_test_id("submitted-by").inner_text() == (
        f"submitted by alice (token #{ids['alice']})"
    )
    assert page.get_by_test_id("cancelled-by").inner_text() == (
        f"cancelled by bob (token #{ids['bob']})"
    )
    screenshot(page, tmp_path, "job-page-tokens")
    # A job nobody cancelled names its submitter alone (its head, not the last page's).
    queued = auth_service.queued_job_id
    page.goto(f"{auth_service.url}/#/jobs/{queued}")
    page.locator(".pagehead .meta", has_text=f"#{queued} ·").wait_for()
    assert page.get_by_test_id("submitted-by").inner_text().startswith("submitted by alice")
    assert page.get_by_test_id("cancelled-by").count() == 0


def test_the_job_page_and_the_jobs_list_show_the_recommendations_leader_as_best(
    page: Any, service: tuple[str, int], seeded: Seeded, tmp_path: Path
) -> None:
    """sgdr's best epoch (0.8378) is not its last (0.70): the best so far is exponential's mean
    over its two seeds, the recommendation's winner, to the spread's precision."""
    url, _ = service
    job_id = seeded.best_not_final_job_id
    winner = httpx.get(f"{url}/v1/jobs/{job_id}/recommendation").json()["winner"]
    shown = mean_and_spread(winner["metric_mean"], winner["metric_std"])
    assert (winner["policy"], shown) == ("exponential", "0.770 ± 0.014")
    page.goto(f"{url}/#/jobs/{job_id}")
    page.wait_for_function("document.body.dataset.jobPage === 'drawn'")
    best = page.get_by_test_id("best")
    assert page.get_by_test_id("best-value").inner_text() == shown
    assert "exponential" in best.inner_text() and "sgdr" not in best.inner_text()
    winner_line = page.get_by_test_id("recommendation").get_by_test_id("winner").inner_text()
    assert "exponential" in winner_line and shown in winner_line
    screenshot(page, tmp_path, "job-page-best-is-the-leader")
    page.goto(f"{url}/#/jobs")
    row = page.locator(f"[data-job-id='{job_id}']")
    row.wait_for()
    listed = row.get_by_test_id("best").inner_text()
    assert shown in listed and "exponential" in listed


def test_a_leader_judged_at_a_rung_says_its_horizon_as_the_cli_does(
    page: Any, service: tuple[str, int]
) -> None:
    url, _ = service
    page.goto(url)
    job = {"best": {"horizon_epochs": 4}, "spec": {"budget": {"epochs": 12}}}
    shown = page.evaluate(
        "async (job) => (await import('/static/ui.js')).bestHorizon(job)",
        job,
    )
    assert shown == " at 4 of 12 epochs"
    job["best"]["horizon_epochs"] = None
    assert (
        page.evaluate("async (job) => (await import('/static/ui.js')).bestHorizon(job)", job) == ""
    )
