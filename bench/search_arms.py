"""The search benchmark's arms: each searches the workload's spaces (the service's own, from
explicit lr_bounds) with one search seed at about the epochs of `arm_epochs` (within 10%), and
names the schedule it recommends. Their recommendations are scored on fresh seeds elsewhere.

- lrtune's jobs run through the real worker (temporary SQLite, `run_worker(once=True,
  num_cpus=2)`, 2 concurrent trials), each confirming each policy's best on 3 seeds:
  - `default`: no `early_stopping` named, so lrtune's default (`default_early_stopping`:
    horizon halving, the whole schedule compressed to a quarter of the budget, the top quarter
    of each policy's points then trained to the budget);
  - `halving`: a longer ladder, `{"kind": "horizon_halving", "min_epochs": 1,
    "reduction_factor": 3}` (rungs 1, 4 and 12 epochs of 12);
  - `cooldown`: ASHA (grace 1, rf 3) judged by lrtune's default cooldown probe;
  - `asha-raw`: ASHA judged raw, Ray Tune's ASHA as it is.
  A job's trials per policy come from the epochs per trial its arm spent before (cached runs),
  else from a prior, so that it lands near the arms' epochs.
- `random`: random search to the budget's end, i.i.d. points as Ray Tune draws them, lrtune's
  trial seeds, round robin over the policies, in `--jobs` processes; the best final value wins.
- `tpe-median`, `tpe-hyperband`: Optuna's TPE over all policies (the policy of trial i round
  robin, each policy's fields its own dimensions), with Optuna's MedianPruner (defaults) or
  HyperbandPruner (min_resource 1, max_resource the budget, reduction factor 3), reporting
  every epoch; stopped when its epochs are spent; the best completed trial wins.
- `smac`: SMAC3 (BSD-3) as its users run it: its MultiFidelityFacade (random-forest Bayesian
  optimisation with a Hyperband intensifier, eta 3) over a ConfigSpace (the policy a
  categorical, each policy's fields conditional on it), budget = epochs in [1, the budget],
  deterministic with its scenario's seed, its ask/tell loop until the epochs are spent; an
  evaluation at budget H trains the point's schedule resolved at H epochs (as a user's code
  that builds its scheduler from the epochs it is given), from scratch. Its recommendation: its
  incumbent, the best at the highest budget observed.

DEHB (the other candidate) is not an arm: DEHB 0.1.2, its latest release, requires
numpy < 2.0, so `pip install dehb` would replace the numpy 2 that torch and the rest of lrtune
run on here (`pip install --dry-run dehb`: "Would install ... numpy-1.26.4"). smac 2.4 installs
beside lrtune's pins without replacing anything (its random forest is scikit-learn's; pyrfr is
no longer required), so it is in the dev extras.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.search_training import final_value, make_task, train_task
from bench.search_workloads import BenchWorkload, budget_epochs, resolve, search_spaces

ARM_NAMES = {
    "default": "lrtune's default (horizon halving: 1/4 of the budget, then the top 1/4 to it)",
    "halving": "lrtune, horizon halving over 3 rungs (min_epochs 1, rf 3)",
    "cooldown": "lrtune, ASHA judged by cooldown",
    "asha-raw": "Ray Tune's ASHA, raw (lrtune, judge raw)",
    "random": "random search, no early stopping",
    "tpe-median": "Optuna TPE + MedianPruner",
    "tpe-hyperband": "Optuna TPE + HyperbandPruner",
    "smac": "SMAC3, MultiFidelityFacade (Hyperband)",
}
ARMS = tuple(ARM_NAMES)
LRTUNE_ARMS = ("default", "halving", "cooldown", "asha-raw")
# The peers that train in their own process (one each), run in the benchmark's pool.
POOL_ARMS = ("tpe-median", "tpe-hyperband", "smac")
CONFIRM_SEEDS = 3
REDUCTION_FACTOR = 3
# Epochs per search trial (probes counted) as a share of the budget, before a run of the arm
# has measured its own: issue 11's runs (bench/RESULTS.md "Schedule-aware search").
PRIOR_EPOCHS_PER_TRIAL = {"cooldown": 0.41, "asha-raw": 0.24}


class ArmUnavailable(Exception):
    """An arm that cannot run here (a spec the installed lrtune refuses, a missing package)."""


@dataclass
class ArmRun:
    """One arm with one search seed: the schedule it recommends and what it spent."""

    arm: str
    seed: int
    policy: str
    schedule: dict[str, Any]
    epochs: float
    trials: int
    seconds: float
    detail: dict[str, float] = field(default_factory=dict)
    pruned: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- lrtune's jobs --------------------------------------------------------------------------


def early_stopping(arm: str) -> dict[str, Any] | None:
    if arm == "default":
        return None
    if arm == "halving":
        return {"kind": "horizon_halving", "min_epochs": 1, "reduction_factor": REDUCTION_FACTOR}
    judge = "cooldown" if arm == "cooldown" else "raw"
    return {"kind": "asha", "grace_epochs": 1, "reduction_factor": REDUCTION_FACTOR, "judge": judge}


def job_spec(workload: BenchWorkload, *, arm: str, trials: int, seed: int, epochs: int) -> Any:
    """The arm's job spec; ArmUnavailable when the installed lrtune refuses it."""
    from lrtune.schemas.jobs import JobSpec
    from pydantic import ValidationError

    low, high = workload.bounds
    spec: dict[str, Any] = {
        "name": f"bench_search {workload.key} {arm} seed {seed}",
        "workload": workload.spec,
        "optimizer": workload.optimizer,
        "metric": {"name": workload.metric, "mode": workload.mode},
        "policies": [
            {"policy": p, "search": workload.overrides[p]} if p in workload.overrides else p
            for p in workload.policies
        ],
        "lr_bounds": {"min": low, "max": high},
        "budget": {"epochs": epochs, "trials_per_policy": trials, "max_concurrent_trials": 2},
        "search": {"algorithm": "random", "seed": seed},
        "confirm": {"top_k": 1, "seeds": CONFIRM_SEEDS},
    }
    stopping = early_stopping(arm)
    if stopping is not None:
        spec["early_stopping"] = stopping
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as error:
        raise ArmUnavailable(
            f"the installed lrtune refuses early_stopping {json.dumps(stopping)} "
            f"({error.errors()[0]['msg']}); it needs branch halving (issue 25) merged"
        ) from None


def halving_rungs(budget: int, *, min_epochs: int, factor: int) -> list[int]:
    """Issue 25's rungs: the budget divided by r, r^2, ... (whole epochs) down to min_epochs."""
    found = [budget]
    divisor = factor
    while round(budget / divisor) >= min_epochs and round(budget / divisor) < found[-1]:
        found.append(round(budget / divisor))
        divisor *= factor
    return sorted(found)


def ladder_of(arm: str, budget: int) -> tuple[list[int], int] | None:
    """The rungs and reduction factor of an arm that halves over training length."""
    from lrtune.schemas.jobs import DEFAULT_HALVING_FACTOR

    if arm == "default":  # lrtune's default: a quarter of the budget, then the budget
        factor = DEFAULT_HALVING_FACTOR
        return halving_rungs(budget, min_epochs=round(budget / factor), factor=factor), factor
    if arm == "halving":
        return halving_rungs(budget, min_epochs=1, factor=REDUCTION_FACTOR), REDUCTION_FACTOR
    return None


def per_policy_epochs(arm: str, trials: int, budget: int, per_trial: float | None) -> float:
    """A policy's search epochs with `trials` first-rung trials (probes counted)."""
    ladder = ladder_of(arm, budget)
    if ladder is not None and per_trial is None:
        rungs, factor = ladder
        return sum(max(1, trials // factor**i) * horizon for i, horizon in enumerate(rungs))
    share = per_trial if per_trial is not None else PRIOR_EPOCHS_PER_TRIAL[arm] * budget
    return trials * share


def trials_for(
    workload: BenchWorkload, *, arm: str, target: int, budget: int, earlier: list[ArmRun]
) -> int:
    """Trials per policy that bring the arm nearest `target` epochs (a ladder's: the most
    within it): the search epochs per
    trial of its earlier runs on this workload when there are any, else the prior; the
    confirmation (2 new seeds x each policy's best at the full budget) counted apart."""
    policies = len(workload.policies)
    confirm = (CONFIRM_SEEDS - 1) * policies * budget
    per_trial = None
    if ladder_of(arm, budget) is not None:
        # A ladder's epochs follow from its first rung (survivors are whole numbers, so they
        # do not grow in proportion): its planned epochs, scaled by what earlier runs spent
        # against their own plan.
        def planned(trials: int) -> float:
            return confirm + policies * per_policy_epochs(arm, trials, budget, None)

        ratio = (
            statistics.fmean(
                r.epochs / planned(int(r.detail["trials_per_policy"])) for r in earlier
            )
            if earlier
            else 1.0
        )
        # The largest first rung within the target: the default's bar is "at <= 25%".
        return max(
            (trials for trials in range(1, 400) if ratio * planned(trials) <= target), default=1
        )
    if earlier:
        # Per first-rung trial of a policy (a halving job's later rungs included).
        per_trial = statistics.fmean(
            (r.detail["search"] + r.detail["probes"]) / (r.detail["trials_per_policy"] * policies)
            for r in earlier
        )
    best, best_miss = 1, math.inf
    for trials in range(1, 400):
        total = confirm + policies * per_policy_epochs(arm, trials, budget, per_trial)
        if abs(total - target) < best_miss:
            best, best_miss = trials, abs(total - target)
        if total > target:
            break
    return best


def run_lrtune(
    workload: BenchWorkload, *, arm: str, trials: int, seed: int, epochs: int, spe: int
) -> ArmRun:
    """The arm's job through the real worker: its winner and the epochs it spent."""
    from lrtune.service.recommendations import job_recommendation

    from bench.worker_job import worker_job

    spec = job_spec(workload, arm=arm, trials=trials, seed=seed, epochs=epochs)
    with worker_job(spec, num_cpus=2) as (store, done, seconds):
        if done.status != "succeeded":
            raise RuntimeError(f"{arm} job {done.status}: {done.error}")
        same = json.loads(json.dumps(search_spaces(workload)))
        assert done.search_spaces == same, "the job searched other spaces than the benchmark's"
        listed = store.list_trials(job_id=done.id, limit=100_000).items
        probe_steps = sum(
            p.cooldown_steps for trial in listed for p in store.list_trial_probes(trial.id)
        )
        winner = job_recommendation(store, job_id=done.id, tenant_id=None).winner
        assert winner is not None
    search = sum(t.epochs_done for t in listed if t.phase == "search")
    confirm = sum(t.epochs_done for t in listed if t.phase == "confirm")
    probes = probe_steps / spe
    return ArmRun(
        arm=arm,
        seed=seed,
        policy=winner.policy,
        schedule=winner.schedule.model_dump(mode="json"),
        epochs=search + confirm + probes,
        trials=sum(t.phase == "search" for t in listed),
        seconds=seconds,
        detail={
            "search": search,
            "probes": probes,
            "confirm": confirm,
            "trials_per_policy": trials,
        },
        pruned=sum(t.status == "pruned" for t in listed),
    )


# --- the peers, in this process or the pool -------------------------------------------------


def iid_point(space: Any, *, base_seed: int, index: int) -> dict[str, Any]:
    """The index-th i.i.d. point of a policy, drawn with Tune's own domains."""
    import zlib

    import numpy as np
    from lrtune.workers.experiment import decode_point, tune_space

    rng = np.random.default_rng([base_seed, zlib.crc32(space.policy.encode()), index])
    return decode_point(
        space, {key: domain.sample(random_state=rng) for key, domain in tune_space(space).items()}
    )


def run_random(
    workload: BenchWorkload, *, target: int, seed: int, epochs: int, spe: int, pool: Any
) -> ArmRun:
    """Random search as Ray Tune's default searcher runs it (i.i.d. draws of the Tune domains)
    to the budget's end, round robin over the policies, the i-th trial of each with lrtune's
    i-th trial seed; the best final value wins."""
    from lrtune.workers.experiment import parse_space, trial_seed

    spaces = {p: parse_space(p, raw) for p, raw in search_spaces(workload).items()}
    picks: list[tuple[str, Any]] = []
    tasks = []
    for i in range(max(len(spaces), round(target / epochs))):
        policy, index = workload.policies[i % len(spaces)], i // len(spaces)
        point = iid_point(spaces[policy], base_seed=seed, index=index)
        try:
            schedule = resolve(policy, point, steps_per_epoch=spe, epochs=epochs)
        except ValueError:
            continue
        picks.append((policy, schedule))
        tasks.append(
            make_task(
                workload,
                schedule,
                seed=trial_seed(seed, index),
                epochs=epochs,
                steps_per_epoch=spe,
            )[1]
        )
    started = time.perf_counter()
    results = list(pool.map(train_task, tasks))
    seconds = time.perf_counter() - started
    finals = {i: final_value(r, workload.worst) for i, r in enumerate(results)}
    best = workload.best(finals)
    spent = sum(len(r["history"]) for r in results)
    return ArmRun(
        arm="random",
        seed=seed,
        policy=picks[best][0],
        schedule=picks[best][1].model_dump(mode="json"),
        epochs=spent,
        trials=len(tasks),
        seconds=seconds,
        detail={"search": spent},
    )


def train_point(
    workload: BenchWorkload,
    policy: str,
    point: dict[str, Any],
    *,
    seed: int,
    epochs: int,
    spe: int,
    on_epoch: Callable[[float], bool] | None = None,
) -> tuple[Any, list[float], str]:
    """The point's schedule resolved at `epochs`, trained in this process (one thread): the
    schedule, the metric every epoch, how it ended. `on_epoch(value)` True stops it."""
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trial import run_trial

    schedule = resolve(policy, point, steps_per_epoch=spe, epochs=epochs)
    _, task = make_task(workload, schedule, seed=seed, epochs=epochs, steps_per_epoch=spe)
    history: list[float] = []

    def report(result: Any) -> bool:
        value = workload.value(result.value(workload.metric))
        history.append(value)
        return bool(on_epoch(value)) if on_epoch is not None else False

    outcome = run_trial(TrialConfig.model_validate(task["config"]), report)
    return schedule, history, outcome.status


def run_optuna(
    workload: BenchWorkload, *, arm: str, target: int, seed: int, epochs: int, spe: int
) -> ArmRun:
    """Optuna's TPE with its MedianPruner (`tpe-median`) or HyperbandPruner (`tpe-hyperband`)
    over all policies, until `target` epochs are spent."""
    import optuna
    from lrtune.schemas.search import Choice, IntRange, LogUniform, Uniform
    from lrtune.workers.experiment import decode_point, parse_space, trial_seed

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = {p: parse_space(p, raw) for p, raw in search_spaces(workload).items()}
    policies = list(workload.policies)
    counts = dict.fromkeys(policies, 0)
    spent = 0
    schedules: dict[int, tuple[str, Any]] = {}

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        policy = trial.suggest_categorical("policy", policies)
        space = spaces[policy]
        encoded: dict[str, Any] = {}
        for key, domain in space.domains.items():
            name = f"{policy}.{key}"
            if isinstance(domain, Choice):
                encoded[key] = trial.suggest_categorical(name, list(range(len(domain.choice))))
            elif isinstance(domain, LogUniform):
                encoded[key] = trial.suggest_float(name, *domain.loguniform, log=True)
            elif isinstance(domain, Uniform):
                encoded[key] = trial.suggest_float(name, *domain.uniform)
            else:
                assert isinstance(domain, IntRange)
                encoded[key] = trial.suggest_int(name, *domain.int)
        point = decode_point(space, encoded)
        index = counts[policy]
        counts[policy] += 1
        step = 0

        def on_epoch(value: float) -> bool:
            nonlocal spent, step
            spent += 1
            step += 1
            trial.report(value, step)
            return bool(trial.should_prune())  # numpy's bool would not stop run_trial

        try:
            schedule, history, status = train_point(
                workload,
                policy,
                point,
                seed=trial_seed(seed, index),
                epochs=epochs,
                spe=spe,
                on_epoch=on_epoch,
            )
        except ValueError as error:  # no valid schedule at this point
            raise optuna.TrialPruned(str(error)) from error
        schedules[trial.number] = (policy, schedule)
        if status == "stopped":
            raise optuna.TrialPruned()
        return history[-1] if history else workload.worst

    if arm == "tpe-median":
        pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner()
    else:
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs, reduction_factor=REDUCTION_FACTOR
        )
    study = optuna.create_study(
        direction="maximize" if workload.higher_is_better else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
    )

    def next_policy(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if spent >= target:
            study.stop()
        else:
            study.enqueue_trial({"policy": policies[(trial.number + 1) % len(policies)]})

    study.enqueue_trial({"policy": policies[0]})
    started = time.perf_counter()
    study.optimize(objective, n_trials=100_000, callbacks=[next_policy])
    seconds = time.perf_counter() - started
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best = study.best_trial.number
    else:  # every trial pruned (a tiny budget): the best last reported value
        reported = {
            t.number: t.intermediate_values[max(t.intermediate_values)]
            for t in study.trials
            if t.intermediate_values and t.number in schedules
        }
        best = workload.best(reported)
    policy, schedule = schedules[best]
    finished = [t for t in study.trials if t.state.is_finished()]
    return ArmRun(
        arm=arm,
        seed=seed,
        policy=policy,
        schedule=schedule.model_dump(mode="json"),
        epochs=spent,
        trials=len(finished),
        seconds=seconds,
        detail={"search": spent},
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
    )


def config_space(workload: BenchWorkload, *, seed: int) -> Any:
    """The spaces as one ConfigSpace, as a SMAC user writes it: the policy, and each policy's
    fields as `<policy>.<field>` (a choice as the index of its option), active only under
    their policy."""
    from ConfigSpace import (
        CategoricalHyperparameter,
        ConfigurationSpace,
        EqualsCondition,
        UniformFloatHyperparameter,
        UniformIntegerHyperparameter,
    )
    from lrtune.schemas.search import Choice, LogUniform, Uniform
    from lrtune.workers.experiment import parse_space

    space = ConfigurationSpace(seed=seed)
    policy_choice = CategoricalHyperparameter("policy", list(workload.policies))
    space.add(policy_choice)
    for policy, raw in search_spaces(workload).items():
        for key, domain in parse_space(policy, raw).domains.items():
            name = f"{policy}.{key}"
            hyperparameter: Any
            if isinstance(domain, Choice):
                hyperparameter = CategoricalHyperparameter(name, list(range(len(domain.choice))))
            elif isinstance(domain, LogUniform):
                low, high = domain.loguniform
                hyperparameter = UniformFloatHyperparameter(name, low, high, log=True)
            elif isinstance(domain, Uniform):
                hyperparameter = UniformFloatHyperparameter(name, *domain.uniform)
            else:
                hyperparameter = UniformIntegerHyperparameter(name, *domain.int)
            space.add(hyperparameter, EqualsCondition(hyperparameter, policy_choice, policy))
    return space


def run_smac(workload: BenchWorkload, *, target: int, seed: int, epochs: int, spe: int) -> ArmRun:
    """SMAC3's MultiFidelityFacade (random-forest BO, Hyperband intensifier, eta 3, budgets 1
    to the budget's epochs) through its ask/tell interface until `target` epochs are spent; its
    incumbent (the best at the highest budget observed) wins."""
    import tempfile
    from pathlib import Path

    from lrtune.workers.experiment import decode_point, parse_space
    from smac import MultiFidelityFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    spaces = {p: parse_space(p, raw) for p, raw in search_spaces(workload).items()}
    sign = -1.0 if workload.higher_is_better else 1.0  # SMAC minimises its cost
    spent = 0
    evaluations = 0

    def point_of(config: Any) -> tuple[str, dict[str, Any]]:
        policy = str(config["policy"])
        space = spaces[policy]
        encoded = {key: config[f"{policy}.{key}"] for key in space.domains}
        return policy, decode_point(space, encoded)

    def train(config: Any, seed: int = 0, budget: float = epochs) -> float:
        nonlocal spent, evaluations
        policy, point = point_of(config)
        try:
            _, history, _ = train_point(
                workload, policy, point, seed=seed, epochs=max(1, round(budget)), spe=spe
            )
        except ValueError:  # no valid schedule at this point
            history = []
        evaluations += 1
        spent += len(history)
        return sign * (history[-1] if history else workload.worst)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as output:
        scenario = Scenario(
            config_space(workload, seed=seed),
            name=f"{workload.key}-{seed}",
            output_directory=Path(output),
            deterministic=True,
            n_trials=100_000,  # the loop below stops at the epochs
            min_budget=1,
            max_budget=epochs,
            seed=seed,
        )
        smac = MultiFidelityFacade(
            scenario,
            train,
            intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=REDUCTION_FACTOR),
            overwrite=True,
            logging_level=40,
        )
        while spent < target:
            info = smac.ask()
            cost = train(info.config, seed=info.seed or 0, budget=info.budget or epochs)
            smac.tell(info, TrialValue(cost=cost))
        incumbent = smac.intensifier.get_incumbent()
    seconds = time.perf_counter() - started
    assert incumbent is not None
    policy, point = point_of(incumbent)
    schedule = resolve(policy, point, steps_per_epoch=spe, epochs=epochs)
    return ArmRun(
        arm="smac",
        seed=seed,
        policy=policy,
        schedule=schedule.model_dump(mode="json"),
        epochs=spent,
        trials=evaluations,
        seconds=seconds,
        detail={"search": spent},
    )


def run_peer(
    workload: BenchWorkload, *, arm: str, seed: int, target: int, scale: Any, spe: int
) -> ArmRun:
    """One of POOL_ARMS with one search seed, in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    epochs = budget_epochs(workload, scale)
    if arm == "smac":
        return run_smac(workload, target=target, seed=seed, epochs=epochs, spe=spe)
    return run_optuna(workload, arm=arm, target=target, seed=seed, epochs=epochs, spe=spe)


def run_arm(
    workload: BenchWorkload,
    *,
    arm: str,
    seed: int,
    target: int,
    scale: Any,
    spe: int,
    pool: Any,
    earlier: list[ArmRun],
) -> ArmRun:
    """One of lrtune's arms or random search with one search seed, from this process."""
    epochs = budget_epochs(workload, scale)
    if arm in LRTUNE_ARMS:
        trials = trials_for(workload, arm=arm, target=target, budget=epochs, earlier=earlier)
        return run_lrtune(workload, arm=arm, trials=trials, seed=seed, epochs=epochs, spe=spe)
    assert arm == "random"
    return run_random(workload, target=target, seed=seed, epochs=epochs, spe=spe, pool=pool)
