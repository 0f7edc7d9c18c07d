"""code.pytorch: the exported snippet, run in a fresh Python process, gives the schedule's rates.

Every policy, with and without warmup and discriminative multipliers, is stepped over the whole
training length and compared with `learning_rates` (what POST /v1/schedules/preview returns).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lrtune.schemas.schedules import POLICY_NAMES, ParamGroupRule, ScheduleSpec, parse_schedule
from lrtune.workers.code_export import pytorch_snippet
from lrtune.workers.schedule_math import learning_rates
from lrtune.workers.torch_schedule import ScheduleDriver

STEPS = 3000
RULES = [ParamGroupRule(match="head.", lr_mult=0.5), ParamGroupRule(match="hidden.*", lr_mult=0.1)]
# The optimizer lists hidden before head: the snippet must match groups by parameter name.
RULE_MULTS = [0.1, 0.5]
PARTIAL_RULES = [ParamGroupRule(match="head.*", lr_mult=3.0)]
PARTIAL_MULTS = [1.0, 3.0]

# (spec, the torch class the snippet should use, or "LambdaLR")
SPECS: list[tuple[dict[str, Any], str]] = [
    ({"policy": "fixed", "lr": 0.05}, "LambdaLR"),
    ({"policy": "step", "lr": 0.1, "step_size": 700, "gamma": 0.5}, "StepLR"),
    ({"policy": "multistep", "lr": 0.1, "milestones": [1000, 2000, 2500]}, "MultiStepLR"),
    ({"policy": "piecewise", "boundaries": [999, 1999], "values": [0.1, 0.01, 0.001]}, "LambdaLR"),
    ({"policy": "exponential", "lr": 0.1, "decay_rate": 0.999, "decay_steps": 1}, "ExponentialLR"),
    (
        {
            "policy": "exponential",
            "lr": 0.1,
            "decay_rate": 0.5,
            "decay_steps": 300,
            "staircase": True,
        },
        "StepLR",
    ),
    ({"policy": "exponential", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 300}, "LambdaLR"),
    ({"policy": "natural_exp", "lr": 0.1, "decay_rate": 0.3, "decay_steps": 400}, "LambdaLR"),
    (
        {
            "policy": "inverse_time",
            "lr": 0.1,
            "decay_rate": 0.5,
            "decay_steps": 100,
            "staircase": True,
        },
        "LambdaLR",
    ),
    ({"policy": "polynomial", "lr": 0.1, "decay_steps": 2000, "end_lr": 0.0}, "PolynomialLR"),
    (
        {"policy": "polynomial", "lr": 0.1, "decay_steps": 700, "power": 2.0, "cycle": True},
        "LambdaLR",
    ),
    ({"policy": "cosine", "lr": 0.1, "decay_steps": 2500, "alpha": 0.01}, "LambdaLR"),
    ({"policy": "linear_cosine", "lr": 0.1, "decay_steps": 2500, "num_periods": 2.0}, "LambdaLR"),
    (
        {"policy": "noisy_linear_cosine", "lr": 0.1, "decay_steps": 2500, "seed": 7},
        "LambdaLR",
    ),
    ({"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 250}, "CyclicLR"),
    (
        {"policy": "clr", "base_lr": 0.0, "max_lr": 0.1, "step_size": 200, "mode": "triangular2"},
        "CyclicLR",
    ),
    (
        {
            "policy": "clr",
            "base_lr": 0.01,
            "max_lr": 0.1,
            "step_size": 150,
            "mode": "exp_range",
            "gamma": 0.9995,
        },
        "CyclicLR",
    ),
    ({"policy": "sgdr", "eta_max": 0.1, "t_0": 300}, "CosineAnnealingWarmRestarts"),
    # T_mult = 3: torch's float logarithm misses restarts only when step() is given an epoch;
    # stepped one by one it counts T_cur in integers and agrees (restarts 7, 28, 91, 280, ...).
    (
        {"policy": "sgdr", "eta_max": 0.1, "eta_min": 0.001, "t_0": 7, "t_mult": 3},
        "CosineAnnealingWarmRestarts",
    ),
    (
        {"policy": "sgdr", "eta_max": 0.1, "t_0": 100, "t_mult": 2, "restart_decay": 0.7},
        "LambdaLR",
    ),
    ({"policy": "sgdr", "eta_max": 0.1, "t_0": 50, "t_mult": 1.5}, "LambdaLR"),
    # The first restart starts at t_0 * (t_mult - 1) / (t_mult - 1), a bit above 1 in numpy's
    # floats and a bit below in Python's math module: the snippet must use numpy's, as lrtune.
    ({"policy": "sgdr", "eta_max": 1.0, "t_0": 1, "t_mult": 2.0566099545505185}, "LambdaLR"),
    # Shorter than the training: OneCycleLR would raise past total_steps, so a LambdaLR.
    ({"policy": "one_cycle", "max_lr": 0.1, "total_steps": 2000}, "LambdaLR"),
    (
        {
            "policy": "one_cycle",
            "max_lr": 0.1,
            "total_steps": 1800,
            "three_phase": True,
            "anneal": "linear",
        },
        "LambdaLR",
    ),
    ({"policy": "one_cycle", "max_lr": 0.1, "total_steps": STEPS}, "OneCycleLR"),
    (
        {"policy": "one_cycle", "max_lr": 0.1, "total_steps": STEPS, "three_phase": True},
        "OneCycleLR",
    ),
    # Warmup in front of any policy: one LambdaLR for the whole curve.
    ({"policy": "step", "lr": 0.1, "step_size": 700, "warmup_steps": 100}, "LambdaLR"),
    (
        {
            "policy": "clr",
            "base_lr": 0.01,
            "max_lr": 0.1,
            "step_size": 250,
            "warmup_steps": 30,
            "warmup_start_lr": 0.001,
        },
        "LambdaLR",
    ),
    ({"policy": "sgdr", "eta_max": 0.1, "t_0": 7, "t_mult": 3, "warmup_steps": 50}, "LambdaLR"),
    ({"policy": "cosine", "lr": 0.1, "decay_steps": 2000, "warmup_steps": 200}, "LambdaLR"),
    # WSD counts its warmup in total_steps; here the schedule ends before the training does.
    ({"policy": "wsd", "lr": 0.1, "total_steps": 2500, "decay_frac": 0.2}, "LambdaLR"),
    (
        {
            "policy": "wsd",
            "lr": 0.1,
            "total_steps": STEPS,
            "decay_steps": 900,
            "decay_shape": "cosine",
            "min_lr_ratio": 0.1,
            "warmup_steps": 300,
            "warmup_start_lr": 0.01,
        },
        "LambdaLR",
    ),
    (
        {"policy": "wsd", "lr": 0.1, "total_steps": 2000, "decay_steps": 1800, "warmup_steps": 200},
        "LambdaLR",
    ),
    ({"policy": "inverse_sqrt", "lr": 0.1, "warmup_steps": 250}, "LambdaLR"),
    ({"policy": "inverse_sqrt", "lr": 0.1, "timescale": 40}, "LambdaLR"),
    ({"policy": "rex", "lr": 0.1, "total_steps": 2000, "min_lr": 0.001}, "LambdaLR"),
    ({"policy": "rex", "lr": 0.1, "total_steps": 2500, "warmup_steps": 100}, "LambdaLR"),
]

# The harness: a plain model and an optimizer built with an arbitrary lr, then the snippet.
HARNESS = textwrap.dedent(
    """
    import json
    import sys
    from collections import OrderedDict

    import torch

    cases = json.load(open(sys.argv[1]))
    results = []
    for case in cases:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            OrderedDict(hidden=torch.nn.Linear(2, 2), head=torch.nn.Linear(2, 2))
        )
        groups = [
            {"params": list(model.hidden.parameters())},
            {"params": list(model.head.parameters())},
        ]
        if case["optimizer"] == "adam":
            optimizer = torch.optim.Adam(groups, lr=123.0)
        else:
            optimizer = torch.optim.SGD(groups, lr=123.0, momentum=0.9)
        namespace = {"model": model, "optimizer": optimizer}
        exec(case["snippet"], namespace)
        scheduler = namespace["scheduler"]
        rates = []
        for _ in range(case["steps"]):
            rates.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()
            scheduler.step()
        results.append({"class": type(scheduler).__name__, "rates": rates})
    json.dump(results, open(sys.argv[2], "w"))
    """
)


Case = tuple[str, ScheduleSpec, str, list[ParamGroupRule], list[float]]


def _cases() -> list[Case]:
    cases: list[Case] = []
    for index, (data, expected_class) in enumerate(SPECS):
        spec = parse_schedule(data)
        cases.append((f"{spec.policy}-{index}-plain", spec, expected_class, [], [1.0, 1.0]))
        # Multipliers on every other spec, so each policy is covered with and without them.
        if index % 2 == 0 or spec.policy in ("fixed", "clr", "sgdr", "one_cycle"):
            rules, mults = (RULES, RULE_MULTS) if index % 4 < 2 else (PARTIAL_RULES, PARTIAL_MULTS)
            if spec.policy == "sgdr" and spec.eta_min > 0:
                # torch's eta_min is one number for all groups: per-group floors need a LambdaLR.
                expected_class = "LambdaLR"
            cases.append((f"{spec.policy}-{index}-groups", spec, expected_class, rules, mults))
    return cases


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run every case's snippet in one fresh Python process; results by case name."""
    folder = tmp_path_factory.mktemp("export")
    cases = _cases()
    payload = [
        {
            "snippet": pytorch_snippet(spec, param_groups=rules or None, training_steps=STEPS),
            "steps": STEPS,
            "optimizer": "adam" if index % 3 == 0 else "sgd",
        }
        for index, (_, spec, _, rules, _) in enumerate(cases)
    ]
    (folder / "cases.json").write_text(json.dumps(payload))
    (folder / "harness.py").write_text(HARNESS)
    completed = subprocess.run(
        [sys.executable, str(folder / "harness.py"), "cases.json", "out.json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads(Path(folder / "out.json").read_text())
    return {case[0]: result for case, result in zip(cases, results, strict=True)}


def test_every_policy_is_exported() -> None:
    covered = {parse_schedule(data).policy for data, _ in SPECS}
    # plateau is stepped with the metric each epoch: its own harness below.
    assert covered | {parse_schedule(data).policy for data, _, _ in PLATEAU_SPECS} == set(
        POLICY_NAMES
    )


@pytest.mark.parametrize(
    ("name", "spec", "expected_class", "rules", "mults"), _cases(), ids=[c[0] for c in _cases()]
)
def test_snippet_reproduces_the_schedule_math(
    exported: dict[str, dict[str, Any]],
    name: str,
    spec: ScheduleSpec,
    expected_class: str,
    rules: list[ParamGroupRule],
    mults: list[float],
) -> None:
    result = exported[name]
    assert result["class"] == expected_class
    got = np.asarray(result["rates"])
    expected = learning_rates(spec, np.arange(STEPS))[:, None] * np.asarray(mults)[None, :]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0.0)


def test_snippet_refuses_a_group_that_mixes_multipliers(tmp_path: Path) -> None:
    snippet = pytorch_snippet(
        parse_schedule({"policy": "fixed", "lr": 0.1}), param_groups=RULES, training_steps=10
    )
    script = tmp_path / "mixed.py"
    script.write_text(
        "import torch\n"
        "from collections import OrderedDict\n"
        "model = torch.nn.Sequential(OrderedDict(hidden=torch.nn.Linear(2, 2), "
        "head=torch.nn.Linear(2, 2)))\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=1.0)\n" + snippet
    )
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode != 0
    assert "mixes lr multipliers [0.1, 0.5]" in completed.stderr


def test_one_cycle_without_a_training_length_uses_onecyclelr_and_says_its_limit() -> None:
    snippet = pytorch_snippet(
        parse_schedule({"policy": "one_cycle", "max_lr": 1.0, "total_steps": 10})
    )
    assert "OneCycleLR(" in snippet and "cycle_momentum=False" in snippet
    assert "raises past" in snippet


# --- plateau: ReduceLROnPlateau stepped with the metric after every epoch ------------------------

PLATEAU_SPECS: list[tuple[dict[str, Any], list[ParamGroupRule], list[float]]] = [
    ({"policy": "plateau", "lr": 0.1, "patience": 1, "factor": 0.5}, [], [1.0, 1.0]),
    (
        {
            "policy": "plateau",
            "lr": 0.1,
            "mode": "max",
            "patience": 0,
            "cooldown": 2,
            "min_lr": 1e-3,
        },
        RULES,
        RULE_MULTS,
    ),
    (
        {
            "policy": "plateau",
            "lr": 0.1,
            "patience": 2,
            "factor": 0.3,
            "threshold": 0.05,
            "threshold_mode": "abs",
            "warmup_steps": 45,
            "warmup_start_lr": 0.001,
        },
        PARTIAL_RULES,
        PARTIAL_MULTS,
    ),
    # eps skips a group's reduction smaller than it: each group judges its own (as torch does).
    (
        {"policy": "plateau", "lr": 0.1, "patience": 0, "eps": 0.02, "warmup_steps": 60},
        RULES,
        RULE_MULTS,
    ),
]
PLATEAU_STEPS_PER_EPOCH = 20
PLATEAU_EPOCHS = 40

# The loop the snippet's header asks for: scheduler.step(metric) after each epoch's evaluation;
# with a warmup, warmup.step() after each of its optimizer steps and the plateau only for epochs
# that end at or after it.
PLATEAU_HARNESS = textwrap.dedent(
    """
    import json
    import sys
    from collections import OrderedDict

    import torch

    cases = json.load(open(sys.argv[1]))
    results = []
    for case in cases:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            OrderedDict(hidden=torch.nn.Linear(2, 2), head=torch.nn.Linear(2, 2))
        )
        groups = [
            {"params": list(model.hidden.parameters())},
            {"params": list(model.head.parameters())},
        ]
        optimizer = torch.optim.SGD(groups, lr=123.0, momentum=0.9)
        namespace = {"model": model, "optimizer": optimizer}
        exec(case["snippet"], namespace)
        scheduler, warmup = namespace["scheduler"], namespace.get("warmup")
        warmup_steps = case["warmup_steps"]
        rates = []
        steps_done = 0
        for metric in case["metrics"]:
            for _ in range(case["steps_per_epoch"]):
                rates.append([group["lr"] for group in optimizer.param_groups])
                optimizer.step()
                steps_done += 1
                if steps_done <= warmup_steps:
                    warmup.step()
            if steps_done >= warmup_steps:
                scheduler.step(metric)
        results.append({"class": type(scheduler).__name__, "rates": rates})
    json.dump(results, open(sys.argv[2], "w"))
    """
)


def _plateau_metrics(mode: str) -> list[float]:
    # Improves, stalls, improves a little, stalls: several reductions in 40 epochs.
    values = [1.0, 0.9, 0.9, 0.9, 0.85, 0.85, 0.849, 0.849, 0.849, 0.8] * 4
    return values if mode == "min" else [1.0 - v for v in values]


def test_plateau_snippet_is_reduce_lr_on_plateau_and_reproduces_the_preview(
    tmp_path: Path,
) -> None:
    cases = []
    for data, rules, _ in PLATEAU_SPECS:
        spec = parse_schedule(data)
        cases.append(
            {
                "snippet": pytorch_snippet(spec, param_groups=rules or None),
                "warmup_steps": spec.warmup_steps,
                "steps_per_epoch": PLATEAU_STEPS_PER_EPOCH,
                "metrics": _plateau_metrics(spec.mode),
            }
        )
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "harness.py").write_text(PLATEAU_HARNESS)
    completed = subprocess.run(
        [sys.executable, "harness.py", "cases.json", "out.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((tmp_path / "out.json").read_text())
    steps = PLATEAU_STEPS_PER_EPOCH * PLATEAU_EPOCHS
    ends = [PLATEAU_STEPS_PER_EPOCH * (e + 1) for e in range(PLATEAU_EPOCHS)]
    for (data, _, mults), case, result in zip(PLATEAU_SPECS, cases, results, strict=True):
        spec = parse_schedule(data)
        assert result["class"] == "ReduceLROnPlateau"
        base = learning_rates(spec, np.arange(steps), metrics=case["metrics"], epoch_ends=ends)
        assert len(set(base[spec.warmup_steps :].tolist())) > 1, "the rate should be reduced"
        # What a trial's driver sets on the same groups, fed the same metrics at the same steps.
        optimizer = torch.optim.SGD(
            [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_mult": m} for m in mults], lr=1.0
        )
        driver = ScheduleDriver(optimizer, spec)
        trial = []
        for metric in case["metrics"]:
            for _ in range(PLATEAU_STEPS_PER_EPOCH):
                trial.append(driver.get_last_lr())
                driver.step()
            driver.on_epoch_end(metric)
        np.testing.assert_array_equal(np.asarray(result["rates"]), np.asarray(trial))
        # Each group is the preview of the spec at its multiplier (lr, min_lr and the warmup's
        # start scaled): torch keeps a ReduceLROnPlateau state per group, eps judged on its own.
        for group, mult in enumerate(mults):
            scaled = spec.model_copy(
                update={
                    "lr": spec.lr * mult,
                    "min_lr": spec.min_lr * mult,
                    "warmup_start_lr": spec.warmup_start_lr * mult,
                }
            )
            expected = learning_rates(
                scaled, np.arange(steps), metrics=case["metrics"], epoch_ends=ends
            )
            np.testing.assert_allclose(np.asarray(trial)[:, group], expected, rtol=1e-9, atol=0)
            if spec.eps == 0.02 and mult == 0.1:
                # 0.01 -> 0.001 is a smaller change than eps for this group, not for the base.
                assert np.asarray(trial)[-1, group] == pytest.approx(0.01)
                assert base[-1] * mult == pytest.approx(0.001)
