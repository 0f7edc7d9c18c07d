"""Population trials (issue 17): trials per hour of K trials trained as one batched model against
the same trials one at a time.

For each workload, K members (K = 4, 16, 64 by default) with schedules drawn from several
policies and rates, seeds 0..K-1 and one shuffle seed, go through `run_population`, and the same
K configs through `run_trial`, one after another in this process (a warm process: no start-up,
data already in memory, which favours the lone side). The two sides alternate, `--repeats`
times, and each keeps its least time, so both meet the same load. One torch thread on both
sides, as each 1-CPU Ray trial gets. `--process` also times one trial in a fresh process
(`python -c`: imports, data, one trial), what a trial per process costs at the least.

    nice -n 5 .venv/bin/python -m bench.bench_population --write
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch

from bench.results_file import machine_line, write_section

WORKLOADS: dict[str, dict[str, Any]] = {
    "mnist1d (mlp)": {"name": "mnist1d", "params": {"model": "mlp"}},
    "mnist1d (cnn1d)": {"name": "mnist1d", "params": {"model": "cnn1d"}},
    "digits (mlp)": {"name": "digits", "params": {"model": "mlp"}},
    "digits (cnn)": {"name": "digits", "params": {"model": "cnn"}},
}
SIZES = (4, 16, 64)
SECTION = "Population trials (issue 17)"


def _schedule(index: int, total_steps: int) -> dict[str, Any]:
    """The index-th member's schedule: several policies, rates spread over a decade."""
    lr = 0.01 * 10 ** ((index * 0.37) % 1.0)
    policies = [
        {"policy": "fixed", "lr": lr},
        {"policy": "cosine", "lr": lr, "decay_steps": total_steps, "alpha": 0.01},
        {"policy": "clr", "base_lr": lr / 10, "max_lr": lr, "step_size": total_steps // 4 or 1},
        {"policy": "wsd", "lr": lr, "total_steps": total_steps, "warmup_steps": 2},
        {"policy": "one_cycle", "max_lr": lr, "total_steps": total_steps},
    ]
    return policies[index % len(policies)]


def configs(workload: dict[str, Any], count: int, epochs: int) -> list[Any]:
    from lrtune.schemas.trials import TrialConfig
    from lrtune.workers.workloads import build_workload

    steps = build_workload(workload["name"], workload["params"]).steps_per_epoch * epochs
    return [
        TrialConfig.model_validate(
            {
                "workload": workload,
                "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4},
                "schedule": _schedule(index, steps),
                "epochs": epochs,
                "seed": index,
                "shuffle_seed": 0,
            }
        )
        for index in range(count)
    ]


Timing = tuple[float, float]  # (CPU seconds of this process, wall-clock seconds)


def timed(run: Any) -> Timing:
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def time_lone(trials: list[Any]) -> Timing:
    """Per trial, each through `run_trial`, one after another."""
    from lrtune.workers.trial import run_trial

    cpu, wall = timed(lambda: [run_trial(config, lambda result: None) for config in trials])
    return cpu / len(trials), wall / len(trials)


def time_population(trials: list[Any]) -> Timing:
    from lrtune.workers.population import run_population

    def run() -> None:
        outcomes = run_population(trials, lambda index, result: None)
        assert all(outcome.status in ("completed", "diverged") for outcome in outcomes)

    return timed(run)


def time_process(config: Any) -> Timing:
    """One trial in a fresh process: start-up, imports, data, the trial."""
    code = (
        "import torch; torch.set_num_threads(1);"
        "from lrtune.schemas.trials import TrialConfig;"
        "from lrtune.workers.trial import run_trial;"
        f"run_trial(TrialConfig.model_validate_json({config.model_dump_json()!r}), print)"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu, wall


def fastest(timings: list[Timing]) -> Timing:
    """The least of repeated timings, CPU and wall apart: what other work on the machine added
    least to."""
    return min(t[0] for t in timings), min(t[1] for t in timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=2, help="timings kept: the least")
    parser.add_argument("--process", action="store_true", help="also time a trial per process")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--heading", default=SECTION, help="the RESULTS.md section to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for label in args.workloads:
        workload = WORKLOADS[label]
        members = configs(workload, max(args.sizes), args.epochs)
        time_lone(members[:1])  # warm: the data in memory, torch's kernels loaded
        time_population(members[:2])
        process = time_process(members[0]) if args.process else None
        for size in args.sizes:
            load = os.getloadavg()[0]
            lone_runs: list[Timing] = []
            population_runs: list[Timing] = []
            for _ in range(args.repeats):  # alternating, so both meet the same load
                lone_runs.append(time_lone(members[:size]))
                population_runs.append(time_population(members[:size]))
            lone_cpu, lone_wall = fastest(lone_runs)
            cpu, wall = fastest(population_runs)
            row = {
                "workload": label,
                "k": size,
                "load": load,
                "population": (cpu, wall),
                "lone": (lone_cpu, lone_wall),
                "process": process,
                "speedup_cpu": lone_cpu * size / cpu,
                "speedup_wall": lone_wall * size / wall,
            }
            rows.append(row)
            print(row, flush=True)
    if args.write:
        write(rows, args, load_before)


def write(
    rows: list[dict[str, Any]], args: argparse.Namespace, load_before: tuple[float, ...]
) -> None:
    def per_hour(seconds_per_trial: float) -> str:
        return f"{3600 / seconds_per_trial:,.0f}"

    lines = [
        f"Machine: {machine_line()}; load average (1, 5, 15 min) before: "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; CPU seconds "
        "(`time.process_time`, what the trials cost a core) besides the wall-clock, each the "
        f"least of {args.repeats} alternating runs. "
        f"`nice -n 5 python -m bench.bench_population{' --process' if args.process else ''}`.",
        "",
        f"K trials of {args.epochs} epochs each (SGD momentum 0.9, weight decay 1e-4; fixed, "
        "cosine, clr, wsd and one_cycle schedules at rates from 0.01 to 0.1; seeds 0..K-1, one "
        "data order), as one population (`run_population`: building the K models, training, "
        "evaluating every epoch) against one trial at a time (`run_trial` in a warm process, "
        "the same K trials), one torch thread each. Trials per hour per core, from CPU "
        "seconds (wall-clock in brackets):",
        "",
        "| workload | K | load | trials/hour, population | trials/hour, one at a time | "
        "speed-up, CPU | speed-up, wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        (cpu, wall), (lone_cpu, lone_wall), k = r["population"], r["lone"], r["k"]
        lines.append(
            f"| {r['workload']} | {k} | {r['load']:.1f} | {per_hour(cpu / k)} "
            f"({per_hour(wall / k)}) | {per_hour(lone_cpu)} ({per_hour(lone_wall)}) | "
            f"**{r['speedup_cpu']:.2f}x** | {r['speedup_wall']:.2f}x |"
        )
    if args.process:
        lines += ["", "One trial in a fresh process (start-up, imports, data, the trial):"]
        for r in rows:
            if r["k"] == max(args.sizes):
                cpu, wall = r["process"]
                lines.append(
                    f"- {r['workload']}: {cpu:.2f} CPU s ({wall:.2f} s wall), "
                    f"{per_hour(cpu)} trials/hour per core."
                )
    write_section(args.heading, "\n".join(lines))


if __name__ == "__main__":
    main()
