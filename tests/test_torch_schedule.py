"""The torch adapter: parameter groups by name rule, and the driver's rates on real optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lrtune.schemas.schedules import ParamGroupRule, parse_schedule
from lrtune.workers.schedule_math import learning_rate, learning_rates
from lrtune.workers.torch_schedule import ScheduleDriver, build_param_groups

RULES = [
    ParamGroupRule(match="0.", lr_mult=0.1),
    ParamGroupRule(match="*.bias", lr_mult=0.5),
]
SPEC = parse_schedule({"policy": "one_cycle", "max_lr": 0.1, "total_steps": 40, "warmup_steps": 5})


def _adapter_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _multiplier_by_name(model: torch.nn.Module, groups: list[dict]) -> dict[str, float]:
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: group["lr_mult"] for group in groups for p in group["params"]}


def test_first_matching_rule_wins_and_unmatched_parameters_get_one() -> None:
    model = _adapter_model()
    groups = build_param_groups(model, RULES)
    assert _multiplier_by_name(model, groups) == {
        "0.weight": 0.1,  # prefix "0."
        "0.bias": 0.1,  # also matches "*.bias", but the prefix rule comes first
        "2.bias": 0.5,  # glob
        "2.weight": 1.0,  # no rule
    }
    assert [g["lr_mult"] for g in groups] == [0.1, 0.5, 1.0]


def test_empty_groups_are_dropped() -> None:
    model = _adapter_model()
    rules = [ParamGroupRule(match="encoder.", lr_mult=0.01), ParamGroupRule(match="*", lr_mult=2)]
    groups = build_param_groups(model, rules)
    assert [g["lr_mult"] for g in groups] == [2.0]
    assert len(groups[0]["params"]) == 4


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    loss = model(torch.randn(16, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("total_steps", [None, 20])
@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda groups: torch.optim.SGD(groups, lr=1.0, momentum=0.9),
        lambda groups: torch.optim.Adam(groups, lr=1.0),
        lambda groups: torch.optim.AdamW(groups, lr=1.0, weight_decay=0.01),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_each_group_gets_the_schedule_rate_times_its_multiplier(
    make_optimizer, total_steps: int | None
) -> None:
    model = _adapter_model()
    optimizer = make_optimizer(build_param_groups(model, RULES))
    driver = ScheduleDriver(optimizer, SPEC, total_steps)
    expected_curve = learning_rates(SPEC, np.arange(60))
    # 60 steps: past total_steps (when given) the driver falls back to per-step evaluation.
    for k in range(60):
        assert driver.t == k
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(expected_curve[k] * group["lr_mult"], rel=1e-15)
        assert driver.get_last_lr() == [g["lr"] for g in optimizer.param_groups]
        _train_step(model, optimizer)
        driver.step()


def test_plain_sgd_moves_each_parameter_by_its_group_rate() -> None:
    # The rate the driver sets is the one the optimizer uses: delta = -lr(t) * mult * grad.
    model = _adapter_model()
    optimizer = torch.optim.SGD(build_param_groups(model, RULES), lr=123.0)
    driver = ScheduleDriver(optimizer, SPEC)
    for _ in range(8):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        _train_step(model, optimizer)
        multipliers = _multiplier_by_name(model, optimizer.param_groups)
        for name, p in model.named_parameters():
            assert p.grad is not None
            rate = learning_rate(SPEC, driver.t) * multipliers[name]
            torch.testing.assert_close(p.detach(), before[name] - rate * p.grad)
        driver.step()


def test_groups_without_lr_mult_use_the_schedule_rate() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    spec = parse_schedule({"policy": "step", "lr": 0.5, "step_size": 3, "gamma": 0.5})
    driver = ScheduleDriver(optimizer, spec, total_steps=10)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        driver.step()
    assert rates == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]


def test_matches_torch_step_lr_on_the_same_optimizer_protocol() -> None:
    spec = parse_schedule({"policy": "step", "lr": 0.3, "step_size": 7, "gamma": 0.3})
    ours_param = torch.nn.Parameter(torch.zeros(1))
    ours_opt = torch.optim.SGD([ours_param], lr=0.3)
    driver = ScheduleDriver(ours_opt, spec)
    torch_param = torch.nn.Parameter(torch.zeros(1))
    torch_opt = torch.optim.SGD([torch_param], lr=0.3)
    scheduler = torch.optim.lr_scheduler.StepLR(torch_opt, 7, 0.3)
    for _ in range(50):
        assert driver.get_last_lr() == pytest.approx(scheduler.get_last_lr(), rel=1e-12)
        ours_opt.step()
        torch_opt.step()
        driver.step()
        scheduler.step()


def test_state_dict_resumes_at_the_same_step() -> None:
    model = _adapter_model()
    optimizer = torch.optim.Adam(build_param_groups(model, RULES), lr=1.0)
    driver = ScheduleDriver(optimizer, SPEC, total_steps=40)
    for _ in range(13):
        driver.step()
    state = driver.state_dict()

    resumed_optimizer = torch.optim.Adam(build_param_groups(model, RULES), lr=1.0)
    resumed = ScheduleDriver(resumed_optimizer, SPEC, total_steps=40)
    resumed.load_state_dict(state)
    assert resumed.t == 13
    assert resumed.get_last_lr() == driver.get_last_lr()
