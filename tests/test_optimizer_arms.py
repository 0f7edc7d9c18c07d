"""Optimizers as arms: a policy with an optimizer of its own (`policies.N.optimizer`), so that one
job compares schedules with a schedule-free optimizer under the fixed policy. The spec and its
422s, the trial configs the searchers hand out, the recommendation's per-policy code, and a job
through the real worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.trials import OptimizerSpec, TrialConfig
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.service.worker import run_worker
from lrtune.workers.experiment import (
    ConfirmationPick,
    confirmation_configs,
    plan_experiment,
    plan_searcher,
)
from lrtune.workers.recommendation import TrialSummary, build_recommendation
from lrtune.workers.results import sink_registered
from lrtune.workers.trial import run_trial
from ray.tune.search import Searcher

DIGITS_MLP = {"name": "digits", "params": {"model": "mlp", "batch_size": 128}}
SCHEDULE_FREE_ARM = {"policy": "fixed", "optimizer": {"name": "adamw_schedulefree"}}


def job(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "workload": DIGITS_MLP,
        "optimizer": {"name": "adamw"},
        "metric": {"name": "val_accuracy", "mode": "max"},
        "policies": ["wsd", "inverse_sqrt", "plateau", SCHEDULE_FREE_ARM],
        "budget": {"epochs": 3, "trials_per_policy": 2},
    }
    return body | overrides


# --- the spec ---------------------------------------------------------------------------------


def test_a_schedule_free_arm_beside_scheduled_policies_is_a_job(api_client: TestClient) -> None:
    answer = api_client.post("/v1/jobs", json=job())
    assert answer.status_code == 201, answer.text
    spec = JobSpec.model_validate(answer.json()["spec"])
    assert spec.optimizer_for("fixed").name == "adamw_schedulefree"
    assert {spec.optimizer_for(p).name for p in ("wsd", "inverse_sqrt", "plateau")} == {"adamw"}
    # A policy named alone, or without an optimizer, inherits the job's.
    assert spec.policies[0].optimizer is None and spec.policies[3].optimizer is not None


def test_a_schedule_free_optimizer_on_a_scheduled_arm_is_422_at_that_arm(
    api_client: TestClient,
) -> None:
    policies = ["fixed", {"policy": "cosine", "optimizer": {"name": "sgd_schedulefree"}}]
    answer = api_client.post("/v1/jobs", json=job(policies=policies))
    assert answer.status_code == 422, answer.text
    fields = answer.json()["error"]["fields"]
    assert [f["path"] for f in fields] == ["policies.1.optimizer"]
    assert (
        "sgd_schedulefree runs with the fixed policy (plus warmup) only, not ['cosine']"
        in (fields[0]["message"])
    )
    assert "averaging its iterates" in fields[0]["message"]
    assert api_client.get("/v1/jobs").json()["items"] == []


def test_a_schedule_free_job_optimizer_inherited_by_a_scheduled_arm_is_422_at_optimizer_name(
    api_client: TestClient,
) -> None:
    body = job(optimizer={"name": "adamw_schedulefree"}, policies=["fixed", "wsd", "plateau"])
    answer = api_client.post("/v1/jobs", json=body)
    assert answer.status_code == 422, answer.text
    fields = answer.json()["error"]["fields"]
    assert [f["path"] for f in fields] == ["optimizer.name"]
    message = fields[0]["message"]
    assert "adamw_schedulefree runs with the fixed policy (plus warmup) only, not ['wsd', " in (
        message
    )
    assert "give it to the fixed arm" in message  # and how to ask for the comparison instead

    # The scheduled arms may bring an optimizer of their own instead.
    own = [{"policy": p, "optimizer": {"name": "adamw"}} for p in ("wsd", "plateau")]
    accepted = api_client.post("/v1/jobs", json={**body, "policies": ["fixed", *own]})
    assert accepted.status_code == 201, accepted.text
    spec = JobSpec.model_validate(accepted.json()["spec"])
    assert [spec.optimizer_for(p).name for p in ("fixed", "wsd", "plateau")] == [
        "adamw_schedulefree",
        "adamw",
        "adamw",
    ]


def test_an_arm_optimizer_is_validated_as_the_job_one_is(api_client: TestClient) -> None:
    arm = {"policy": "fixed", "optimizer": {"name": "sgd_schedulefree", "momentum": 0.0}}
    answer = api_client.post("/v1/jobs", json=job(policies=["wsd", arm]))
    assert answer.status_code == 422, answer.text
    fields = answer.json()["error"]["fields"]
    assert [f["path"] for f in fields] == ["policies.1.optimizer"]
    assert "needs momentum in (0, 1)" in fields[0]["message"]


# --- the trials' configs ----------------------------------------------------------------------


class _NeverStop:
    def should_stop(self) -> bool:
        return False


def test_every_trial_config_carries_its_arms_optimizer_and_a_trial_config_accepts_it() -> None:
    spec = JobSpec.model_validate(job(confirm={"top_k": 1, "seeds": 2}))
    plan = plan_experiment(spec, job_key="7", storage_path=Path("/unused"), steps_per_epoch=12)
    searcher = plan_searcher(plan)
    configs: list[dict[str, Any]] = []
    with sink_registered("7", _NeverStop()):  # type: ignore[arg-type]  # only should_stop
        while (config := searcher.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
            assert config is not None
            configs.append(config)
    assert len(configs) == 8
    for config in configs:
        optimizer = OptimizerSpec.model_validate(config["optimizer"])
        assert optimizer == spec.optimizer_for(config["policy"])
        # What the trainable builds from the config: the schedule-free arm runs fixed only.
        TrialConfig(
            workload=spec.workload,
            optimizer=optimizer,
            schedule=parse_schedule(config["schedule"]),
            epochs=spec.budget.epochs,
        )
    names = {c["policy"]: c["optimizer"]["name"] for c in configs}
    assert names == {
        "wsd": "adamw",
        "inverse_sqrt": "adamw",
        "plateau": "adamw",
        "fixed": "adamw_schedulefree",
    }

    by_policy = {c["policy"]: c for c in configs}
    picks = [
        ConfirmationPick(policy=p, rank=0, schedule=c["schedule"], point=c["point"])
        for p, c in by_policy.items()
    ]
    confirm = confirmation_configs(plan, picks, seeds=2)
    assert len(confirm) == 8
    assert {c["policy"]: c["optimizer"]["name"] for c in confirm} == names


# --- the recommendation -----------------------------------------------------------------------


def _summaries(policy: str, schedule: dict[str, Any], values: list[float], **kw: Any) -> list[Any]:
    return [
        TrialSummary(
            trial_id=f"{policy}-{seed}",
            policy=policy,
            schedule=parse_schedule(schedule),
            seed=seed,
            metric_values=[v - 0.1, v + 0.01 * seed],
            **kw,
        )
        for seed, v in enumerate(values)
    ]


def test_each_policys_code_builds_the_optimizer_its_arm_trained_with() -> None:
    free = OptimizerSpec(name="adamw_schedulefree")
    trials = [
        *_summaries(
            "fixed", {"policy": "fixed", "lr": 0.01, "warmup_steps": 20}, [0.9, 0.9], optimizer=free
        ),
        *_summaries("wsd", {"policy": "wsd", "lr": 0.003, "total_steps": 100}, [0.95, 0.95]),
    ]
    recommendation = build_recommendation(
        job_id="1",
        trials=trials,
        metric="val_accuracy",
        mode="max",
        final=True,
        optimizer=OptimizerSpec(name="adamw"),
    )
    by_policy = {e.policy: e for e in recommendation.by_policy}
    assert by_policy["fixed"].optimizer == free
    assert by_policy["wsd"].optimizer == OptimizerSpec(name="adamw")
    assert "optimizer = schedulefree.AdamWScheduleFree(" in by_policy["fixed"].code["pytorch"]
    assert "def lrtune_eval(" in by_policy["fixed"].code["pytorch"]
    assert "schedulefree" not in by_policy["wsd"].code["pytorch"]
    assert recommendation.winner is not None and recommendation.winner.policy == "wsd"
    assert recommendation.code == by_policy["wsd"].code
    assert recommendation.exact == by_policy["wsd"].exact
    # Keras has no schedule-free optimizer: the fixed arm's Keras code says so, the wsd's is exact.
    assert by_policy["fixed"].exact["keras"] is False and by_policy["wsd"].exact["pytorch"]
    # The rationale names each arm with its optimizer, so the answer reads as the question.
    assert recommendation.rationale.startswith("wsd (adamw) has the best mean val_accuracy")
    assert "beats fixed (adamw_schedulefree) (90.5%)" in recommendation.rationale

    # With one optimizer throughout, names stay as they were.
    plain = build_recommendation(
        job_id="1",
        trials=[*_summaries("wsd", {"policy": "wsd", "lr": 0.003, "total_steps": 100}, [0.9])],
        metric="val_accuracy",
        mode="max",
        final=True,
        optimizer=OptimizerSpec(name="adamw"),
    )
    assert plain.rationale.startswith("wsd has the best mean")


# --- a job through the real worker ------------------------------------------------------------


@pytest.mark.ray
def test_a_job_comparing_schedules_with_schedule_free_runs_to_its_recommendation(
    ray_local: str, settings: Settings, store: Store, api_client: TestClient
) -> None:
    """The issue's job: wsd, inverse_sqrt and plateau under adamw against adamw_schedulefree
    under the fixed policy with a warmup, on digits; each arm's trials train with its own
    optimizer, and the recommendation's code for each policy builds that one."""
    body = job(
        policies=[
            {"policy": "wsd", "search": {"lr": 0.003}},
            {"policy": "inverse_sqrt", "search": {"lr": 0.003}},
            {"policy": "plateau", "search": {"lr": 0.003}},
            {**SCHEDULE_FREE_ARM, "search": {"lr": 0.01, "warmup_steps": 10}},
        ],
        budget={"epochs": 3, "trials_per_policy": 1, "max_concurrent_trials": 2},
    )
    created = api_client.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    run_worker(settings, once=True, store=store)
    finished = store.get_job(job_id)
    assert finished.status == "succeeded", finished.error

    trials = {t.policy: t for t in store.list_trials(job_id=job_id, limit=10).items}
    assert set(trials) == {"wsd", "inverse_sqrt", "plateau", "fixed"}
    assert {t.status for t in trials.values()} == {"completed"}
    # The fixed arm trained with adamw_schedulefree: its epochs are a local run of that config
    # (same seed, same CPU arithmetic), and not what adamw gives.
    fixed = trials["fixed"]
    stored = [m.val_loss for m in store.list_trial_metrics(trial_id=fixed.id)]

    def local(optimizer: str) -> list[float]:
        config = TrialConfig(
            workload=DIGITS_MLP,
            optimizer={"name": optimizer},
            schedule=parse_schedule(fixed.schedule),
            epochs=3,
            seed=fixed.seed,
            shuffle_seed=fixed.search_config["shuffle_seed"],  # the job's data order
            metric="val_accuracy",
            mode="max",
        )
        rows: list[float] = []
        run_trial(config, lambda result: rows.append(result.val_loss))
        return rows

    assert stored == pytest.approx(local("adamw_schedulefree"), rel=1e-4)
    assert stored != pytest.approx(local("adamw"), rel=1e-2)

    answer = api_client.get(f"/v1/jobs/{job_id}/recommendation")
    assert answer.status_code == 200, answer.text
    recommendation = answer.json()
    assert recommendation["final"] is True
    by_policy = {e["policy"]: e for e in recommendation["by_policy"]}
    assert set(by_policy) == set(trials)
    for policy, evidence in by_policy.items():
        code = evidence["code"]["pytorch"]
        if policy == "fixed":
            assert evidence["optimizer"]["name"] == "adamw_schedulefree"
            assert "optimizer = schedulefree.AdamWScheduleFree(" in code
        else:
            assert evidence["optimizer"]["name"] == "adamw"
            assert "schedulefree" not in code
    winner = recommendation["winner"]
    assert recommendation["code"] == by_policy[winner["policy"]]["code"]
    assert recommendation["exact"] == by_policy[winner["policy"]]["exact"]

    best = {b["policy"]: b for b in api_client.get("/v1/best").json()}
    assert {p: b["optimizer"]["name"] for p, b in best.items()} == {
        "wsd": "adamw",
        "inverse_sqrt": "adamw",
        "plateau": "adamw",
        "fixed": "adamw_schedulefree",
    }
