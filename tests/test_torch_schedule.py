"""The torch adapter: parameter groups by name rule, and the driver's rates on real optimizers
(plateau's against torch's ReduceLROnPlateau fed the same metrics)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


# --- plateau: the driver fed the metric after every epoch -------------------------------------


@st.composite
def _plateau_runs(draw: st.DrawFn) -> tuple[dict[str, Any], list[ParamGroupRule], int, list[float]]:
    lr = draw(st.floats(1e-3, 1.0))
    spec: dict[str, Any] = {
        "policy": "plateau",
        "lr": lr,
        "mode": draw(st.sampled_from(["min", "max"])),
        "factor": draw(st.floats(0.05, 0.9)),
        "patience": draw(st.integers(0, 3)),
        "cooldown": draw(st.integers(0, 2)),
        "min_lr": lr * draw(st.sampled_from([0.0, 1e-3, 0.1])),
        "eps": draw(st.sampled_from([0.0, 1e-8, 1e-4])),
    }
    steps_per_epoch = draw(st.integers(1, 12))
    if draw(st.booleans()):
        spec["warmup_steps"] = draw(st.integers(1, 3 * steps_per_epoch))
        spec["warmup_start_lr"] = draw(st.floats(0.0, lr))
    rules = draw(
        st.sampled_from(
            [[], RULES, [ParamGroupRule(match="*.weight", lr_mult=draw(st.floats(0.0, 3.0)))]]
        )
    )
    epochs = draw(st.integers(1, 30))
    metrics = draw(
        st.lists(
            st.sampled_from([1.0, 0.9, 0.9, 0.8, 1.2, math.nan]), min_size=epochs, max_size=epochs
        )
    )
    return spec, rules, steps_per_epoch, metrics


@settings(max_examples=60, deadline=None)
@given(_plateau_runs())
def test_plateau_driver_is_torch_reduce_lr_on_plateau_on_every_group(
    run: tuple[dict[str, Any], list[ParamGroupRule], int, list[float]],
) -> None:
    data, rules, steps_per_epoch, metrics = run
    spec = parse_schedule(data)
    model = _adapter_model()
    ours = torch.optim.SGD(build_param_groups(model, rules), lr=123.0)
    driver = ScheduleDriver(ours, spec, total_steps=steps_per_epoch * len(metrics))
    # torch's side: each group from lr x its multiplier, min_lr scaled the same way, a LambdaLR
    # over the warmup, ReduceLROnPlateau fed the epochs that end once the warmup is over.
    theirs = torch.optim.SGD(build_param_groups(model, rules), lr=123.0)
    mults = [group["lr_mult"] for group in theirs.param_groups]
    warmup, start = spec.warmup_steps, spec.warmup_start_lr
    for group, mult in zip(theirs.param_groups, mults, strict=True):
        group["initial_lr"] = group["lr"] = mult if warmup else spec.lr * mult
    ramp = (
        torch.optim.lr_scheduler.LambdaLR(
            theirs, lambda t: start + (spec.lr - start) * (t / warmup) if t < warmup else spec.lr
        )
        if warmup
        else None
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        theirs,
        mode=spec.mode,
        factor=spec.factor,
        patience=spec.patience,
        cooldown=spec.cooldown,
        min_lr=[spec.min_lr * m for m in mults],
        eps=spec.eps,
    )
    done = 0
    for value in metrics:
        for _ in range(steps_per_epoch):
            assert [g["lr"] for g in ours.param_groups] == pytest.approx(
                [g["lr"] for g in theirs.param_groups], rel=1e-12, abs=0
            )
            ours.step()  # no gradients: only the step counters torch checks move
            theirs.step()
            done += 1
            driver.step()
            if ramp is not None and done <= warmup:
                ramp.step()
        driver.on_epoch_end(value)
        if done >= warmup:
            plateau.step(value)
    assert [g["lr"] for g in ours.param_groups] == pytest.approx(
        [g["lr"] for g in theirs.param_groups], rel=1e-12, abs=0
    )
    # The base rate is the preview's, given the same metrics at the same steps.
    ends = [steps_per_epoch * (e + 1) for e in range(len(metrics))]
    preview = learning_rates(spec, np.arange(done + 1), metrics=metrics, epoch_ends=ends)
    assert [driver.rate(t) for t in range(done + 1)] == preview.tolist()


def test_plateau_driver_resumes_from_its_state_with_the_metrics_seen() -> None:
    spec = parse_schedule({"policy": "plateau", "lr": 0.1, "patience": 0, "factor": 0.5})
    model = _adapter_model()
    optimizer = torch.optim.SGD(build_param_groups(model, RULES), lr=1.0)
    driver = ScheduleDriver(optimizer, spec)
    for value in (1.0, 1.0, 1.0):
        for _ in range(4):
            driver.step()
        driver.on_epoch_end(value)
    assert driver.rate(driver.t) == pytest.approx(0.025)  # two epochs without improvement
    resumed = ScheduleDriver(torch.optim.SGD(build_param_groups(model, RULES), lr=1.0), spec)
    resumed.load_state_dict(driver.state_dict())
    assert resumed.get_last_lr() == driver.get_last_lr()
    assert resumed.t == 12 and resumed.metrics == [1.0, 1.0, 1.0]


def test_other_policies_ignore_the_metric() -> None:
    optimizer = torch.optim.SGD(build_param_groups(_adapter_model(), RULES), lr=1.0)
    driver = ScheduleDriver(optimizer, SPEC, total_steps=40)
    before = driver.get_last_lr()
    driver.on_epoch_end(0.5)
    assert driver.get_last_lr() == before and driver.metrics == []
