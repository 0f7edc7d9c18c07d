"""The GPU check: lrtune's CUDA paths, driven directly (no Ray, no database), in one call.

The lent GPU machine has PyTorch but neither Ray nor the service's packages, so this drives
the training code the trials run, as a Ray trial would on its GPU:
- `run_trial` on the device (seconds per epoch, the final metric);
- four processes training at once on the one device, as Ray places trials with `gpu: 0.25`,
  against one process alone;
- `run_population` on the device at K = 16 and 64 against the same trials one at a time
  (trials per hour), with the chunk size `population_size` picks from the free memory;
- `adamw_schedulefree` on the device;
- the own-model example's train function (`examples/own-model`, AMP on CUDA), driven by
  `run_trial` through its `TrialContext`;
- `charlm`'s seconds per epoch.
Every check runs whatever the others did, and a failure is recorded with its error, not
raised. `bench/gpu_check.sh` prepares what the machine lacks and runs it there.

    .venv/bin/python -m bench.gpu_check --device cpu --tiny          # the suite's smoke run
    python3 -m bench.gpu_check --device cuda --out $OUT/gpu_check.json   # on the GPU machine
    .venv/bin/python -m bench.gpu_check --report gpu_check.json --write  # RESULTS "GPU check"
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEADING = "GPU check"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own-model"
MNIST1D_MLP = {"name": "mnist1d", "params": {"model": "mlp"}}
TINY_MNIST1D_MLP = {"name": "mnist1d", "params": {"model": "mlp", "n_train": 256, "n_test": 64}}


class Check:
    """The sizes of one run of the check: the full one, or the suite's tiny smoke run."""

    def __init__(self, *, device: str, tiny: bool) -> None:
        self.device = device
        self.tiny = tiny
        self.workload = TINY_MNIST1D_MLP if tiny else MNIST1D_MLP
        self.epochs = 2 if tiny else 5
        self.population_sizes = (2, 4) if tiny else (16, 64)
        self.shared = 2 if tiny else 4

    def trial(self, **fields: Any) -> Any:
        from lrtune.schemas.trials import TrialConfig
        from lrtune.workers.workloads import build_workload

        steps = build_workload(self.workload["name"], self.workload["params"]).steps_per_epoch
        data: dict[str, Any] = {
            "workload": self.workload,
            "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4},
            "schedule": {"policy": "cosine", "lr": 0.1, "decay_steps": self.epochs * steps},
            "epochs": self.epochs,
            "device": self.device,
        }
        return TrialConfig.model_validate({**data, **fields})


def timed_trial(config: Any) -> dict[str, Any]:
    """One `run_trial`: its status, seconds per epoch after the first, and its last metrics."""
    from lrtune.workers.trial import run_trial

    rows: list[Any] = []
    started = time.perf_counter()
    outcome = run_trial(config, rows.append)
    wall = time.perf_counter() - started
    ends = [row.elapsed_s for row in rows]
    later = [b - a for a, b in itertools.pairwise(ends)]
    return {
        "status": outcome.status,
        "wall_s": round(wall, 3),
        "first_epoch_s": round(ends[0], 3) if ends else None,
        "epoch_s": round(sum(later) / len(later), 4) if later else None,
        "metrics": rows[-1].metrics if rows else {},
    }


def _trial_in_a_process(config_json: str) -> dict[str, Any]:
    """`timed_trial` in a spawned process (what a Ray trial process is)."""
    import torch
    from lrtune.schemas.trials import TrialConfig

    torch.set_num_threads(1)
    return timed_trial(TrialConfig.model_validate_json(config_json))


def check_run_trial(check: Check) -> dict[str, Any]:
    return timed_trial(check.trial())


def check_shared_device(check: Check) -> dict[str, Any]:
    """N processes train one trial each at once on the one device, against one alone."""
    config = check.trial().model_dump_json()
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        started = time.perf_counter()
        alone = pool.map(_trial_in_a_process, [config])
        alone_s = time.perf_counter() - started
    with context.Pool(check.shared) as pool:
        started = time.perf_counter()
        together = pool.map(_trial_in_a_process, [config] * check.shared)
        together_s = time.perf_counter() - started
    return {
        "processes": check.shared,
        "alone_s": round(alone_s, 2),
        "together_s": round(together_s, 2),
        "throughput_x": round(check.shared * alone_s / together_s, 2),
        "statuses": [r["status"] for r in alone + together],
        "epoch_s_alone": alone[0]["epoch_s"],
        "epoch_s_together": [r["epoch_s"] for r in together],
    }


def check_population(check: Check) -> dict[str, Any]:
    """K members as one population against the same K trials one at a time (trials per hour),
    and the chunk size `population_size` picks for them on this device."""
    from lrtune.workers.population import population_size, run_in_chunks

    from bench.bench_population import configs

    rows = []
    for k in check.population_sizes:
        members = [
            c.model_copy(update={"device": check.device})
            for c in configs(check.workload, k, check.epochs)
        ]
        chunk = population_size(members)
        started = time.perf_counter()
        run_in_chunks(members, lambda index, result: None, size=chunk)
        population_s = time.perf_counter() - started
        lone = members[: min(k, 4)]  # a sample of lone trials: their mean time stands for all
        started = time.perf_counter()
        for config in lone:
            timed_trial(config)
        lone_s = (time.perf_counter() - started) / len(lone) * k
        rows.append(
            {
                "k": k,
                "chunk": chunk,
                "population_s": round(population_s, 2),
                "lone_s": round(lone_s, 2),
                "trials_per_hour_population": round(3600 * k / population_s),
                "trials_per_hour_lone": round(3600 * k / lone_s),
                "speed_up_x": round(lone_s / population_s, 2),
            }
        )
    return {"sizes": rows}


def check_schedule_free(check: Check) -> dict[str, Any]:
    return timed_trial(
        check.trial(
            optimizer={"name": "adamw_schedulefree", "weight_decay": 1e-4},
            schedule={"policy": "fixed", "lr": 0.01},
        )
    )


def check_own_model_amp(check: Check) -> dict[str, Any]:
    """The example's train function (its own loop, AMP where the device is CUDA), through
    `run_trial` and its `TrialContext`."""
    from lrtune.workers.user_code import CodeSnapshot

    snapshot = CodeSnapshot.take([EXAMPLE])
    assert snapshot is not None
    snapshot.activate()
    params = {"width": 8, "batch_size": 32} if check.tiny else {}
    result = timed_trial(
        check.trial(
            workload={"entrypoint": "own_model.classifier:make", "params": params},
            optimizer={"name": "adamw", "weight_decay": 0.01},
            schedule={"policy": "fixed", "lr": 0.003},
            metric="val_accuracy",
            mode="max",
        )
    )
    result["amp"] = check.device == "cuda"
    return result


def check_charlm(check: Check) -> dict[str, Any]:
    params = {"seq_len": 32, "batch_size": 16, "limit_train": 128, "limit_val": 64}
    workload = {"name": "charlm", "params": params if check.tiny else {}}
    return timed_trial(
        check.trial(
            workload=workload,
            optimizer={"name": "adamw", "weight_decay": 0.01},
            schedule={"policy": "fixed", "lr": 0.003},
            epochs=2 if check.tiny else 3,
        )
    )


CHECKS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "run_trial": check_run_trial,
    "shared_device": check_shared_device,
    "population": check_population,
    "schedule_free": check_schedule_free,
    "own_model_amp": check_own_model_amp,
    "charlm": check_charlm,
}


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return str(torch.cuda.get_device_name(0))
    return (
        f"{platform.machine()} {platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )


def run_checks(check: Check) -> dict[str, Any]:
    import torch

    report: dict[str, Any] = {
        "device": device_name(check.device),
        "torch": torch.__version__,
        "tiny": check.tiny,
        "checks": {},
    }
    for name, run in CHECKS.items():
        started = time.perf_counter()
        try:
            entry = {"ok": True, **run(check)}
        except Exception as error:  # recorded, and the next check runs
            entry = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            entry["traceback"] = traceback.format_exc()[-2000:]
        entry["seconds"] = round(time.perf_counter() - started, 2)
        report["checks"][name] = entry
        print(
            f"{name}: {'ok' if entry['ok'] else entry['error']} ({entry['seconds']} s)", flush=True
        )
    return report


def section(report: dict[str, Any]) -> str:
    lines = [
        f"Device: {report['device']}; torch {report['torch']}"
        + (" (tiny smoke run)" if report["tiny"] else "")
        + ". Driven directly by `bench/gpu_check.py` (no Ray, no database).",
        "",
        "| check | outcome | seconds | what it measured |",
        "| --- | --- | ---: | --- |",
    ]
    for name, entry in report["checks"].items():
        measured = {k: v for k, v in entry.items() if k not in ("ok", "seconds", "traceback")}
        outcome = "ok" if entry["ok"] else "**failed**"
        lines.append(f"| {name} | {outcome} | {entry['seconds']} | `{json.dumps(measured)}` |")
    lines += [
        "",
        "Reproduce: `bash bench/gpu_check.sh prepare` here, then `bash bench/gpu_check.sh run` "
        "on the GPU machine (see its header).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the suite's smoke sizes")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--report", type=Path, help="read a report instead of running")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    if args.report:
        report = json.loads(args.report.read_text())
    else:
        report = run_checks(Check(device=args.device, tiny=args.tiny))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    body = section(report)
    print(body)
    if args.write:
        from bench.results_file import write_section

        write_section(HEADING, body)
    if not all(entry["ok"] for entry in report["checks"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
