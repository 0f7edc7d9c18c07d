"""One training of the search benchmark, in a worker process: a trial's metric every epoch and,
when asked, its cooldown probes at the rungs, every probe variant from one training."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def variant_label(fraction: float, shape: str) -> str:
    return f"{shape} {fraction:g}"


@contextlib.contextmanager
def several_probes(
    variants: Sequence[tuple[float, str]], record: Callable[[tuple[float, str], Any], None]
) -> Iterator[None]:
    """While active, every probe run_trial makes runs once per variant instead (each recorded
    with `record(variant, probe)`). Exact: a probe copies the model and the optimizer and puts
    the RNG states back, so each variant's probe equals a run probing that variant alone."""
    from lrtune.schemas.jobs import Cooldown
    from lrtune.workers import trial as trial_module

    original = trial_module.cooldown_probe

    def probe_each(*args: Any, cooldown: Any, **kwargs: Any) -> Any:
        results = []
        for fraction, shape in variants:
            result = original(*args, cooldown=Cooldown(fraction=fraction, shape=shape), **kwargs)
            record((fraction, shape), result)
            results.append(result)
        return results[0]

    trial_module.cooldown_probe = probe_each
    try:
        yield
    finally:
        trial_module.cooldown_probe = original


def train_task(task: dict[str, Any]) -> dict[str, Any]:
    """One trial to its epochs (a worker-process entry point): its metric every epoch (a
    blown-up value counted as `task["worst"]`), and its probes of every variant in
    `task["variants"]` at the epochs `task["rungs"]`."""
    import torch
    from lrtune.schemas.jobs import Cooldown
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.trial import Probing, run_trial

    torch.set_num_threads(1)
    config = TrialConfig.model_validate(task["config"])
    metric, worst = task["config"]["metric"], task["worst"]
    variants = [(float(f), str(s)) for f, s in task.get("variants", [])]
    history: list[float] = []
    probes: dict[str, dict[str, dict[str, float]]] = {}
    probe_seconds = 0.0

    def finite(value: float | None) -> float:
        return value if value is not None and math.isfinite(value) else worst

    def report(result: Any) -> None:
        history.append(finite(result.value(metric)))

    def record(variant: tuple[float, str], probe: Any) -> None:
        nonlocal probe_seconds
        probe_seconds += probe.elapsed_s
        probes.setdefault(variant_label(*variant), {})[str(probe.epoch)] = {
            "value": finite(probe.value(metric)),
            "cooldown_steps": probe.cooldown_steps,
        }

    started = time.perf_counter()
    probing = None
    if variants:
        fraction, shape = variants[0]
        probing = Probing(
            epochs=frozenset(task["rungs"]),
            cooldown=Cooldown(fraction=fraction, shape=shape),
            on_probe=lambda _probe: None,  # recorded by several_probes, every variant
        )
    with several_probes(variants, record) if variants else contextlib.nullcontext():
        outcome = run_trial(config, report, probing=probing)
    return {
        "history": history,
        "status": outcome.status,
        "probes": probes,
        "seconds": time.perf_counter() - started,
        "probe_seconds": probe_seconds,
    }


def final_value(result: dict[str, Any], worst: float) -> float:
    """A trial's final metric; a diverged trial stops early and its last value stands."""
    history = result["history"]
    return history[-1] if history else worst


def task_epochs(task: dict[str, Any]) -> float:
    """The epochs a task trains, its probes' steps counted as epochs."""
    probes = sum(float(f) * rung for f, _ in task.get("variants", []) for rung in task["rungs"])
    return task["config"]["epochs"] + probes


def measured_seconds_per_epoch(results: Sequence[dict[str, Any]]) -> float | None:
    """Seconds per epoch (probe epochs included) over finished tasks, or None."""
    seconds = sum(r["seconds"] for r in results)
    epochs = sum(r["epochs"] for r in results if "epochs" in r)
    return seconds / epochs if epochs else None


def train_all(
    tasks: dict[str, dict[str, Any]],
    *,
    cache: Any,
    pool: Any,
    label: str,
    seconds_per_epoch: float,
    jobs: int,
) -> dict[str, dict[str, Any]]:
    """Every task's result: the cached ones as they are, the others trained in `pool` (each
    cached as it finishes). Prints an estimate first, from the cache's own seconds per epoch
    when it has some, else `seconds_per_epoch`."""
    from concurrent.futures import as_completed

    todo = {key: task for key, task in tasks.items() if key not in cache}
    measured = measured_seconds_per_epoch([cache.get(k) for k in tasks if k in cache])
    rate = measured or seconds_per_epoch
    epochs = sum(task_epochs(t) for t in todo.values())
    print(
        f"[{label}] {len(tasks) - len(todo)} of {len(tasks)} trainings cached; {len(todo)} to "
        f"train, {epochs:.0f} epochs: about {epochs * rate / jobs / 60:.0f} min at "
        f"{rate:.3f} s per epoch ({'measured here' if measured else 'prior'}) in {jobs} "
        "processes",
        flush=True,
    )
    futures = {pool.submit(train_task, task): key for key, task in todo.items()}
    for done, future in enumerate(as_completed(futures), start=1):
        key = futures[future]
        result = future.result()
        result["epochs"] = (
            len(result["history"])
            + sum(p["cooldown_steps"] for v in result["probes"].values() for p in v.values())
            / tasks[key]["steps_per_epoch"]
        )
        cache.add(key, result)
        if done % 50 == 0 or done == len(todo):
            print(f"[{label}] {done} of {len(todo)} trained", flush=True)
    return {key: cache.get(key) for key in tasks}


def make_task(
    workload: Any,
    schedule: Any,
    *,
    seed: int,
    epochs: int,
    steps_per_epoch: int,
    variants: Sequence[tuple[float, str]] = (),
    rungs: Sequence[int] = (),
) -> tuple[str, dict[str, Any]]:
    """One training as a task for `train_task`, and its cache key (its content)."""
    from bench.search_workloads import digest, trial_config

    task = {
        "config": trial_config(workload, schedule, seed=seed, epochs=epochs),
        "variants": [list(v) for v in variants],
        "rungs": list(rungs),
        "worst": workload.worst,
        "steps_per_epoch": steps_per_epoch,
    }
    return digest(task), task
