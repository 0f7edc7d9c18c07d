"""bench_search's pure parts, without Ray or training: a schedule compressed to a shorter
horizon, the fresh-seed gap and its interval, the stage cache, the reference epochs and the
sizing of the lrtune arms."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from lrtune.schemas.schedules import parse_schedule
from lrtune.workers.schedule_math import learning_rates
from pydantic import ValidationError
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is not installed, it runs from the root
    import bench.search_workloads

    return bench.search_workloads


def test_the_pure_modules_import_without_ray() -> None:
    code = (
        "import sys; import bench.search_workloads, bench.search_report, bench.stage_cache, "
        "bench.search_arms, bench.search_oracle; assert 'ray' not in sys.modules, 'ray'; "
        "assert 'torch' not in sys.modules, 'torch'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_a_compressed_cosine_is_the_whole_curve_on_fewer_steps(bench: ModuleType) -> None:
    full = bench.resolve(
        "cosine", {"lr": 0.2, "alpha": 0.0, "decay_steps_frac": 1.0}, steps_per_epoch=32, epochs=12
    )
    short = bench.compress_schedule(full, horizon=3, budget=12)
    assert short.decay_steps == 96 and short.warmup_steps == 0
    # The same as resolving the point at 3 epochs: its duration is a fraction of the training.
    same = bench.resolve(
        "cosine", {"lr": 0.2, "alpha": 0.0, "decay_steps_frac": 1.0}, steps_per_epoch=32, epochs=3
    )
    assert short == same
    steps = np.arange(96)
    assert np.allclose(learning_rates(short, steps), learning_rates(full, steps * 4))


def test_fields_given_in_epochs_scale_too(bench: ModuleType) -> None:
    # exponential's default space decays every epoch: compressed, every 1/4 epoch at 3 of 12.
    full = bench.resolve(
        "exponential",
        {"lr": 0.1, "decay_rate": 0.8, "decay_steps_epochs": 1},
        steps_per_epoch=32,
        epochs=12,
    )
    assert full.decay_steps == 32
    assert bench.compress_schedule(full, horizon=3, budget=12).decay_steps == 8


def test_rounding_keeps_a_step_and_no_warmup_stays_none(bench: ModuleType) -> None:
    warm = parse_schedule({"policy": "cosine", "lr": 0.1, "decay_steps": 100, "warmup_steps": 1})
    short = bench.compress_schedule(warm, horizon=1, budget=12)
    assert short.warmup_steps == 1 and short.decay_steps == 8
    cold = parse_schedule({"policy": "sgdr", "eta_max": 0.1, "t_0": 5})
    short = bench.compress_schedule(cold, horizon=1, budget=12)
    assert short.t_0 == 1 and short.warmup_steps == 0
    # Not shorter: the schedule as it is.
    assert bench.compress_schedule(cold, horizon=12, budget=12) is cold


def test_wsd_keeps_its_decay_share_and_lists_stay_increasing(bench: ModuleType) -> None:
    wsd = parse_schedule(
        {"policy": "wsd", "lr": 0.1, "total_steps": 384, "decay_frac": 0.2, "warmup_steps": 19}
    )
    short = bench.compress_schedule(wsd, horizon=4, budget=12)
    assert (short.total_steps, short.decay_steps, short.warmup_steps) == (128, 26, 6)
    steps = parse_schedule({"policy": "multistep", "lr": 0.1, "milestones": [10, 11, 12]})
    assert bench.compress_schedule(steps, horizon=1, budget=12).milestones == [1, 2, 3]


def test_a_schedule_too_short_to_exist_is_refused(bench: ModuleType) -> None:
    cycle = parse_schedule(
        {"policy": "one_cycle", "max_lr": 0.1, "total_steps": 24, "pct_start": 0.2}
    )
    with pytest.raises(ValidationError):
        bench.compress_schedule(cycle, horizon=1, budget=12)


def test_horizons_and_rungs_of_a_budget(bench: ModuleType) -> None:
    assert bench.horizons(12) == [1, 2, 3, 4]
    assert bench.rungs(12) == [1, 3, 9]
    assert bench.horizons(3) == [1, 1, 1, 1]


def test_the_reference_is_fixed_whatever_the_oracle(bench: ModuleType) -> None:
    mlp, charlm = bench.WORKLOADS["mnist1d-mlp"], bench.WORKLOADS["charlm"]
    assert bench.reference_epochs(mlp) == 2592
    assert bench.reference_epochs(charlm) == 12 * 5 * 3 * 12
    wider = bench.Scale(
        "wider", grid=40, oracle_seeds=5, fresh_seeds=5, search_seeds=(0,), arm_share=0.25
    )
    assert bench.reference_epochs(mlp, wider) == 2592
    assert bench.arm_epochs(mlp, bench.FULL) == 648


def test_widened_rates_reach_past_the_bounds(bench: ModuleType) -> None:
    spaces: dict[str, dict[str, Any]] = {
        "cosine": {"lr": {"loguniform": [0.08, 0.25]}, "alpha": 0.0},
        "one_cycle": {"max_lr": {"loguniform": [0.125, 0.5]}},
    }
    wider = bench.widen_rates(spaces, top=1.0)
    assert wider["cosine"]["lr"] == {"loguniform": [0.08, 1.0]}
    assert wider["one_cycle"]["max_lr"] == {"loguniform": [0.125, 1.0]}
    assert spaces["cosine"]["lr"] == {"loguniform": [0.08, 0.25]}  # untouched


def test_the_gap_is_a_paired_t_interval_over_fresh_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.search_report import gap
    from bench.search_workloads import WORKLOADS

    best = {1: 0.70, 2: 0.68, 3: 0.72, 4: 0.69, 5: 0.71}
    first = {1: 0.69, 2: 0.66, 3: 0.71, 4: 0.69, 5: 0.68}
    second = {1: 0.67, 2: 0.68, 3: 0.69, 4: 0.67, 5: 0.70}
    found = gap(WORKLOADS["mnist1d-mlp"], best=best, recommended=[first, second])
    diffs = [100 * (best[f] - (first[f] + second[f]) / 2) for f in best]
    mean = float(np.mean(diffs))
    half = stats.t.ppf(0.975, 4) * stats.tstd(diffs) / math.sqrt(5)
    assert found.mean == pytest.approx(mean)
    assert (found.low, found.high) == pytest.approx((mean - half, mean + half))
    assert found.worst == pytest.approx(100 * np.mean([best[f] - second[f] for f in best]))
    assert found.method.startswith("paired t")


def test_a_loss_gap_is_in_percent_of_the_best_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.search_report import gap
    from bench.search_workloads import WORKLOADS

    best = {1: 2.00, 2: 2.00}
    worse = {1: 2.02, 2: 2.04}  # 1% and 2% above the best
    found = gap(WORKLOADS["charlm"], best=best, recommended=[worse])
    assert found.mean == pytest.approx(1.5)
    assert found.low < 1.5 < found.high


def test_the_stage_cache_resumes_and_skips_a_cut_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.stage_cache import StageCache

    path = tmp_path / "oracle-x.jsonl"
    cache = StageCache(path)
    with pytest.raises(KeyboardInterrupt), cache.session():
        cache.add("a", {"history": [0.5]})
        raise KeyboardInterrupt  # a session cut short keeps what it finished, and its time
    with path.open("a") as file:
        file.write(json.dumps({"key": "b", "result": {}})[:10])  # killed mid-line
    again = StageCache(path)
    assert "a" in again and "b" not in again
    assert again.get("a") == {"history": [0.5]}
    assert len(again.session_seconds) == 1 and again.seconds >= 0
    assert again.missing(["a", "b"]) == ["b"]
    again.add("b", {"history": []})
    assert set(StageCache(path).results) == {"a", "b"}


def test_lrtune_arms_are_sized_to_the_arms_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.search_arms import ArmRun, halving_rungs, trials_for
    from bench.search_workloads import WORKLOADS

    assert halving_rungs(9, min_epochs=1, factor=3) == [1, 3, 9]
    assert halving_rungs(12, min_epochs=1, factor=3) == [1, 4, 12]
    assert halving_rungs(1, min_epochs=2, factor=3) == [1]
    mlp = WORKLOADS["mnist1d-mlp"]
    # lrtune's default, horizon halving at 3 then 12 epochs: 15 points per policy, 3 go on:
    # 6 x (15 x 3 + 3 x 12) + 2 confirmation seeds x 6 x 12 = 630.
    assert trials_for(mlp, arm="default", target=648, budget=12, earlier=[]) == 15
    # A ladder's earlier run that spent 702 epochs where 576 were planned (12 points) scales
    # the plan: the most within 648 is 11 points (592), not 12 (702).
    ladder_run = ArmRun(
        arm="default",
        seed=0,
        policy="cosine",
        schedule={},
        epochs=702,
        trials=108,
        seconds=0,
        detail={"trials_per_policy": 12},
    )
    assert trials_for(mlp, arm="default", target=648, budget=12, earlier=[ladder_run]) == 11
    # An earlier run that spent 3 epochs per trial (probes included) sets the next run's size.
    earlier = ArmRun(
        arm="cooldown",
        seed=0,
        policy="cosine",
        schedule={},
        epochs=0,
        trials=0,
        seconds=0,
        detail={"search": 300, "probes": 60, "confirm": 144, "trials_per_policy": 20},
    )
    assert trials_for(mlp, arm="cooldown", target=648, budget=12, earlier=[earlier]) == 28
