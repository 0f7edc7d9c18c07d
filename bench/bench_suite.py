"""The test suite's own time: `make test` (with PostgreSQL) and `make test-fast` from a fresh clone.

For each `--ref`, clones this repository at that commit into a temporary folder, installs it
(timed apart), then runs `make test-fast` (where the commit has it) and `make test` with
LRTUNE_TEST_POSTGRES_URL set, noting the load average before and after each. Each run's log
is kept under bench/.cache/suite/<commit>/ and parsed for pytest's summary line and its slowest
tests; `--write` records the section "Test suite" of bench/RESULTS.md from the logs of every
ref given, in order (the first is "before"). Nothing else should run meanwhile.

    .venv/bin/python -m bench.bench_suite --ref 572ed83 --ref HEAD --write
    .venv/bin/python -m bench.bench_suite --ref HEAD --fast-only     # make test-fast alone
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.results_file import machine_line, write_section

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache" / "suite"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SUMMARY = re.compile(r"^=+ (.*(?:passed|failed|error).*) in ([\d.]+)s", re.M)
SLOWEST = re.compile(r"^([\d.]+)s (call|setup|teardown) +(\S+)$", re.M)


@dataclass
class Run:
    """One command's run: its wall-clock, pytest's summary and the load around it."""

    command: str
    seconds: float
    returncode: int
    summary: str
    load_before: float
    load_after: float


def _commit(ref: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _timed(command: list[str], *, cwd: Path, log: Path, env: dict[str, str]) -> Run:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    summary = SUMMARY.findall(log.read_text(errors="replace"))
    return Run(
        command=" ".join(command),
        seconds=round(seconds, 1),
        returncode=done.returncode,
        summary=summary[-1][0] if summary else "(no summary line)",
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
    )


def measure(ref: str, *, fast_only: bool) -> Path:
    """Clone `ref`, install it, run its suites; the folder with their logs and runs.json."""
    commit = _commit(ref)
    folder = CACHE / commit
    folder.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Run] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    with tempfile.TemporaryDirectory(prefix="lrtune-suite-") as tmp:
        clone = Path(tmp) / "lrtune"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", commit], check=True)
        runs["install"] = _timed(
            ["make", ".venv/.installed-stamp"], cwd=clone, log=folder / "install.log", env=env
        )
        has_fast = (
            subprocess.run(["make", "-n", "test-fast"], cwd=clone, capture_output=True).returncode
            == 0
        )
        if has_fast:
            runs["test-fast"] = _timed(
                ["make", "test-fast"], cwd=clone, log=folder / "test-fast.log", env=env
            )
        if not fast_only:
            runs["test"] = _timed(
                ["make", "test", "PYTEST_ARGS=--durations=25"],
                cwd=clone,
                log=folder / "test.log",
                env={**env, "LRTUNE_TEST_POSTGRES_URL": POSTGRES_URL},
            )
    (folder / "runs.json").write_text(
        json.dumps({name: asdict(run) for name, run in runs.items()}, indent=2)
    )
    for name, run in runs.items():
        print(f"{commit} {name}: {run.seconds:.0f} s, {run.summary} (rc {run.returncode})")
    return folder


def slowest(log: Path, count: int = 25) -> list[tuple[float, str, str]]:
    """The slowest tests a run listed: (seconds, phase, test id)."""
    found = SLOWEST.findall(log.read_text(errors="replace")) if log.exists() else []
    return sorted(((float(s), phase, test) for s, phase, test in found), reverse=True)[:count]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def report(refs: list[str]) -> str:
    rows = []
    latest: Path | None = None
    for label, ref in zip(["before", *["after"] * (len(refs) - 1)], refs, strict=False):
        commit = _commit(ref)
        folder = CACHE / commit
        runs = json.loads((folder / "runs.json").read_text())
        if "test" in runs:
            latest = folder  # the slowest tests come from the last full run
        for name in ("test", "test-fast"):
            if name in runs:
                run = runs[name]
                rows.append(
                    f"| {label} ({commit}) | `make {name}` | {_minutes(run['seconds'])} | "
                    f"{run['summary']} | {run['load_before']} / {run['load_after']} |"
                )
            else:
                makefile = subprocess.run(
                    ["git", "-C", str(ROOT), "show", f"{commit}:Makefile"],
                    capture_output=True,
                    text=True,
                ).stdout
                why = "not run" if f"\n{name}:" in makefile else "no such target"
                rows.append(f"| {label} ({commit}) | `make {name}` | {why} | | |")
    assert latest is not None, "no ref here has a full run"
    slow = "\n".join(
        f"| {seconds:.1f} s | {phase} | `{test}` |"
        for seconds, phase, test in slowest(latest / "test.log")
    )
    table = "\n".join(rows)
    return f"""Machine: {machine_line()}. Each ref cloned afresh, installed (not timed here), then
run alone; `make test` with LRTUNE_TEST_POSTGRES_URL set (PostgreSQL at 127.0.0.1:5432), as CI
runs it. Targets: `make test` at most 15 minutes, `make test-fast` at most 3.

| commit | command | wall-clock (with lint) | pytest's summary | load before / after |
| --- | --- | ---: | --- | --- |
{table}

The 25 slowest tests of the last full `make test` above:

| seconds | phase | test |
| ---: | --- | --- |
{slow}

Reproduce: `.venv/bin/python -m bench.bench_suite --ref <before> --ref HEAD --write`."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", action="append", required=True, help="repeatable, before first")
    parser.add_argument("--fast-only", action="store_true", help="make test-fast alone")
    parser.add_argument("--report-only", action="store_true", help="parse the kept logs only")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    if not args.report_only:
        for ref in args.ref:
            measure(ref, fast_only=args.fast_only)
    body = report(args.ref)
    print(body)
    if args.write:
        write_section("Test suite", body)


if __name__ == "__main__":
    main()
