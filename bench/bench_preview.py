"""End-to-end latency of POST /v1/schedules/preview against a real `lrtune api` on loopback.

Run from the repository root: .venv/bin/python -m bench.bench_preview [--write]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from bench.local_api import running_api
from bench.results_file import machine_line, write_section

SPECS = {
    "fixed": {"policy": "fixed", "lr": 0.1},
    "step": {"policy": "step", "lr": 0.1, "step_size": 1000},
    "exponential": {"policy": "exponential", "lr": 0.1, "decay_rate": 0.9, "decay_steps": 1000},
    "cosine": {"policy": "cosine", "lr": 0.1, "decay_steps": 1_000_000},
    "noisy_linear_cosine": {"policy": "noisy_linear_cosine", "lr": 0.1, "decay_steps": 10**6},
    "clr": {
        "policy": "clr",
        "base_lr": 0.01,
        "max_lr": 0.1,
        "step_size": 2000,
        "mode": "triangular2",
    },
    "sgdr": {"policy": "sgdr", "eta_max": 0.1, "t_0": 1000, "t_mult": 2},
    "one_cycle": {"policy": "one_cycle", "max_lr": 0.1, "total_steps": 1_000_000},
}


def _time_requests(client: httpx.Client, body: dict, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        response = client.post("/v1/schedules/preview", json=body)
        response.raise_for_status()
        response.json()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rows = []
    with running_api() as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        for name, spec in SPECS.items():
            for steps, every in ((1_000_000, 1), (1_000_000, 1000), (10_000, 1)):
                request = {"schedule": spec, "steps": steps, "every": every}
                times = _time_requests(client, request, args.repeats)
                rows.append((name, steps, every, statistics.median(times), min(times)))

    table = [
        "| policy | steps | every | points | median ms | best ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    table += [
        f"| {n} | {s:,} | {e} | {s // e:,} | {med:.1f} | {best:.1f} |"
        for n, s, e, med, best in rows
    ]
    body = "\n".join(
        [
            f"Machine: {machine_line()}.",
            "One `lrtune api` (uvicorn, one process) on loopback, httpx client in another process;",
            "each request is timed until the JSON body is parsed by the client "
            f"({args.repeats} repeats).",
            "",
            *table,
        ]
    )
    print(body)
    if args.write:
        write_section("Preview endpoint, end to end (issue 2)", body)


if __name__ == "__main__":
    main()
