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
from lrtune.schemas.schedules import POLICY_NAMES, ParamGroupRule, ScheduleSpec, parse_schedule
from lrtune.workers.code_export import pytorch_snippet
from lrtune.workers.schedule_math import learning_rates

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
    assert covered == set(POLICY_NAMES)


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
