"""The papers' claims about learning-rate schedules, measured by lrtune itself (issue 14).

Every claim runs as jobs submitted over REST to an API on a SQLite of its own, trained by a real
`lrtune worker` (one local Ray for the whole run), and read back over REST from SQL: the same
path a user's job takes. A whole claim is one or two jobs: a grid search space of fixed values
and `choice`s over the configurations to compare, `trials_per_policy` = configurations x seeds
(a grid repeats its points with new seeds), no early stopping. Rates come from lrtune's own LR
range test on each workload (`peak` = its suggested max_lr).

Writes the table to bench/RESULTS.md ("The papers' claims, here", with --write), keeps each
claim's rows in bench/claims/results.json (so one claim can be rerun alone) and draws one PNG
per claim under bench/claims/.

    .venv/bin/python -m bench.bench_claims --write                 # every claim
    .venv/bin/python -m bench.bench_claims --claim sgdr --write    # one claim group
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from lrtune.client.api import LrtuneClient
from lrtune.service.migrate import upgrade_to_head
from lrtune.workers.workloads import build_workload

from bench.claims_stats import combine, difference, fmt, verdict
from bench.local_api import running_api
from bench.results_file import machine_line, write_section

HEADING = "The papers' claims, here"
CLAIMS_DIR = Path(__file__).with_name("claims")
RESULTS_JSON = CLAIMS_DIR / "results.json"
CODE_PATH = Path(__file__).with_name("claims_code")
OPTIMIZER = {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4}  # the SGDR paper's
WORKLOADS: dict[str, dict[str, Any]] = {
    "mnist1d-mlp": {"name": "mnist1d", "params": {"model": "mlp"}},
    "mnist1d-cnn1d": {"name": "mnist1d", "params": {"model": "cnn1d"}},
    "digits-cnn": {"name": "digits", "params": {"model": "cnn"}},
}
METRIC = "val_accuracy"


# --- running jobs through the service ----------------------------------------------------------


@contextlib.contextmanager
def running_service(home: Path) -> Iterator[LrtuneClient]:
    """An API (its own process) and an `lrtune worker` (its own process, a local Ray of 2 CPUs)
    on one SQLite under `home`; yield a client of the API."""
    url = f"sqlite:///{home / 'claims.db'}"
    upgrade_to_head(url)
    env = {
        "LRTUNE_HOME": str(home),
        "LRTUNE_DATABASE_URL": url,
        "LRTUNE_CODE_PATH": str(CODE_PATH),
        "LRTUNE_CHECKPOINT_EVERY_EPOCHS": "0",  # no early stopping, no restarts: no checkpoints
    }
    with running_api(env) as base_url, open(home / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "lrtune.service.cli", "worker", "--num-cpus", "2"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with LrtuneClient(base_url, timeout=60) as client:
                yield client
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()


@dataclass
class Curve:
    """One trial's metric per epoch (values[0] is epoch 1) and the point it sampled."""

    trial_id: int
    policy: str
    point: dict[str, Any]
    seed: int
    phase: str
    values: list[float]
    # Every metric the trial reported besides `values`' (e.g. ensemble_val_accuracy): epoch ->
    # value, for the epochs that have it.
    others: dict[str, dict[int, float]] = field(default_factory=dict)

    def at(self, epoch: int) -> float:
        return self.values[epoch - 1]

    @property
    def final(self) -> float:
        return self.values[-1]


def run_job(client: LrtuneClient, spec: dict[str, Any], *, metric: str = METRIC) -> list[Curve]:
    """Submit `spec`, wait for it, and read every trial's curve back."""
    started = time.perf_counter()
    budget = spec["budget"]["epochs"]
    job = client.wait(client.submit_job(spec).id, poll_s=1.0, timeout_s=3600)
    if job.status != "succeeded":
        raise RuntimeError(f"job {job.id} ({spec.get('name')}) {job.status}: {job.error}")
    curves = []
    for trial in client.iter_trials(job.id):
        epochs = client.trial_metrics(trial.id)
        values = [e.metrics[metric] if metric in e.metrics else getattr(e, metric) for e in epochs]
        # A diverged (or failed) trial ends early, often on a NaN: it counts as accuracy 0
        # from there to the end of the budget, the worst a run can do.
        values = [v if math.isfinite(v) else 0.0 for v in values]
        if trial.status != "completed":
            values += [0.0] * (budget - len(values))
        others: dict[str, dict[int, float]] = {}
        for e in epochs:
            for name, value in e.metrics.items():
                others.setdefault(name, {})[e.epoch] = value
        curves.append(
            Curve(
                trial.id, trial.policy, trial.search_config, trial.seed, trial.phase, values, others
            )
        )
    print(
        f"  job {job.id} {spec.get('name')}: {len(curves)} trials in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return curves


def select(curves: list[Curve], policy: str, **point: Any) -> dict[int, Curve]:
    """The trials of `policy` whose point has these values, by seed."""
    chosen = {
        c.seed: c
        for c in curves
        if c.policy == policy and all(c.point.get(k) == v for k, v in point.items())
    }
    if not chosen:
        raise LookupError(f"no {policy} trial with {point}")
    return chosen


def finals(curves: dict[int, Curve], epoch: int | None = None) -> dict[int, float]:
    return {seed: c.final if epoch is None else c.at(epoch) for seed, c in curves.items()}


def job(
    name: str,
    workload: str,
    policies: list[dict[str, Any]],
    *,
    epochs: int,
    trials_per_policy: int,
    **extra: Any,
) -> dict[str, Any]:
    """A grid job without early stopping: every policy's points, each with its seeds."""
    return {
        "name": f"claims: {name} on {workload}",
        "workload": WORKLOADS[workload],
        "optimizer": OPTIMIZER,
        "metric": {"name": METRIC, "mode": "max"},
        "policies": policies,
        "budget": {
            "epochs": epochs,
            "trials_per_policy": trials_per_policy,
            "max_concurrent_trials": 2,
        },
        "search": {"algorithm": "grid", "seed": 0},
        **extra,
    }


@dataclass
class Setup:
    """What every claim needs to know of a workload: its range test's max_lr and steps."""

    workload: str
    peak: float
    min_lr: float
    steps_per_epoch: int


_setups: dict[str, Setup] = {}


def setup(client: LrtuneClient, workload: str) -> Setup:
    """lrtune's LR range test of `workload` (once per run), through the service."""
    if workload not in _setups:
        spec = {
            "kind": "range_test",
            "name": f"claims: range test of {workload}",
            "workload": WORKLOADS[workload],
            "optimizer": OPTIMIZER,
            "budget": {"epochs": 1, "trials_per_policy": 1},
        }
        created = client.submit_job(spec)
        done = client.wait(created.id, poll_s=1.0, timeout_s=900)
        if done.status != "succeeded":
            raise RuntimeError(f"range test of {workload} {done.status}: {done.error}")
        suggestion = client.range_test(done.id).suggestion
        built = build_workload(WORKLOADS[workload]["name"], WORKLOADS[workload]["params"])
        _setups[workload] = Setup(
            workload, suggestion.max_lr, suggestion.min_lr, built.steps_per_epoch
        )
        print(f"  range test of {workload}: {suggestion}", flush=True)
    return _setups[workload]


# --- the table -------------------------------------------------------------------------------


@dataclass
class Row:
    claim: str
    source: str
    paper: str
    measured: str
    holds: str
    group: str = ""


@dataclass
class Panel:
    """One axis of a claim's figure: mean curves (band: min to max over seeds) per label."""

    title: str
    groups: dict[str, list[Curve]]
    marks: list[tuple[float, str]] = field(default_factory=list)  # vertical lines (epoch, label)
    level: tuple[float, str] | None = None  # a horizontal line (value, label)


def draw(name: str, title: str, panels: list[Panel], *, ylabel: str = "val_accuracy") -> Path:
    """One PNG per claim: a panel per workload."""
    CLAIMS_DIR.mkdir(exist_ok=True)
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for label, curves in panel.groups.items():
            length = min(len(c.values) for c in curves)
            rows = [c.values[:length] for c in curves]
            epochs = range(1, length + 1)
            mean = [sum(col) / len(col) for col in zip(*rows, strict=True)]
            ax.plot(epochs, mean, label=f"{label} (n={len(curves)})")
            ax.fill_between(
                epochs,
                [min(col) for col in zip(*rows, strict=True)],
                [max(col) for col in zip(*rows, strict=True)],
                alpha=0.15,
            )
        for epoch, label in panel.marks:
            ax.axvline(epoch, color="grey", linestyle=":", linewidth=1)
            ax.annotate(label, (epoch, 0.02), xycoords=("data", "axes fraction"), fontsize=7)
        if panel.level is not None:
            ax.axhline(panel.level[0], color="black", linestyle="--", linewidth=1)
            ax.annotate(panel.level[1], (0.02, panel.level[0]), xycoords=("axes fraction", "data"))
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = CLAIMS_DIR / f"{name}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def acc(curves: dict[int, Curve], epoch: int | None = None) -> str:
    """The accuracies of `curves` at `epoch` (default: the last) as `mean ± std (n)`."""
    return fmt(list(finals(curves, epoch).values()), percent=True)


def interval(diff: Any, *, percent: bool = True) -> str:
    scale, unit = (100.0, " pts") if percent else (1.0, "")
    return (
        f"{diff.value * scale:+.2f}{unit} [{diff.low * scale:+.2f}, {diff.high * scale:+.2f}] "
        f"({diff.method})"
    )


# --- CLR (Smith 2017) --------------------------------------------------------------------------

CLR_EPOCHS = 32
CLR_STEPS = (2, 8)  # step sizes in epochs: the paper's "8 beats 2"
CLR_MODES = ("triangular", "triangular2", "exp_range")


def claim_clr(client: LrtuneClient, seeds: int) -> list[Row]:
    """Fixed rates against CLR's three modes at step sizes 2 and 8 epochs, one job a workload:
    speed to the fixed baseline, the modes, the step size, and where to stop."""
    results: dict[str, tuple[Setup, list[Curve]]] = {}
    for workload in ("mnist1d-mlp", "digits-cnn"):
        s = setup(client, workload)
        # exp_range's gamma per step: the amplitude falls to a tenth over the training.
        gamma = 0.1 ** (1 / (CLR_EPOCHS * s.steps_per_epoch))
        policies = [
            {"policy": "fixed", "search": {"lr": {"choice": [s.peak / 10, s.peak / 4, s.peak]}}},
            {
                "policy": "clr",
                "search": {
                    "base_lr": s.peak / 4,
                    "max_lr": s.peak,
                    "mode": {"choice": list(CLR_MODES)},
                    "step_size_epochs": {"choice": list(CLR_STEPS)},
                    "gamma": gamma,
                },
            },
        ]
        spec = job(
            "CLR",
            workload,
            policies,
            epochs=CLR_EPOCHS,
            trials_per_policy=len(CLR_MODES) * len(CLR_STEPS) * seeds,
        )
        results[workload] = (s, run_job(client, spec))

    source = "Smith 2017, CLR"
    speed, modes, steps, stop = [], [], [], []
    speed_v: dict[str, str] = {}
    modes_v: dict[str, str] = {}
    steps_v: dict[str, str] = {}
    stop_v: dict[str, str] = {}
    speed_panels, mode_panels, step_panels, stop_panels = [], [], [], []
    for workload, (s, curves) in results.items():
        fixed_by_lr = {
            lr: select(curves, "fixed", lr=lr) for lr in (s.peak / 10, s.peak / 4, s.peak)
        }
        best_lr = max(
            fixed_by_lr, key=lambda lr: sum(finals(fixed_by_lr[lr]).values()) / len(fixed_by_lr[lr])
        )
        fixed = fixed_by_lr[best_lr]
        target = sum(finals(fixed).values()) / len(fixed)
        clr = {
            (mode, step): select(curves, "clr", mode=mode, step_size_epochs=step)
            for mode in CLR_MODES
            for step in CLR_STEPS
        }
        triangular = clr[("triangular", 8)]

        # Speed: epochs a triangular (step 8) seed needs to reach the best fixed rate's mean final
        # accuracy; a seed that never reaches it counts as 1x (no speed-up).
        reach = {
            seed: next((e for e, v in enumerate(c.values, 1) if v >= target), None)
            for seed, c in triangular.items()
        }
        speedups = {seed: CLR_EPOCHS / e if e else 1.0 for seed, e in reach.items()}
        diff = difference(speedups, dict.fromkeys(speedups, 1.0), higher_is_better=True)
        speed_v[workload] = verdict(diff, "beats")
        reached = [e for e in reach.values() if e]
        speed.append(
            f"{workload}: fixed lr {best_lr:.3g} (best of 3) ends at {acc(fixed)} "
            f"after {CLR_EPOCHS} epochs; triangular reaches it in "
            f"{len(reached)}/{len(reach)} seeds (epochs {sorted(reached)}), speed-up "
            f"{fmt(list(speedups.values()))}x"
        )
        speed_panels.append(
            Panel(
                workload,
                {
                    f"fixed {best_lr:.3g}": list(fixed.values()),
                    "triangular, step 8": list(triangular.values()),
                },
                level=(target, "fixed's final"),
            )
        )

        # Modes: triangular2 and exp_range against triangular, final accuracy at step 8.
        parts = []
        for mode in ("triangular2", "exp_range"):
            d = difference(finals(clr[(mode, 8)]), finals(triangular), higher_is_better=True)
            modes_v[f"{workload} {mode}"] = verdict(d, "matches")
            parts.append(f"{mode} - triangular {interval(d)}")
        modes.append(
            f"{workload}: final (step 8) triangular {acc(triangular)}, "
            f"triangular2 {acc(clr[('triangular2', 8)])}, "
            f"exp_range {acc(clr[('exp_range', 8)])}; " + "; ".join(parts)
        )
        mode_panels.append(Panel(workload, {m: list(clr[(m, 8)].values()) for m in CLR_MODES}))

        # Step size: 8 epochs against 2, triangular, final accuracy.
        d = difference(finals(triangular), finals(clr[("triangular", 2)]), higher_is_better=True)
        steps_v[workload] = verdict(d, "beats")
        steps.append(
            f"{workload}: step 8 {acc(triangular)}, step 2 "
            f"{acc(clr[('triangular', 2)])}; 8 - 2 {interval(d)}"
        )
        step_panels.append(
            Panel(
                workload,
                {f"triangular, step {k}": list(clr[("triangular", k)].values()) for k in CLR_STEPS},
            )
        )

        # Stopping: the end of the first cycle (epoch 16, rate at base_lr) against the middle of
        # the next one (epoch 24, rate at max_lr), which trained half a cycle longer.
        end, middle = 2 * 8, 3 * 8
        d = difference(finals(triangular, end), finals(triangular, middle), higher_is_better=True)
        stop_v[workload] = verdict(d, "beats")
        stop.append(
            f"{workload}: triangular step 8 at epoch {end} (cycle's end) "
            f"{acc(triangular, end)}, at epoch {middle} "
            f"(mid-cycle, peak rate) {acc(triangular, middle)}; "
            f"end - mid {interval(d)}"
        )
        stop_panels.append(
            Panel(
                workload,
                {"triangular, step 8": list(triangular.values())},
                marks=[(end, "cycle end"), (middle, "mid-cycle")],
            )
        )

    draw("clr-speed", "Triangular CLR against the best fixed rate", speed_panels)
    draw("clr-modes", "CLR modes (step 8 epochs)", mode_panels)
    draw("clr-stepsize", "CLR step size 2 vs 8 epochs (triangular)", step_panels)
    draw("clr-stop", "Stop at a cycle's end or mid-cycle (triangular, step 8)", stop_panels)
    return [
        Row(
            "Triangular CLR reaches the fixed rate's final accuracy in fewer iterations",
            source,
            "CIFAR-10: 81.4% at 25,000 iterations instead of 70,000 (2.8x)",
            "<br>".join(speed),
            combine(speed_v),
        ),
        Row(
            "triangular2 and exp_range against triangular (at least as good)",
            source,
            "CIFAR-10: triangular2 81.4% at 25,000; exp_range 82.2% at 42,000 "
            "(fixed: 81.4% at 70,000)",
            "<br>".join(modes),
            combine(modes_v),
        ),
        Row(
            "A step size of 8 epochs beats 2 epochs",
            source,
            "step 2-10 epochs advised; 8 better than 2 (CIFAR-10)",
            "<br>".join(steps),
            combine(steps_v),
        ),
        Row(
            "Stopping at a cycle's end beats stopping mid-cycle",
            source,
            "accuracy peaks at each cycle's end (CIFAR-10 curves)",
            "<br>".join(stop),
            combine(stop_v),
        ),
    ]


# --- the range-test bounds against a grid -------------------------------------------------------

RANGE_EPOCHS = 16
RANGE_MAX = (0.5, 1.0, 2.0, 4.0)  # x the range test's max_lr
RANGE_BASE = (1 / 30, 1 / 10, 1 / 4, 1 / 3)  # x the range test's max_lr


def claim_range_test(client: LrtuneClient, seeds: int) -> list[Row]:
    """Triangular CLR on a 4x4 grid of (base_lr, max_lr) around the range test's max_lr M; the
    range test's own bounds (M/4, M) and (M/3, M) are points of the grid."""
    measured, panels = [], []
    verdicts: dict[str, str] = {}
    for workload in ("mnist1d-mlp", "mnist1d-cnn1d"):
        s = setup(client, workload)
        maxes = [s.peak * k for k in RANGE_MAX]
        bases = [s.peak * k for k in RANGE_BASE]
        spec = job(
            "range-test bounds",
            workload,
            [
                {
                    "policy": "clr",
                    "search": {
                        "base_lr": {"choice": bases},
                        "max_lr": {"choice": maxes},
                        "mode": "triangular",
                        "step_size_epochs": RANGE_EPOCHS // 4,
                    },
                }
            ],
            epochs=RANGE_EPOCHS,
            trials_per_policy=len(maxes) * len(bases) * seeds,
        )
        curves = run_job(client, spec)
        grid = {(b, m): select(curves, "clr", base_lr=b, max_lr=m) for b in bases for m in maxes}
        mean = {k: sum(finals(v).values()) / len(v) for k, v in grid.items()}
        best = max(mean, key=lambda k: mean[k])
        ranked = sorted(mean, key=lambda k: -mean[k])
        parts = []
        for ratio in (4, 3):
            point = (s.peak / ratio, s.peak)
            d = difference(finals(grid[point]), finals(grid[best]), higher_is_better=True)
            if point == best:
                parts.append(f"(M/{ratio}, M) is the grid's best")
                verdicts[f"{workload} M/{ratio}"] = "yes"
                continue
            verdicts[f"{workload} M/{ratio}"] = verdict(d, "matches")
            parts.append(
                f"(M/{ratio}, M) {acc(grid[point])}, "
                f"rank {ranked.index(point) + 1}/16; - best {interval(d)}"
            )
        measured.append(
            f"{workload}: range test M = {s.peak:.3g}; grid best (base {best[0]:.3g}, max "
            f"{best[1]:.3g}) {acc(grid[best])}; " + "; ".join(parts)
        )
        panels.append(
            Panel(
                workload,
                {
                    f"range test (M/4, M), M={s.peak:.3g}": list(
                        grid[(s.peak / 4, s.peak)].values()
                    ),
                    f"grid best ({best[0]:.3g}, {best[1]:.3g})": list(grid[best].values()),
                },
            )
        )
    draw("clr-range-test", "Range-test bounds against a 4x4 grid of CLR bounds", panels)
    return [
        Row(
            "The range-test bounds (base_lr = max_lr/3 to /4) are close to the best bounds a "
            "grid finds",
            "Smith 2017, CLR",
            "CIFAR-10: the range test gave base .001, max .006 (the bounds of the 2.8x result)",
            "<br>".join(measured)
            + "<br>(the grid's best is picked on these same seeds, so it is optimistic)",
            combine(verdicts),
        )
    ]


# --- the decay family ------------------------------------------------------------------------

DECAY_EPOCHS = 16


def decay_policies(peak: float) -> list[dict[str, Any]]:
    """The decays at one peak rate over the same epochs (staircase a choice of exponential)."""
    return [
        {"policy": "fixed", "search": {"lr": peak / 4}},
        {"policy": "step", "search": {"lr": peak, "step_size_epochs": 4, "gamma": 0.5}},
        {
            "policy": "multistep",
            "search": {"lr": peak, "milestones_frac": [0.5, 0.75], "gamma": 0.1},
        },
        {
            "policy": "exponential",
            "search": {
                "lr": peak,
                "decay_rate": 0.5,
                "decay_steps_epochs": 4,
                "staircase": {"choice": [False, True]},
            },
        },
        {
            "policy": "inverse_time",
            "search": {"lr": peak, "decay_rate": 1.0, "decay_steps_epochs": 2},
        },
        {
            "policy": "polynomial",
            "search": {"lr": peak, "end_lr": peak / 100, "power": 1.0, "decay_steps_frac": 1.0},
        },
        {"policy": "cosine", "search": {"lr": peak, "alpha": 0.0, "decay_steps_frac": 1.0}},
        {
            "policy": "linear_cosine",
            "search": {"lr": peak, "num_periods": 0.5, "decay_steps_frac": 1.0},
        },
    ]


def claim_decay(client: LrtuneClient, seeds: int) -> list[Row]:
    stair, rank, stair_panels, rank_panels = [], [], [], []
    stair_v: dict[str, str] = {}
    rank_v: dict[str, str] = {}
    for workload in ("mnist1d-mlp", "digits-cnn"):
        s = setup(client, workload)
        # Every policy gets 2 x seeds trials (exponential's two staircase points x seeds).
        curves = run_job(
            client,
            job(
                "decay family",
                workload,
                decay_policies(s.peak),
                epochs=DECAY_EPOCHS,
                trials_per_policy=2 * seeds,
            ),
        )
        continuous = select(curves, "exponential", staircase=False)
        staircase = select(curves, "exponential", staircase=True)
        d = difference(finals(staircase), finals(continuous), higher_is_better=True)
        stair_v[workload] = verdict(d, "matches")
        stair.append(
            f"{workload}: exponential x0.5 per 4 epochs, staircase "
            f"{acc(staircase)}, continuous "
            f"{acc(continuous)}; staircase - continuous "
            f"{interval(d)}"
        )
        stair_panels.append(
            Panel(
                workload,
                {"staircase": list(staircase.values()), "continuous": list(continuous.values())},
                marks=[(4, "drop"), (8, "drop"), (12, "drop")],
            )
        )

        by_policy = {
            p["policy"]: {seed: c for seed, c in select(curves, p["policy"]).items()}
            for p in decay_policies(s.peak)
            if p["policy"] != "exponential"
        }
        by_policy["exponential (continuous)"] = continuous
        means = {k: sum(finals(v).values()) / len(v) for k, v in by_policy.items()}
        order = sorted(means, key=lambda k: -means[k])
        best_other = next(k for k in order if k != "cosine")
        d = difference(
            finals(by_policy["cosine"]), finals(by_policy[best_other]), higher_is_better=True
        )
        rank_v[workload] = verdict(d, "matches")
        rank.append(
            f"{workload}: "
            + ", ".join(f"{k} {means[k] * 100:.1f}%" for k in order)
            + f"; cosine - {best_other} {interval(d)}"
        )
        rank_panels.append(
            Panel(
                workload,
                {k: list(by_policy[k].values()) for k in [*order[:4], "fixed"] if k in by_policy},
            )
        )
    draw("decay-staircase", "Staircase against continuous exponential decay", stair_panels)
    draw("decay-ranking", "The decays at equal epochs (top 4 and fixed)", rank_panels)
    return [
        Row(
            "Staircase and continuous decay end alike",
            "TensorFlow's decays (`staircase`); PyTorch StepLR vs ExponentialLR",
            "none published; both are offered as equivalents",
            "<br>".join(stair),
            combine(stair_v),
        ),
        Row(
            f"Which decays win at equal epochs ({DECAY_EPOCHS}, one peak rate): cosine is among "
            "the best",
            "Loshchilov & Hutter 2017; common practice",
            "none for the whole family; cosine is today's default",
            "<br>".join(rank),
            combine(rank_v),
        ),
    ]


# --- SGDR (Loshchilov & Hutter 2017) -----------------------------------------------------------

SGDR_T0 = 2  # epochs; with T_mult 2 the restarts end at epochs 2, 6, 14
SGDR_EPOCHS = 14
SGDR_ENDS = (2, 6)


def claim_sgdr(client: LrtuneClient, seeds: int) -> list[Row]:
    anytime, end, panels = [], [], []
    anytime_v: dict[str, str] = {}
    end_v: dict[str, str] = {}
    for workload in ("mnist1d-mlp", "mnist1d-cnn1d", "digits-cnn"):
        s = setup(client, workload)
        policies = [
            {
                "policy": "sgdr",
                "search": {"eta_max": s.peak, "eta_min": 0.0, "t_0_epochs": SGDR_T0, "t_mult": 2},
            },
            {"policy": "cosine", "search": {"lr": s.peak, "alpha": 0.0, "decay_steps_frac": 1.0}},
        ]
        # One point per policy: the i-th trial of each has the same seed, so pairs by seed.
        # Two configurations only: cheap enough for 5 seeds at least.
        trials = max(seeds, 5)
        curves = run_job(
            client, job("SGDR", workload, policies, epochs=SGDR_EPOCHS, trials_per_policy=trials)
        )
        sgdr, cosine = select(curves, "sgdr"), select(curves, "cosine")
        parts = []
        for epoch in SGDR_ENDS:
            d = difference(finals(sgdr, epoch), finals(cosine, epoch), higher_is_better=True)
            anytime_v[f"{workload} epoch {epoch}"] = verdict(d, "beats")
            parts.append(
                f"epoch {epoch}: SGDR {acc(sgdr, epoch)}, "
                f"cosine {acc(cosine, epoch)}, {interval(d)}"
            )
        anytime.append(f"{workload}: " + "; ".join(parts))
        d = difference(finals(sgdr), finals(cosine), higher_is_better=True)
        end_v[workload] = verdict(d, "matches")
        end.append(
            f"{workload}: epoch {SGDR_EPOCHS}: SGDR {acc(sgdr)}, "
            f"cosine {acc(cosine)}, SGDR - cosine {interval(d)}"
        )
        panels.append(
            Panel(
                f"{workload} (peak {s.peak:.3g})",
                {
                    "SGDR T_0=2, T_mult=2": list(sgdr.values()),
                    f"cosine over {SGDR_EPOCHS}": list(cosine.values()),
                },
                marks=[(e, "restart") for e in SGDR_ENDS],
            )
        )
    draw("sgdr", "SGDR (T_0 = 2 epochs, T_mult = 2) against one cosine of the full length", panels)
    source = "Loshchilov & Hutter 2017, SGDR"
    return [
        Row(
            "Anytime: at the end of each restart, SGDR (T_mult = 2) beats a full-length cosine at "
            "the same epoch",
            source,
            "WRN-28-10 CIFAR-10: good error reached earlier, at each restart's end (T_0 = 10, "
            "T_mult = 2)",
            "<br>".join(anytime),
            combine(anytime_v),
        ),
        Row(
            "At the end, SGDR matches or beats the cosine",
            source,
            "WRN-28-10: 3.74% / 18.70% error (CIFAR-10 / 100), best single model",
            "<br>".join(end),
            combine(end_v),
        ),
    ]


# --- differential learning rates (fastai) ----------------------------------------------------

FINETUNE_EPOCHS = 10
# fastai's slice(lr/10, lr) over the four layers of the cnn1d: geometric from input to head.
DIFFERENTIAL_GROUPS = [
    {"match": "features.0.", "lr_mult": 0.1},
    {"match": "features.2.", "lr_mult": 0.215},
    {"match": "features.4.", "lr_mult": 0.464},
]


def pretrain(path: Path) -> float:
    """Train mnist1d's cnn1d on the published data (data_seed 42) with a plain loop; save its
    weights to `path`; answer its validation accuracy."""
    torch.set_num_threads(1)  # a shared machine; the model is small
    workload = build_workload("mnist1d", {"model": "cnn1d"}, seed=0)
    model = workload.model
    epochs = 20
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, epochs * workload.steps_per_epoch
    )
    for epoch in range(epochs):
        model.train()
        workload.train_loader.set_epoch(epoch)
        for inputs, targets in workload.train_loader:
            optimizer.zero_grad()
            workload.loss_fn(model(inputs), targets).backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        batches = list(workload.val_loader)
        outputs = torch.cat([model(x) for x, _ in batches])
        targets = torch.cat([y for _, y in batches])
    torch.save(model.state_dict(), path)
    return float((outputs.argmax(1) == targets).float().mean())


def claim_differential(client: LrtuneClient, seeds: int, home: Path) -> list[Row]:
    """Pretrain on mnist1d (data_seed 42), fine-tune a new head and the body on 500 examples of
    other data (data_seed 7): uniform rates against lower rates for early layers, each searched
    by lrtune (cosine, 8 random rates, the best confirmed on `seeds` seeds)."""
    weights = home / "pretrained-cnn1d.pt"
    source_accuracy = pretrain(weights)
    print(f"  pretrained cnn1d: {source_accuracy:.3f} on its own validation data", flush=True)
    results = {}
    for label, groups in (("uniform", []), ("differential", DIFFERENTIAL_GROUPS)):
        spec = {
            "name": f"claims: fine-tune, {label} rates",
            "workload": {
                "entrypoint": "finetune_mnist1d:make",
                "params": {"pretrained": str(weights), "data_seed": 7, "n_train": 500},
            },
            "optimizer": OPTIMIZER,
            "metric": {"name": METRIC, "mode": "max"},
            "policies": [{"policy": "cosine", "search": {"lr": {"loguniform": [1e-3, 1.0]}}}],
            "lr_bounds": None,
            "budget": {
                "epochs": FINETUNE_EPOCHS,
                "trials_per_policy": 8,
                "max_concurrent_trials": 2,
            },
            "search": {"algorithm": "random", "seed": 0},
            "confirm": {"top_k": 1, "seeds": seeds},
            "param_groups": groups,
        }
        curves = run_job(client, spec)
        confirmed = [c for c in curves if c.phase == "confirm"]
        results[label] = ({c.seed: c for c in confirmed}, confirmed[0].point["lr"])
    uniform, uniform_lr = results["uniform"]
    differential, differential_lr = results["differential"]
    # Confirmation seeds come from the search seed alone, so both jobs ran the same seeds.
    d = difference(finals(differential), finals(uniform), higher_is_better=True)
    draw(
        "differential",
        "Fine-tuning a pretrained cnn1d: lower rates for early layers against one rate",
        [
            Panel(
                "mnist1d cnn1d, 500 examples of data_seed 7, new head",
                {
                    f"differential, lr {differential_lr:.3g}": list(differential.values()),
                    f"uniform, lr {uniform_lr:.3g}": list(uniform.values()),
                },
            )
        ],
    )
    return [
        Row(
            "Fine-tuning: lower rates for early layers beat a single rate",
            "fastai (Howard & Gugger), in the Keras write-up",
            "advice (slice(lr/100, lr) or lr/10 across groups), no single figure",
            f"mnist1d cnn1d pretrained on data_seed 42 ({source_accuracy * 100:.1f}% there), "
            f"fine-tuned on 500 examples of data_seed 7 with a new head, cosine, {FINETUNE_EPOCHS} "
            f"epochs, rate searched (8 random) and confirmed by lrtune: differential "
            f"(x0.1, 0.215, 0.464, 1 input to head; lr {differential_lr:.3g}) "
            f"{acc(differential)}, uniform (lr "
            f"{uniform_lr:.3g}) {acc(uniform)}; "
            f"differential - uniform {interval(d)}",
            verdict(d, "beats"),
        )
    ]


# --- snapshot ensembles ------------------------------------------------------------------------


SNAPSHOTS_MISSING = (
    "not measured: needs the `snapshots: M` job option (issue 14 item 2, branch `snapshots`), "
    "not merged here yet"
)


def snapshot_row(measured: str, holds: str) -> Row:
    return Row(
        "A snapshot ensemble beats the single final model",
        "Huang et al. 2017 (Snapshot Ensembles); SGDR's ensembles",
        "DenseNet: 3.4% / 17.4% error (CIFAR-10 / 100) for the cost of one run; SGDR "
        "WRN-28-10 ensembles 3.14% / 16.21% against 3.74% / 18.70%",
        measured,
        holds,
    )


SNAPSHOT_EPOCHS = 20
SNAPSHOT_CYCLE = 4  # epochs: SGDR with T_mult 1, 5 cycles, a snapshot at each cycle's end
SNAPSHOT_COUNT = 5
ENSEMBLE_METRIC = f"ensemble_{METRIC}"


def claim_snapshots(client: LrtuneClient, seeds: int) -> list[Row]:
    """Each SGDR trial's ensemble of its last snapshots (the job's `snapshots`) against the same
    trial's final model, at the last epoch (a cycle's end): paired by trial."""
    measured, panels = [], []
    verdicts: dict[str, str] = {}
    for workload in ("mnist1d-mlp", "mnist1d-cnn1d"):
        s = setup(client, workload)
        policies = [
            {
                "policy": "sgdr",
                "search": {
                    "eta_max": s.peak,
                    "eta_min": 0.0,
                    "t_0_epochs": SNAPSHOT_CYCLE,
                    "t_mult": 1,
                },
            }
        ]
        spec = job(
            "snapshot ensemble",
            workload,
            policies,
            epochs=SNAPSHOT_EPOCHS,
            trials_per_policy=max(seeds, 5),
            snapshots=SNAPSHOT_COUNT,
        )
        single = select(run_job(client, spec), "sgdr")
        ensemble = {
            seed: replace(c, values=[c.others[ENSEMBLE_METRIC][SNAPSHOT_EPOCHS]])
            for seed, c in single.items()
        }
        d = difference(finals(ensemble), finals(single), higher_is_better=True)
        verdicts[workload] = verdict(d, "beats")
        measured.append(
            f"{workload}: SGDR T_0 = {SNAPSHOT_CYCLE} epochs, T_mult 1, {SNAPSHOT_EPOCHS} epochs, "
            f"ensemble of the last {SNAPSHOT_COUNT} cycle ends {acc(ensemble)}, the final model "
            f"{acc(single)}; ensemble - single {interval(d)}"
        )
        cycle_ends = range(SNAPSHOT_CYCLE, SNAPSHOT_EPOCHS + 1, SNAPSHOT_CYCLE)
        panels.append(
            Panel(
                workload,
                {"single model (SGDR)": list(single.values())},
                marks=[(e, "snapshot") for e in cycle_ends],
                level=(
                    sum(finals(ensemble).values()) / len(ensemble),
                    f"ensemble of {SNAPSHOT_COUNT}, mean",
                ),
            )
        )
    draw("snapshots", "Snapshot ensemble (last 5 cycle ends) against the final model", panels)
    return [snapshot_row("<br>".join(measured), combine(verdicts))]


# --- main ----------------------------------------------------------------------------------------

# Each group is one or a few jobs measuring its claims; the table lists the groups in this order.
GROUPS: dict[str, Callable[..., list[Row]]] = {
    "clr": claim_clr,
    "range-test": claim_range_test,
    "decay": claim_decay,
    "sgdr": claim_sgdr,
    "snapshots": claim_snapshots,
    "differential": claim_differential,
}


def command(group: str) -> str:
    return f"`.venv/bin/python -m bench.bench_claims --claim {group} --write`"


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}


def section(results: dict[str, Any]) -> str:
    lines = [
        "Each claim measured by lrtune on the small workloads here: jobs submitted over REST to "
        "an API on its own SQLite, trained by a real `lrtune worker` (a local Ray of 2 CPUs, 2 "
        "concurrent trials), and read back over REST. A job per claim and workload: grid search "
        "spaces of fixed values and choices, each point repeated on several seeds, no early "
        "stopping; SGD momentum 0.9, weight decay 5e-4, rates centred on lrtune's LR range test "
        "of each workload (its max_lr M). mnist1d: 4,000 training / 1,000 validation signals; "
        "digits: 1,347 / 450 images.",
        "",
        "`measured here` gives mean ± sample std over seeds (n) of val_accuracy, and the "
        "difference the claim is about with its 95% interval (paired t over seeds when both "
        "sides ran the same seeds, else Welch). `holds here?`: a claim that one thing *beats* "
        "another holds (yes) when the whole interval is above 0, does not (no) when it is at or "
        "below 0, else within noise; a claim that one thing *matches* another holds unless the "
        "whole interval is below 0 ('yes (within noise)' when it holds 0). A claim that does not "
        "hold here is a result, not a failure: these are small models, few epochs and few seeds. "
        "A trial that diverged counts as accuracy 0 from its divergence to the end: where a "
        "row shows a spread of tens of points, some seeds diverged (the range test's max_lr, "
        "M, is a rate at which the digits cnn sometimes does).",
        "",
        "How each group measures (one job per workload unless said):",
        "",
        f"- `clr`: {CLR_EPOCHS} epochs; fixed at M/10, M/4, M (the best by mean final accuracy "
        "is the baseline) against CLR from M/4 to M in the three modes at step sizes 2 and 8 "
        "epochs (exp_range's gamma: the amplitude falls to a tenth over the training). Speed-up: "
        f"{CLR_EPOCHS} / the first epoch at which a triangular (step 8) seed reaches the "
        "baseline's mean final accuracy (1x when it never does). Stopping: a cycle's end (epoch "
        "16) against the next cycle's middle (epoch 24, the peak rate).",
        f"- `range-test`: triangular CLR, {RANGE_EPOCHS} epochs, step 4 epochs, on a 4x4 grid: "
        "max_lr M/2, M, 2M, 4M x base_lr M/30, M/10, M/4, M/3; the range test's own bounds are "
        "the grid points (M/4, M) and (M/3, M).",
        f"- `decay`: {DECAY_EPOCHS} epochs, every decay from the same peak M: step (x0.5 every 4 "
        "epochs), multistep (x0.1 at 50% and 75%), exponential (x0.5 per 4 epochs, staircase "
        "or continuous), inverse_time (rate 1 per 2 epochs), polynomial (linear to M/100), "
        "cosine, linear_cosine; fixed at M/4 for reference.",
        f"- `sgdr`: {SGDR_EPOCHS} epochs: SGDR eta_max M, T_0 {SGDR_T0} epochs, T_mult 2 "
        f"(restarts end at epochs 2, 6, 14) against a cosine from M over all {SGDR_EPOCHS}.",
        f"- `snapshots`: SGDR eta_max M, T_0 {SNAPSHOT_CYCLE} epochs, T_mult 1, "
        f"{SNAPSHOT_EPOCHS} epochs, `snapshots: {SNAPSHOT_COUNT}`: the trial's "
        f"`{ENSEMBLE_METRIC}` at the last epoch against its own val_accuracy.",
        "- `differential`: mnist1d's cnn1d pretrained (a plain loop, 20 epochs) on the "
        "published data, then fine-tuned through `bench/claims_code/finetune_mnist1d.py` (an "
        "entrypoint: the built-in cnn1d with the pretrained body and a new head) on 500 examples "
        "of other data (data_seed 7). Two jobs, each a cosine over "
        f"{FINETUNE_EPOCHS} epochs with its rate searched (8 random, loguniform 1e-3 to 1) and "
        "its best confirmed on the same seeds: one rate for all, and `param_groups` x0.1, "
        "x0.215, x0.464 for the three conv layers (fastai's slice(lr/10, lr)).",
        "",
        "charlm (the language model) is left out: an epoch takes about 3 s with one torch "
        'thread ("charlm seconds per epoch" above), so even the cheapest claim here (two '
        "schedules x 5 seeds x 14 epochs) is some 7 minutes of trial time on a quiet machine and "
        "several times that at the load these runs had.",
        "",
        "| claim | source | the paper's figure | measured here | holds here? |",
        "| --- | --- | --- | --- | --- |",
    ]
    runs = []
    for group in GROUPS:
        entry = results.get(group)
        if entry is not None:
            rows = entry["rows"]
            runs.append(
                f"- `{group}`: {entry['machine']}; load before/after {entry['load']}; "
                f"{entry['seconds']:.0f} s. Reproduce: {command(group)}"
            )
        elif group == "snapshots":
            rows = [asdict(snapshot_row(SNAPSHOTS_MISSING, "not measured"))]
        else:
            continue
        for row in rows:
            lines.append(
                f"| {row['claim']} | {row['source']} | {row['paper']} | {row['measured']} | "
                f"**{row['holds']}** |"
            )
    lines += ["", "Runs (figures: `bench/claims/<claim>.png`):", "", *runs]
    if "snapshots" not in results:
        lines.append(f"- `snapshots`: not run yet. Once merged: {command('snapshots')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--claim", action="append", choices=list(GROUPS), help="default: all")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (>= 3)")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the RESULTS.md section from bench/claims/results.json",
    )
    args = parser.parse_args()
    if args.render:
        write_section(HEADING, section(load_results()))
        return
    groups = args.claim or list(GROUPS)

    results = load_results()
    with tempfile.TemporaryDirectory(prefix="lrtune-claims-") as tmp:
        home = Path(tmp)
        with running_service(home) as client:
            for group in groups:
                print(f"{group}:", flush=True)
                load_before = os.getloadavg()[0]
                started = time.perf_counter()
                try:
                    if group == "differential":
                        rows = claim_differential(client, args.seeds, home)
                    else:
                        rows = GROUPS[group](client, args.seeds)
                except Exception:  # one broken claim must not cost the others' results
                    traceback.print_exc()
                    continue
                for row in rows:
                    print(f"  {row.claim}: {row.holds}\n    {row.measured}", flush=True)
                results[group] = {
                    "rows": [asdict(row) for row in rows],
                    "machine": machine_line(),
                    "load": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
                    "seconds": time.perf_counter() - started,
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                }
                if args.write:
                    CLAIMS_DIR.mkdir(exist_ok=True)
                    RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
                    write_section(HEADING, section(results))


if __name__ == "__main__":
    main()
