"""charlm's seconds per epoch at its default params, to check the limits keep an epoch short.

One trial of the built-in charlm workload (AdamW, linear warmup then cosine) run in-process with
`run_trial`, with one torch thread (what a 1-CPU Ray trial gets: Ray sets OMP_NUM_THREADS to its
CPU share) and with every core. An epoch is the time between two reports (training, then
evaluation on the validation windows); the first epoch also builds the workload and is shown
apart, and on a fresh process it reads the corpus.

    .venv/bin/python -m bench.bench_charlm --write
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
from typing import Any

from bench.results_file import machine_line, write_section

EPOCHS = 5


def run(threads: int) -> dict[str, Any]:
    import torch
    from lrtune.schemas.trials import EpochResult, TrialConfig
    from lrtune.schemas.workloads import BUILTIN_WORKLOADS
    from lrtune.workers.trial import run_trial
    from lrtune.workers.workloads import build_workload

    torch.set_num_threads(threads)
    steps = build_workload("charlm", {}, seed=0).steps_per_epoch
    config = TrialConfig.model_validate(
        {
            "workload": {"name": "charlm"},
            "optimizer": {"name": "adamw", "weight_decay": 0.01},
            "schedule": {
                "policy": "cosine",
                "lr": 3e-3,
                "warmup_steps": steps // 2,
                "decay_steps": EPOCHS * steps - steps // 2,
                "alpha": 0.1,
            },
            "epochs": EPOCHS,
        }
    )
    rows: list[EpochResult] = []
    outcome = run_trial(config, rows.append)
    assert outcome.status == "completed", outcome
    ends = [row.elapsed_s for row in rows]
    later = [b - a for a, b in itertools.pairwise(ends)]
    info = BUILTIN_WORKLOADS["charlm"]
    return {
        "threads": threads,
        "params": {p.name: p.default for p in info.params},
        "steps": steps,
        "first": ends[0],
        "median": statistics.median(later),
        "later": later,
        "val_loss": rows[-1].val_loss,
        "bpc": rows[-1].metrics["val_bits_per_char"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = []
    for threads in (1, os.cpu_count() or 1):
        load = os.getloadavg()[0]
        results.append({**run(threads), "load": load})
    for result in results:
        print(result)
    params = ", ".join(f"{name}={value}" for name, value in results[0]["params"].items())
    lines = [
        f"Machine: {machine_line()}; `nproc` {os.cpu_count()}; load average (1, 5, 15 min) "
        f"before: {', '.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}.",
        "",
        f"Default params ({params}): {results[0]['steps']} steps per epoch. One trial of "
        f"{EPOCHS} epochs with AdamW (weight decay 0.01), half an epoch of linear warmup to "
        "3e-3, then cosine to 3e-4, through `run_trial` in one process. Seconds per epoch: the "
        "time between two epochs' reports (training and evaluation), median of epochs 2 to "
        f"{EPOCHS}; the first epoch also builds the workload (and the first run reads the "
        "corpus).",
        "",
        "| torch threads | load before | seconds per epoch (median) | epochs 2.. | first epoch | "
        f"val_loss after {EPOCHS} | val_bits_per_char |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        later = ", ".join(f"{s:.2f}" for s in r["later"])
        lines.append(
            f"| {r['threads']} | {r['load']:.1f} | **{r['median']:.2f} s** | {later} | "
            f"{r['first']:.2f} s | {r['val_loss']:.3f} | {r['bpc']:.3f} |"
        )
    lines += [
        "",
        "A Ray trial with `cpu: 1` runs like the 1-thread row. Load is the 1-minute load "
        "average as each run started: with more torch threads than idle cores the threads wait "
        "on each other, so other work on the machine slows the all-cores row the most.",
        "",
        "Reproduce: `.venv/bin/python -m bench.bench_charlm --write`.",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("charlm seconds per epoch (issue 12)", body)


if __name__ == "__main__":
    main()
