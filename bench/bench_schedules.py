"""Time `learning_rates` over 1,000,000 steps for every policy; `--write` records it in RESULTS.md.

Run: .venv/bin/python bench/bench_schedules.py [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from lrtune.schemas.schedules import parse_schedule
from lrtune.workers.schedule_math import learning_rates

STEPS = 1_000_000
REPEATS = 5
TARGET_MS = 50.0
HEADING = "## Schedule math (issue 2)"
RESULTS = Path(__file__).with_name("RESULTS.md")

# Durations span the whole range, so clamped policies do their full work on every step.
SPECS: list[dict[str, Any]] = [
    {"policy": "fixed", "lr": 0.1},
    {"policy": "step", "lr": 0.1, "step_size": 30_000},
    {"policy": "multistep", "lr": 0.1, "milestones": [300_000, 600_000, 900_000]},
    {"policy": "piecewise", "boundaries": [250_000, 500_000, 750_000],
     "values": [1, 0.5, 0.1, 0.01]},
    {"policy": "exponential", "lr": 0.1, "decay_rate": 0.96, "decay_steps": 10_000},
    {"policy": "natural_exp", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 10_000},
    {"policy": "inverse_time", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 10_000},
    {"policy": "polynomial", "lr": 0.1, "decay_steps": 300_000, "power": 2.0, "cycle": True},
    {"policy": "cosine", "lr": 0.1, "decay_steps": STEPS},
    {"policy": "linear_cosine", "lr": 0.1, "decay_steps": STEPS, "num_periods": 4},
    {"policy": "noisy_linear_cosine", "lr": 0.1, "decay_steps": STEPS, "num_periods": 4},
    {"policy": "clr", "base_lr": 0.001, "max_lr": 0.1, "step_size": 2000, "mode": "triangular2"},
    {"policy": "clr", "base_lr": 0.001, "max_lr": 0.1, "step_size": 2000, "mode": "exp_range",
     "gamma": 0.99999},
    {"policy": "sgdr", "eta_max": 0.1, "t_0": 1000, "t_mult": 1},
    {"policy": "sgdr", "eta_max": 0.1, "t_0": 1000, "t_mult": 2, "restart_decay": 0.8},
    {"policy": "sgdr", "eta_max": 0.1, "t_0": 1000, "t_mult": 1.5},
    {"policy": "one_cycle", "max_lr": 0.1, "total_steps": STEPS, "three_phase": True},
    {"policy": "step", "lr": 0.1, "step_size": 30_000, "warmup_steps": 10_000},
]  # fmt: skip


def _label(spec: dict[str, Any]) -> str:
    extras = [f"{key}={spec[key]}" for key in ("mode", "t_mult", "warmup_steps") if key in spec]
    return " ".join([spec["policy"], *extras])


def measure() -> list[tuple[str, float]]:
    """Best-of-REPEATS wall time in milliseconds per spec, for STEPS consecutive steps."""
    steps = np.arange(STEPS)
    figures = []
    for raw in SPECS:
        spec = parse_schedule(raw)
        learning_rates(spec, steps)  # warm caches and lazy imports before timing
        best = min(_time_once(spec, steps) for _ in range(REPEATS))
        figures.append((_label(raw), best * 1e3))
    return figures


def _time_once(spec: Any, steps: np.ndarray) -> float:
    start = time.perf_counter()
    learning_rates(spec, steps)
    return time.perf_counter() - start


def render(figures: list[tuple[str, float]]) -> str:
    lines = [
        f"| policy | ms for {STEPS:,} steps (best of {REPEATS}) | ns per step |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {label} | {ms:.1f} | {ms * 1e6 / STEPS:.1f} |" for label, ms in figures]
    return "\n".join(lines)


def section(table: str) -> str:
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    return (
        f"{HEADING}\n\n"
        f"`lrtune.workers.schedule_math.learning_rates` over t = 0 .. {STEPS - 1:,} "
        f"(target: under {TARGET_MS:.0f} ms per policy). Recorded {datetime.date.today()} on "
        f"{machine} by `bench/bench_schedules.py --write`.\n\n{table}\n"
    )


def write_section(text: str) -> None:
    """Replace this benchmark's section in RESULTS.md (or append it), leaving the others alone."""
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: text + "\n", existing, count=1)
    else:
        updated = existing.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(updated.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"record the figures in {RESULTS}")
    args = parser.parse_args(argv)
    table = render(measure())
    print(table)
    if args.write:
        write_section(section(table))
        print(f"\nwrote {HEADING!r} in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
