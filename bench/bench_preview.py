"""End-to-end latency of POST /v1/schedules/preview against a real `lrtune api` on loopback.

Run from the repository root: .venv/bin/python -m bench.bench_preview [--write]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(client: httpx.Client, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("lrtune api did not start")


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

    port = _free_port()
    home = tempfile.mkdtemp(prefix="lrtune-bench-")
    env = {**os.environ, "LRTUNE_HOME": home}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "lrtune.service.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _wait_ready(client)
            for name, spec in SPECS.items():
                for steps, every in ((1_000_000, 1), (1_000_000, 1000), (10_000, 1)):
                    body = {"schedule": spec, "steps": steps, "every": every}
                    times = _time_requests(client, body, args.repeats)
                    rows.append((name, steps, every, statistics.median(times), min(times)))
    finally:
        server.terminate()
        server.wait(timeout=10)

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
