"""Job spec -> experiment plan, without a Ray cluster: search spaces, seeds, equal budgets."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lrtune.schemas.jobs import JobSpec, LrBounds, PolicySearch
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.search import Choice, IntRange, LogUniform, Uniform
from lrtune.service.store import Store
from lrtune.service.worker import StoreSink
from lrtune.workers.experiment import (
    EqualBudgetSearcher,
    SearchThenConfirm,
    confirmation_seed,
    grid_points,
    job_searcher,
    plan_experiment,
    plan_searcher,
    policy_space,
    quasi_random_point,
    search_shuffle_seed,
    to_tune_domain,
    trial_seed,
)
from lrtune.workers.recommendation import TrialSummary
from lrtune.workers.results import RecordResults, sink_registered
from ray.tune.search import Searcher


class _NeverStop:
    """A sink that only answers should_stop (the searcher asks nothing else)."""

    def __init__(self) -> None:
        self.stop = False

    def should_stop(self) -> bool:
        return self.stop


def _spec(**overrides: Any) -> JobSpec:
    data: dict[str, Any] = {
        "workload": {"name": "digits"},
        "policies": ["fixed", "exponential", "clr", "sgdr"],
        "budget": {"epochs": 3, "trials_per_policy": 3, "max_concurrent_trials": 2},
        "search": {"algorithm": "random", "seed": 7},
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def _searcher(spec: JobSpec, *, job_key: str = "1") -> EqualBudgetSearcher:
    plan = plan_experiment(spec, job_key=job_key, storage_path=Path("/unused"), steps_per_epoch=22)
    return plan_searcher(plan)


def _drain(searcher: Searcher, sink: object, *, job_key: str = "1") -> list[Any]:
    configs: list[Any] = []
    with sink_registered(job_key, sink):
        for n in range(1000):
            config = searcher.suggest(f"t{n}")
            if config == Searcher.FINISHED:
                return configs
            configs.append(config)
    raise AssertionError("the searcher never finished")


def test_job_space_overrides_the_default_field_by_field() -> None:
    entry = PolicySearch(policy="clr", search={"max_lr": 0.5, "step_size_epochs": 2})
    space = policy_space(entry)
    assert space.fixed["max_lr"] == 0.5
    # step_size_epochs replaces the default's step_size_frac; the rest of the default stays.
    assert "step_size_frac" not in space.domains and space.fixed["step_size_epochs"] == 2
    assert set(space.domains) == {"base_lr", "mode", "gamma"}


def test_explicit_lr_bounds_recentre_the_default_rates() -> None:
    # The same derivation as lr_bounds "auto" (derive_search_spaces), min/max as the bounds.
    space = policy_space(PolicySearch(policy="clr"), lr_bounds=LrBounds(min=0.01, max=0.3))
    assert space.domains["max_lr"] == LogUniform(loguniform=(0.15, 0.3))
    low, high = space.domains["base_lr"].loguniform  # type: ignore[union-attr]
    assert (low, high) == (0.01, pytest.approx(0.1))
    fixed = policy_space(PolicySearch(policy="fixed"), lr_bounds=LrBounds(min=0.01, max=0.3))
    assert fixed.domains["lr"].loguniform == (pytest.approx(0.1), 0.3)  # type: ignore[union-attr]
    cosine = policy_space(PolicySearch(policy="cosine"), lr_bounds=LrBounds(min=0.01, max=0.3))
    assert cosine.domains["lr"].loguniform == (pytest.approx(0.1), 0.6)  # type: ignore[union-attr]


def test_tune_domains_keep_int_bounds_inclusive() -> None:
    domain = to_tune_domain(IntRange(int=(2, 4)))
    values = {domain.sample(random_state=seed) for seed in range(200)}
    assert values == {2, 3, 4}
    choice = to_tune_domain(Choice(choice=[[1, 2], [3]]))
    assert {choice.sample(random_state=seed) for seed in range(50)} == {0, 1}


def test_random_points_depend_only_on_seed_policy_stream_and_index() -> None:
    space = policy_space(PolicySearch(policy="sgdr"))
    first = [quasi_random_point(space, base_seed=3, index=i) for i in range(5)]
    again = [quasi_random_point(space, base_seed=3, index=i) for i in range(5)]
    other = [quasi_random_point(space, base_seed=4, index=i) for i in range(5)]
    fresh = [quasi_random_point(space, base_seed=3, index=i, stream=1) for i in range(5)]
    assert first == again
    assert first != other and first != fresh
    assert quasi_random_point(space, base_seed=3, index=3) == first[3]  # no need to draw 0-2
    for point in first:
        assert 1e-2 <= point["eta_max"] <= 1.0
        assert point["t_0_frac"] in (0.1, 0.25, 0.5)


def test_quasi_random_points_cover_a_range_evenly() -> None:
    """8 Sobol points put one in each eighth of a log range (i.i.d. draws of 8 leave on
    average 2.75 of them empty); choices and int ranges come out whole."""
    space = policy_space(
        PolicySearch(
            policy="step",
            search={
                "lr": {"loguniform": [1e-3, 1.0]},
                "gamma": {"choice": [0.1, 0.5]},
                "step_size_epochs": {"int": [1, 4]},
            },
        )
    )
    for seed in range(5):
        points = [quasi_random_point(space, base_seed=seed, index=i) for i in range(8)]
        eighths = {int((math.log10(p["lr"]) + 3) / 3 * 8) for p in points}
        assert eighths == set(range(8)), seed
        assert {p["gamma"] for p in points} == {0.1, 0.5}
        assert {p["step_size_epochs"] for p in points} == {1, 2, 3, 4}


def test_trial_seeds_are_shared_across_policies_and_differ_by_index() -> None:
    seeds = [trial_seed(0, i) for i in range(10)]
    assert len(set(seeds)) == 10 and all(0 <= s < 2**31 for s in seeds)
    assert trial_seed(0, 3) == trial_seed(0, 3) != trial_seed(1, 3)


def test_grid_covers_choices_and_spreads_continuous_ranges() -> None:
    space = policy_space(
        PolicySearch(policy="step", search={"lr": {"uniform": [0.1, 0.3]}, "gamma": 0.5})
    )
    points = grid_points(space, budget=6)
    assert len(points) == 6
    assert {p["step_size_frac"] for p in points} == {0.25, 0.34, 0.5}
    assert {p["lr"] for p in points} <= {0.1, 0.3}
    assert len({(p["lr"], p["step_size_frac"]) for p in points}) == 6


@pytest.mark.parametrize("algorithm", ["random", "grid", "tpe"])
def test_every_policy_gets_exactly_the_same_budget(algorithm: str) -> None:
    spec = _spec(search={"algorithm": algorithm, "seed": 1})
    configs = _drain(_searcher(spec), _NeverStop())
    per_policy = Counter(c["policy"] for c in configs)
    assert per_policy == dict.fromkeys(["fixed", "exponential", "clr", "sgdr"], 3)
    assert len({c["trial_key"] for c in configs}) == 12
    # Round robin: the first four trials are one of each policy.
    assert {c["policy"] for c in configs[:4]} == set(per_policy)
    for config in configs:
        assert config["schedule_error"] is None
        assert config["schedule"]["policy"] == config["policy"]
        assert config["seed"] == trial_seed(1, config["index"])


def test_durations_in_epochs_are_converted_with_steps_per_epoch() -> None:
    spec = _spec(
        policies=[{"policy": "exponential", "search": {"decay_steps_epochs": 2}}],
        budget={"epochs": 3, "trials_per_policy": 1},
    )
    (config,) = _drain(_searcher(spec), _NeverStop())
    assert config["point"]["decay_steps_epochs"] == 2
    assert config["schedule"]["decay_steps"] == 44  # 2 epochs x 22 steps


def test_an_invalid_point_becomes_a_trial_error_not_a_crash() -> None:
    spec = _spec(
        policies=[{"policy": "clr", "search": {"base_lr": 0.5, "max_lr": 0.1}}],
        budget={"epochs": 1, "trials_per_policy": 1},
    )
    (config,) = _drain(_searcher(spec), _NeverStop())
    assert config["schedule"] is None
    assert "max_lr" in config["schedule_error"]


def test_nothing_is_suggested_once_the_job_must_stop() -> None:
    sink = _NeverStop()
    searcher = _searcher(_spec())
    with sink_registered("1", sink):
        assert isinstance(searcher.suggest("a"), dict)
        sink.stop = True
        assert searcher.suggest("b") == Searcher.FINISHED


def test_searcher_state_survives_save_and_restore(tmp_path: Path) -> None:
    spec = _spec(search={"algorithm": "tpe", "seed": 2})
    searcher = _searcher(spec)
    sink = _NeverStop()
    with sink_registered("1", sink):
        first = [searcher.suggest(f"t{i}") for i in range(5)]
        searcher.save(str(tmp_path / "state.pkl"))
        restored = _searcher(spec)
        restored.restore(str(tmp_path / "state.pkl"))
        rest = _drain(restored, sink)
    keys = [c["trial_key"] for c in first] + [c["trial_key"] for c in rest]
    assert len(keys) == 12 and len(set(keys)) == 12


def test_default_domains_are_domains() -> None:
    # Guards the conversion table: every domain kind in the defaults converts to a Tune domain.
    kinds = set()
    for policy in ["fixed", "exponential", "clr", "sgdr", "one_cycle", "multistep"]:
        for domain in policy_space(PolicySearch(policy=policy)).domains.values():
            kinds.add(type(domain))
            to_tune_domain(domain)
    assert kinds == {Choice, Uniform, LogUniform}


@pytest.mark.parametrize("algorithm", ["random", "grid", "tpe"])
def test_the_new_policies_resolve_and_plateau_watches_the_jobs_metric(algorithm: str) -> None:
    spec = _spec(
        policies=["wsd", "inverse_sqrt", "rex", "plateau"],
        metric={"name": "val_accuracy", "mode": "max"},
        search={"algorithm": algorithm, "seed": 3},
    )
    configs = _drain(_searcher(spec), _NeverStop())
    assert Counter(c["policy"] for c in configs) == dict.fromkeys(
        ["wsd", "inverse_sqrt", "rex", "plateau"], 3
    )
    total = 3 * 22
    for config in configs:
        assert config["schedule_error"] is None, config
        schedule = config["schedule"]
        if config["policy"] == "plateau":
            assert schedule["mode"] == "max"
        if config["policy"] == "wsd":
            # 5% warmup, the decay a share of the whole training, which total_steps spans.
            assert schedule["total_steps"] == total and schedule["warmup_steps"] == 3
            assert schedule["decay_steps"] == round(schedule["decay_frac"] * total)
        if config["policy"] == "inverse_sqrt":
            assert schedule["timescale"] == schedule["warmup_steps"] > 0


class _ConfirmingSink(_NeverStop):
    """A sink that also answers what the searcher asks when the search ends: the finished
    search trials (each config's value is its index: the last index of a policy is its best)."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[dict[str, Any]] = []
        self.phases: list[str] = []
        self.planned: list[int] = []

    def search_summaries(self) -> list[TrialSummary]:
        return [
            TrialSummary(
                trial_id=config["trial_key"],
                policy=config["policy"],
                schedule=parse_schedule(config["schedule"]),
                seed=config["seed"],
                metric_values=[float(config["index"])],
            )
            for config in self.finished
        ]

    def begin_phase(self, phase: str) -> None:
        self.phases.append(phase)

    def set_planned_trials(self, planned: int) -> None:
        self.planned.append(planned)


def test_the_confirmation_follows_the_search_in_the_same_run_and_survives_a_restore(
    tmp_path: Path,
) -> None:
    spec = _spec(
        policies=["fixed", "clr"],
        budget={"epochs": 3, "trials_per_policy": 2},
        confirm={"top_k": 1, "seeds": 2},
    )
    plan = plan_experiment(spec, job_key="1", storage_path=tmp_path, steps_per_epoch=22)
    searcher = job_searcher(plan)
    assert isinstance(searcher, SearchThenConfirm)
    sink = _ConfirmingSink()
    with sink_registered("1", sink):
        search = [searcher.suggest(f"s{i}") for i in range(4)]
        assert all(isinstance(config, dict) for config in search)
        # Every search trial handed out, one still running: nothing to suggest yet.
        for i, config in enumerate(search[:3]):
            sink.finished.append(config)
            searcher.on_trial_complete(f"s{i}", result={"val_loss": 1.0})
        assert searcher.suggest("c0") is None
        assert sink.phases == []
        sink.finished.append(search[3])
        searcher.on_trial_complete("s3", result={"val_loss": 1.0})

        first = searcher.suggest("c0")
        assert sink.phases == ["confirmation"] and sink.planned == [4 + 4]
        searcher.save(str(tmp_path / "state.pkl"))
        # A worker that resumes the job restores the searcher from the experiment's state.
        restored = job_searcher(plan)
        restored.restore(str(tmp_path / "state.pkl"))
        rest = _drain(restored, sink)
    confirm = [first, *rest]
    assert [c["trial_key"] for c in confirm] == [
        "confirm-fixed-0-0",
        "confirm-clr-0-0",
        "confirm-fixed-0-1",
        "confirm-clr-0-1",
    ]
    assert all(c["phase"] == "confirm" for c in confirm)
    # Each policy's best search config (its index 1), on the confirmation's own seeds.
    best = {c["policy"]: c["schedule"] for c in search if c["index"] == 1}
    assert all(c["schedule"] == best[c["policy"]] for c in confirm)
    assert {c["seed"] for c in confirm}.isdisjoint({c["seed"] for c in search})
    # The restored searcher picked nothing again; it began the phase anew in its process.
    assert sink.planned == [8] and sink.phases == ["confirmation", "confirmation"]


def _run_through(searcher: Searcher, sink: _ConfirmingSink) -> list[dict[str, Any]]:
    """Every Tune trial the job's searcher suggests, each ending as soon as it starts (its
    members too), so the confirmation follows the search."""
    suggested: list[dict[str, Any]] = []
    with sink_registered("1", sink):
        for n in range(100):
            config = searcher.suggest(f"t{n}")
            if config == Searcher.FINISHED:
                return suggested
            assert isinstance(config, dict), config
            suggested.append(config)
            members = config.get("members", [config])
            sink.finished += [m for m in members if m.get("phase", "search") == "search"]
            searcher.on_trial_complete(f"t{n}", result={"val_loss": 1.0})
    raise AssertionError("the searcher never finished")


@pytest.mark.parametrize("execution", ["trials", "population"])
def test_search_trials_share_the_jobs_data_order_and_each_confirmation_seed_its_own(
    store: Store, tmp_path: Path, execution: str
) -> None:
    spec = _spec(
        policies=["fixed", "clr"],
        budget={"epochs": 3, "trials_per_policy": 3, "max_concurrent_trials": 2},
        confirm={"top_k": 1, "seeds": 2},
        execution=execution,
    )
    plan = plan_experiment(spec, job_key="1", storage_path=tmp_path, steps_per_epoch=22)
    suggested = _run_through(job_searcher(plan), _ConfirmingSink())

    # What the job records: each Tune trial's start, as RecordResults writes it to SQL.
    job, _ = store.create_job(spec=spec)
    store.claim_next_job(worker_id="w", lease_seconds=60)
    recorder = RecordResults(job_key="1", epochs=3)
    with sink_registered("1", StoreSink(store, job_id=job.id)):
        for config in suggested:
            recorder.on_trial_start(0, [], SimpleNamespace(config=config))
    trials = store.list_trials(job_id=job.id, limit=100).items
    search = [t for t in trials if t.phase == "search"]
    confirm = [t for t in trials if t.phase == "confirm"]
    assert len(search) == 6 and len(confirm) == 2 * 2

    # One order for the whole search; the weights still start from each trial's own seed.
    order = search_shuffle_seed(7)
    assert {t.search_config["shuffle_seed"] for t in search} == {order}
    assert {t.seed for t in search} == {trial_seed(7, i) for i in range(3)}
    # A confirmation seed is its trials' order too: 2 seeds, 2 orders, none the search's.
    seeds = {confirmation_seed(7, i) for i in range(2)}
    assert {t.seed for t in confirm} == seeds
    assert all(t.search_config["shuffle_seed"] == t.seed for t in confirm)
    assert order not in seeds
    if execution == "population":
        # A population trains one order: the confirmation's split by seed.
        orders: dict[str, set[int]] = {}
        for trial in trials:
            population = trial.search_config["population"]
            orders.setdefault(population, set()).add(trial.search_config["shuffle_seed"])
        assert all(len(seen) == 1 for seen in orders.values()), orders
        assert len([p for p, seen in orders.items() if seen <= seeds]) == 2


def test_a_workload_that_orders_its_own_data_gets_no_data_order(tmp_path: Path) -> None:
    spec = _spec(
        policies=["fixed"],
        budget={"epochs": 3, "trials_per_policy": 2},
        confirm={"top_k": 1, "seeds": 2},
    )
    # A train function, or a train loader of the user's own (TrainingPlan.orders_data).
    plan = plan_experiment(
        spec, job_key="1", storage_path=tmp_path, steps_per_epoch=22, orders_data=False
    )
    suggested = _run_through(job_searcher(plan), _ConfirmingSink())
    assert len(suggested) == 2 + 2
    assert all("shuffle_seed" not in config for config in suggested)
