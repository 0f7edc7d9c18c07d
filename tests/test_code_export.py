"""code.keras and code.huggingface: each snippet, run under its library, gives the preview's rates.

Keras 3 runs on its torch backend (no TensorFlow): the snippet's `schedule` drives a Keras
optimizer step by step. Hugging Face: the snippet's `training_args` (and `optimizers`) go to a
real `Trainer`, whose own code builds and steps the scheduler. Both are compared with
`learning_rates` (what POST /v1/schedules/preview returns) over random specs of every policy,
with and without warmup and discriminative multipliers.
"""

from __future__ import annotations

import importlib
import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, target
from hypothesis import strategies as st
from lrtune.schemas.schedules import POLICY_NAMES, ParamGroupRule, ScheduleSpec, parse_schedule
from lrtune.schemas.trials import OptimizerSpec
from lrtune.workers.code_export import (
    FORMATS,
    export_snippets,
    huggingface_snippet,
    keras_snippet,
)
from lrtune.workers.recommendation import TrialSummary, build_recommendation
from lrtune.workers.schedule_math import learning_rates

STEPS = 2000
# The optimizer lists hidden before head; the snippets match groups by parameter name.
RULES = [ParamGroupRule(match="head.", lr_mult=0.5), ParamGroupRule(match="hidden.*", lr_mult=0.1)]
RULE_MULTS = [0.1, 0.5]
PARTIAL_RULES = [ParamGroupRule(match="head.*", lr_mult=3.0)]
PARTIAL_MULTS = [1.0, 3.0]
ONES = [ParamGroupRule(match="head.", lr_mult=1.0)]  # a rule that changes nothing
MULTIPLIERS: list[tuple[list[ParamGroupRule], list[float]]] = [
    ([], [1.0, 1.0]),
    (RULES, RULE_MULTS),
    (PARTIAL_RULES, PARTIAL_MULTS),
    (ONES, [1.0, 1.0]),
]

# Keras's default float32 against the float64 preview. float32 rounds each constant to half a
# unit in its 24th bit (2**-24 relative), and a power such as gamma ** t or decay_rate ** p
# multiplies that error by its exponent (at most STEPS here): the error relative to the
# schedule's peak rate is bounded by (STEPS + 16) * 2**-24, about 1.2e-4 at 2,000 steps
# (measured over this file's random specs: below 3e-5). The error relative to the step's own
# rate is larger where the rate nears 0 (the end of a cosine: 1 + cos(pi - e) loses its digits
# in float32), which is why the stated tolerance is relative to the peak.
KERAS_FLOAT32_PEAK = (STEPS + 16) * 2.0**-24
# With keras.config.set_floatx("float64") every snippet gives the preview to this relative error
# at every step (measured: below 1e-12).
KERAS_FLOAT64 = 1e-9
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
# torch's StepLR multiplies step by step, down into float64's subnormals, where a power gives 0.
FLOAT64_TINY = float(np.finfo(np.float64).tiny)


# --- random specs of every policy -----------------------------------------------------------

_rate = st.floats(1e-4, 10.0)
_duration = st.integers(1, 700)
_factor = st.floats(0.01, 1.0)


@st.composite
def _decay_specs(draw: st.DrawFn, policy: str) -> dict[str, Any]:
    lr, duration = draw(_rate), draw(_duration)
    if policy == "fixed":
        return {"policy": policy, "lr": lr}
    if policy == "step":
        return {"policy": policy, "lr": lr, "step_size": duration, "gamma": draw(_factor)}
    if policy == "multistep":
        milestones = sorted(draw(st.sets(st.integers(1, STEPS), min_size=1, max_size=5)))
        return {"policy": policy, "lr": lr, "milestones": milestones, "gamma": draw(_factor)}
    if policy == "piecewise":
        boundaries = sorted(draw(st.sets(st.integers(0, STEPS), min_size=1, max_size=5)))
        size = len(boundaries) + 1
        values = draw(st.lists(st.floats(0.0, 10.0), min_size=size, max_size=size))
        return {"policy": policy, "boundaries": boundaries, "values": values}
    if policy in ("exponential", "natural_exp", "inverse_time"):
        return {
            "policy": policy,
            "lr": lr,
            "decay_rate": draw(_factor) if policy == "exponential" else draw(st.floats(0, 3)),
            "decay_steps": duration,
            "staircase": draw(st.booleans()),
        }
    if policy == "polynomial":
        return {
            "policy": policy,
            "lr": lr,
            "decay_steps": duration,
            "end_lr": lr * draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 1)),
            "power": draw(st.sampled_from([1.0]) | st.floats(0.1, 5)),
            "cycle": draw(st.booleans()),
        }
    if policy == "cosine":
        alpha = draw(st.sampled_from([0.0]) | st.floats(0, 1))
        return {"policy": policy, "lr": lr, "decay_steps": duration, "alpha": alpha}
    spec: dict[str, Any] = {
        "policy": policy,
        "lr": lr,
        "decay_steps": duration,
        "num_periods": draw(st.floats(0, 5)),
        "alpha": draw(st.floats(0, 1)),
        "beta": draw(st.floats(0, 0.1)),
    }
    if policy == "noisy_linear_cosine":
        spec["seed"] = draw(st.integers(0, 2**63 - 1))
        spec["initial_variance"] = draw(st.floats(0, 2))
    return spec


@st.composite
def _clr_specs(draw: st.DrawFn) -> dict[str, Any]:
    base_lr = draw(st.floats(0.0, 1.0))
    return {
        "policy": "clr",
        "base_lr": base_lr,
        "max_lr": base_lr + draw(st.floats(0.001, 5.0)),
        "step_size": draw(st.integers(1, 400)),
        "mode": draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
        "gamma": draw(st.floats(0.99, 1.0)),
    }


@st.composite
def _sgdr_specs(draw: st.DrawFn) -> dict[str, Any]:
    eta_max = draw(_rate)
    return {
        "policy": "sgdr",
        "eta_max": eta_max,
        "eta_min": eta_max * draw(st.sampled_from([0.0]) | st.floats(0, 1)),
        "t_0": draw(st.integers(1, 300)),
        "t_mult": draw(st.sampled_from([1.0, 2.0, 3.0, 10.0]) | st.floats(1.0, 4.0)),
        "restart_decay": draw(st.sampled_from([1.0]) | _factor),
    }


@st.composite
def _one_cycle_specs(draw: st.DrawFn) -> dict[str, Any]:
    three_phase = draw(st.booleans())
    return {
        "policy": "one_cycle",
        "max_lr": draw(_rate),
        "total_steps": draw(st.integers(10, STEPS + 200)),
        "pct_start": draw(st.floats(0.2, 0.45 if three_phase else 0.9)),
        "three_phase": three_phase,
        "anneal": draw(st.sampled_from(["cos", "linear"])),
        "div_factor": draw(st.floats(1.0, 100.0)),
        "final_div_factor": draw(st.floats(1.0, 1e5)),
    }


@st.composite
def _wsd_specs(draw: st.DrawFn) -> dict[str, Any]:
    # total_steps counts the warmup, so the warmup is drawn here (see _specs).
    lr, warmup = draw(_rate), draw(st.sampled_from([0]) | st.integers(1, 300))
    after_warmup = draw(st.integers(1, 1200))
    ratio = draw(st.sampled_from([0.0]) | st.floats(0.0, 1.0))
    return {
        "policy": "wsd",
        "lr": lr,
        "warmup_steps": warmup,
        # Hugging Face's warmup starts at min_lr_ratio * lr: sometimes exactly that.
        "warmup_start_lr": draw(st.sampled_from([0.0, ratio * lr]) | st.floats(0.0, 1.0)),
        "total_steps": warmup + after_warmup,
        "decay_steps": draw(st.integers(1, after_warmup)),
        "decay_shape": draw(st.sampled_from(["linear", "1-sqrt", "cosine"])),
        "min_lr_ratio": ratio,
    }


@st.composite
def _plateau_specs(draw: st.DrawFn) -> dict[str, Any]:
    lr = draw(_rate)
    return {
        "policy": "plateau",
        "lr": lr,
        "mode": draw(st.sampled_from(["min", "max"])),
        "factor": draw(st.floats(0.01, 0.99)),
        "patience": draw(st.integers(0, 3)),
        "threshold": draw(st.sampled_from([0.0, 1e-4, 0.05]) | st.floats(0.0, 0.2)),
        "threshold_mode": draw(st.sampled_from(["rel", "abs"])),
        "cooldown": draw(st.integers(0, 2)),
        "min_lr": lr * draw(st.sampled_from([0.0, 0.01]) | st.floats(0.0, 1.0)),
        "eps": draw(st.sampled_from([1e-8, 0.0]) | st.floats(0.0, 0.1)),
    }


_DECAY_POLICIES = (
    "fixed",
    "step",
    "multistep",
    "piecewise",
    "exponential",
    "natural_exp",
    "inverse_time",
    "polynomial",
    "cosine",
    "linear_cosine",
    "noisy_linear_cosine",
)
STRATEGIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    **{policy: _decay_specs(policy) for policy in _DECAY_POLICIES},
    "clr": _clr_specs(),
    "sgdr": _sgdr_specs(),
    "one_cycle": _one_cycle_specs(),
    "wsd": _wsd_specs(),
    "inverse_sqrt": st.fixed_dictionaries(
        {"policy": st.just("inverse_sqrt"), "lr": _rate},
        optional={"timescale": st.integers(1, 5000)},
    ),
    "rex": st.builds(
        lambda lr, total, share: {
            "policy": "rex",
            "lr": lr,
            "total_steps": total,
            "min_lr": lr * share,
        },
        _rate,
        st.integers(1, 1500),
        st.sampled_from([0.0]) | st.floats(0.0, 1.0),
    ),
    "plateau": _plateau_specs(),
}


@st.composite
def _specs(draw: st.DrawFn) -> ScheduleSpec:
    policy = draw(st.sampled_from(sorted(set(STRATEGIES) & set(POLICY_NAMES))))
    data = draw(STRATEGIES[policy])
    if policy != "wsd" and draw(st.booleans()):
        data["warmup_steps"] = draw(st.integers(1, 300))
        data["warmup_start_lr"] = draw(st.sampled_from([0.0]) | st.floats(0.0, 1.0))
    return parse_schedule(data)


def test_the_strategies_cover_every_policy() -> None:
    assert set(POLICY_NAMES) <= set(STRATEGIES)


def _expected(spec: ScheduleSpec, steps: int, mults: list[float]) -> np.ndarray:
    return learning_rates(spec, np.arange(steps))[:, None] * np.asarray(mults)[None, :]


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    scale = np.where(expected == 0, 1.0, np.abs(expected))
    return float(np.max(np.abs(got - expected) / scale))


def _first_line_says_inexact(code: str) -> bool:
    return code.splitlines()[0].startswith("# NOT EXACT")


# --- Keras ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras() -> ModuleType:
    """Keras 3 on its torch backend: the backend is chosen once, when keras is first imported."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    module = importlib.import_module("keras")
    assert module.backend.backend() == "torch", "this test needs KERAS_BACKEND=torch"
    return module


@contextmanager
def _floatx(keras: ModuleType, dtype: str) -> Iterator[None]:
    before = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(before)


def _keras_rates(keras: ModuleType, code: str, steps: int) -> np.ndarray:
    """The rate a Keras optimizer uses at each step: it calls the schedule with its step count."""
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    optimizer = keras.optimizers.SGD(learning_rate=namespace["schedule"])
    rates = []
    for _ in range(steps):
        rates.append(float(optimizer.learning_rate))
        optimizer.iterations.assign_add(1)
    return np.asarray(rates)


_KERAS_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.slow
@_KERAS_SETTINGS
@given(spec=_specs(), multipliers=st.sampled_from(MULTIPLIERS))
def test_keras_snippet_gives_the_preview_in_float64(
    keras: ModuleType, spec: ScheduleSpec, multipliers: tuple[list[ParamGroupRule], list[float]]
) -> None:
    rules, mults = multipliers
    assume(keras_snippet(spec).exact)  # see test_keras_says_when_restarts_are_not_exact
    snippet = keras_snippet(spec, param_groups=rules or None)
    # Keras has one rate per optimizer: multipliers other than 1 make the snippet inexact, and
    # its first line says so; what it computes is the base rate.
    assert snippet.exact == (mults == [1.0, 1.0])
    assert _first_line_says_inexact(snippet.code) == (not snippet.exact)
    with _floatx(keras, "float64"):
        got = _keras_rates(keras, snippet.code, STEPS)
    expected = _expected(spec, STEPS, [1.0])[:, 0]
    target(_relative_error(got, expected), label="relative error")
    np.testing.assert_allclose(got, expected, rtol=KERAS_FLOAT64)


@pytest.mark.slow
@_KERAS_SETTINGS
@given(spec=_specs())
def test_keras_snippet_in_float32_stays_within_the_stated_tolerance(
    keras: ModuleType, spec: ScheduleSpec
) -> None:
    snippet = keras_snippet(spec)
    assume(snippet.exact)
    with _floatx(keras, "float32"):
        got = _keras_rates(keras, snippet.code, STEPS)
    expected = _expected(spec, STEPS, [1.0])[:, 0]
    # float32 has no normal numbers below FLOAT32_TINY: a smaller rate is 0 (or a subnormal).
    atol = KERAS_FLOAT32_PEAK * float(np.max(np.abs(expected))) + FLOAT32_TINY
    target(float(np.max(np.abs(got - expected))) / atol, label="error / tolerance")
    np.testing.assert_allclose(got, expected, rtol=0.0, atol=atol)


@pytest.mark.parametrize(
    ("data", "built"),
    [
        ({"policy": "step", "lr": 0.1, "step_size": 7}, "ExponentialDecay("),
        ({"policy": "multistep", "lr": 0.1, "milestones": [3, 9]}, "PiecewiseConstantDecay("),
        (
            {"policy": "piecewise", "boundaries": [3], "values": [1.0, 0.5]},
            "PiecewiseConstantDecay(",
        ),
        (
            {"policy": "exponential", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 3},
            "ExponentialDecay(",
        ),
        (
            {"policy": "inverse_time", "lr": 0.1, "decay_rate": 0.5, "decay_steps": 3},
            "InverseTimeDecay(",
        ),
        ({"policy": "polynomial", "lr": 0.1, "decay_steps": 3, "cycle": True}, "PolynomialDecay("),
        ({"policy": "cosine", "lr": 0.1, "decay_steps": 9}, "CosineDecay("),
        ({"policy": "cosine", "lr": 0.1, "decay_steps": 9, "warmup_steps": 4}, "warmup_target=0.1"),
        (
            {"policy": "sgdr", "eta_max": 0.1, "t_0": 5, "restart_decay": 0.5},
            "CosineDecayRestarts(",
        ),
        # Keras's restarts take a float logarithm, which misses boundaries: our own class.
        ({"policy": "sgdr", "eta_max": 0.1, "t_0": 5, "t_mult": 10}, "class LrtuneSchedule("),
        ({"policy": "step", "lr": 0.1, "step_size": 7, "warmup_steps": 2}, "class LrtuneSchedule("),
        ({"policy": "clr", "base_lr": 0.1, "max_lr": 1.0, "step_size": 2}, "class LrtuneSchedule("),
        ({"policy": "fixed", "lr": 0.1}, "schedule = 0.1"),
        ({"policy": "wsd", "lr": 0.1, "total_steps": 90}, "class LrtuneSchedule("),
        ({"policy": "inverse_sqrt", "lr": 0.1}, "class LrtuneSchedule("),
        ({"policy": "rex", "lr": 0.1, "total_steps": 90}, "class LrtuneSchedule("),
        ({"policy": "plateau", "lr": 0.1}, "callback = LrtuneCallback("),
    ],
)
def test_keras_uses_the_built_in_class_where_it_is_exact(data: dict[str, Any], built: str) -> None:
    assert built in keras_snippet(parse_schedule(data)).code


def test_keras_says_when_restarts_are_not_exact() -> None:
    # Below step 2**31 this t_mult has millions of restarts: too many for the snippet's table.
    spec = parse_schedule({"policy": "sgdr", "eta_max": 1.0, "t_0": 1, "t_mult": 1.0000001})
    snippet = keras_snippet(spec)
    assert not snippet.exact
    first = snippet.code.splitlines()[0]
    assert first.startswith("# NOT EXACT in Keras: with t_mult this close to 1")
    tabled = keras_snippet(parse_schedule({**spec.model_dump(), "t_mult": 1.001}))
    assert tabled.exact and "def lrtune_restarts():" in tabled.code


def test_keras_snippet_trains_a_model_with_the_schedule(keras: ModuleType) -> None:
    """model.fit with the snippet's schedule: each batch's rate is the preview's for its step."""
    spec = parse_schedule(
        {"policy": "clr", "base_lr": 0.01, "max_lr": 0.1, "step_size": 5, "warmup_steps": 3}
    )
    namespace: dict[str, Any] = {}
    exec(keras_snippet(spec).code, namespace)
    seen: list[float] = []

    class Record(keras.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            seen.append(float(self.model.optimizer.learning_rate))

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=namespace["schedule"]), loss="mse")
    x = np.random.default_rng(0).normal(size=(40, 2)).astype("float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=3, callbacks=[Record()], verbose=0)
    assert int(model.optimizer.iterations) == 30
    np.testing.assert_allclose(seen, learning_rates(spec, np.arange(30)), rtol=1e-6)


# --- Hugging Face ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers() -> ModuleType:
    return importlib.import_module("transformers")


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(torch.relu(self.hidden(x)))
        return {"loss": torch.nn.functional.mse_loss(out.squeeze(-1), labels)}


def _dataset(size: int) -> list[dict[str, torch.Tensor]]:
    rows = torch.randn(size, 2, generator=torch.Generator().manual_seed(0))
    return [{"x": row, "labels": row.sum()} for row in rows]


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = _Tiny()
    groups = [
        {"params": list(model.hidden.parameters())},
        {"params": list(model.head.parameters())},
    ]
    return model, torch.optim.SGD(groups, lr=123.0)


def _trainer_rates(
    transformers: ModuleType, code: str, output_dir: Path, *, limit: int | None = None
) -> tuple[np.ndarray, Any]:
    """Each param group's rate at every step, as a Trainer built from the snippet steps it."""
    model, optimizer = _model_and_optimizer()
    namespace: dict[str, Any] = {"model": model, "optimizer": optimizer}
    exec(code, namespace)
    args = namespace["training_args"]
    args.output_dir = str(output_dir)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        eval_dataset=_dataset(4),  # plateau's arguments evaluate every epoch
        optimizers=namespace.get("optimizers", (None, None)),
    )
    steps = args.max_steps if args.max_steps > 0 else STEPS
    # What Trainer.train does first: the optimizer (its own unless given) and the scheduler,
    # from lr_scheduler_type, lr_scheduler_kwargs and warmup_steps (unless given).
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    # Trainer steps a ReduceLROnPlateau on evaluations only (none here: the rate holds).
    on_plateau = isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    rates = []
    for _ in range(min(steps, STEPS, limit or STEPS)):
        rates.append([group["lr"] for group in trainer.optimizer.param_groups])
        trainer.optimizer.step()
        if not on_plateau:
            trainer.lr_scheduler.step()
    return np.asarray(rates), args


@st.composite
def _training_steps(draw: st.DrawFn, spec: ScheduleSpec) -> int | None:
    # Unknown, the job's (another length), or the schedule's own horizon, where there is one.
    horizon = getattr(spec, "decay_steps", None)
    choices: list[int | None] = [None, STEPS]
    if spec.policy == "wsd":
        choices.append(spec.total_steps)
    elif isinstance(horizon, int):
        choices.append(spec.warmup_steps + horizon)
    return draw(st.sampled_from(choices))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), multipliers=st.sampled_from(MULTIPLIERS))
def test_huggingface_snippet_gives_the_preview(
    transformers: ModuleType,
    tmp_path: Path,
    data: st.DataObject,
    multipliers: tuple[list[ParamGroupRule], list[float]],
) -> None:
    rules, mults = multipliers
    spec = data.draw(_specs())
    training_steps = data.draw(_training_steps(spec))
    snippet = huggingface_snippet(spec, param_groups=rules or None, training_steps=training_steps)
    assert snippet.exact and not _first_line_says_inexact(snippet.code)
    # Without a training length the PyTorch export may pick OneCycleLR, which (as its snippet
    # says) raises past total_steps: train no longer than that.
    limit = spec.total_steps if "OneCycleLR(" in snippet.code else None
    got, args = _trainer_rates(transformers, snippet.code, tmp_path, limit=limit)
    if "optimizers = (optimizer, scheduler)" not in snippet.code:
        mults = [1.0] * got.shape[1]  # Trainer's own optimizer, every group at the base rate
    if training_steps is not None:
        assert args.max_steps == training_steps  # trained for as long as the job was
    np.testing.assert_allclose(got, _expected(spec, len(got), mults), rtol=1e-9, atol=FLOAT64_TINY)


@pytest.mark.parametrize(
    ("data", "training_steps", "scheduler_type"),
    [
        ({"policy": "fixed", "lr": 0.1}, None, "'constant'"),
        ({"policy": "fixed", "lr": 0.1, "warmup_steps": 9}, 100, "'constant_with_warmup'"),
        ({"policy": "cosine", "lr": 0.1, "decay_steps": 90, "warmup_steps": 10}, 100, "'cosine'"),
        (
            {"policy": "cosine", "lr": 0.1, "decay_steps": 90, "alpha": 0.1},
            None,
            "'cosine_with_min_lr'",
        ),
        ({"policy": "polynomial", "lr": 0.1, "decay_steps": 90, "end_lr": 0.0}, 90, "'linear'"),
        (
            {"policy": "polynomial", "lr": 0.1, "decay_steps": 90, "power": 2.0},
            None,
            "'polynomial'",
        ),
        # The cosine would swing back up past max_steps: a longer training takes the LambdaLR.
        ({"policy": "cosine", "lr": 0.1, "decay_steps": 90}, 200, None),
        # Hugging Face's warmup starts at 0.
        ({"policy": "fixed", "lr": 0.1, "warmup_steps": 9, "warmup_start_lr": 0.01}, 100, None),
        ({"policy": "step", "lr": 0.1, "step_size": 7}, 100, None),
        (
            {"policy": "wsd", "lr": 0.1, "total_steps": 100, "warmup_steps": 10},
            None,
            "'warmup_stable_decay'",
        ),
        (
            {
                "policy": "wsd",
                "lr": 0.1,
                "total_steps": 100,
                "min_lr_ratio": 0.1,
                "warmup_steps": 10,
                "warmup_start_lr": 0.010000000000000002,
            },
            100,
            "'warmup_stable_decay'",
        ),
        # WSD's decay ends at total_steps: a longer training takes the LambdaLR.
        ({"policy": "wsd", "lr": 0.1, "total_steps": 100}, 200, None),
        ({"policy": "inverse_sqrt", "lr": 0.1, "warmup_steps": 10}, 100, "'inverse_sqrt'"),
        ({"policy": "rex", "lr": 0.1, "total_steps": 100}, 100, None),
        ({"policy": "plateau", "lr": 0.1}, 100, "'reduce_lr_on_plateau'"),
    ],
)
def test_huggingface_names_its_own_scheduler_where_it_is_exact(
    data: dict[str, Any], training_steps: int | None, scheduler_type: str | None
) -> None:
    code = huggingface_snippet(parse_schedule(data), training_steps=training_steps).code
    if scheduler_type is None:
        assert "lr_scheduler_type" not in code and "optimizers = (optimizer, scheduler)" in code
    else:
        assert f"lr_scheduler_type={scheduler_type}," in code
        assert "optimizers = (" not in code


@pytest.mark.parametrize(
    ("data", "rules"),
    [
        ({"policy": "cosine", "lr": 0.05, "decay_steps": 20, "alpha": 0.1, "warmup_steps": 5}, []),
        ({"policy": "sgdr", "eta_max": 0.05, "t_0": 4, "t_mult": 2, "warmup_steps": 3}, RULES),
    ],
)
def test_huggingface_snippet_trains_with_trainer(
    transformers: ModuleType, tmp_path: Path, data: dict[str, Any], rules: list[ParamGroupRule]
) -> None:
    """Trainer.train with the snippet: each optimizer step's rate is the preview's."""
    spec = parse_schedule(data)
    steps = 25
    model, optimizer = _model_and_optimizer()
    namespace: dict[str, Any] = {"model": model, "optimizer": optimizer}
    exec(huggingface_snippet(spec, param_groups=rules, training_steps=steps).code, namespace)
    seen: list[list[float]] = []

    class Record(transformers.TrainerCallback):  # type: ignore[name-defined]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.append([group["lr"] for group in kwargs["optimizer"].param_groups])

    dataset = _dataset(steps * 4)
    args = namespace["training_args"]
    args.output_dir = str(tmp_path)
    args.per_device_train_batch_size = 4
    args.use_cpu = True
    args.save_strategy = "no"
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        optimizers=namespace.get("optimizers", (None, None)),
        callbacks=[Record()],
    )
    trainer.train()
    assert trainer.state.global_step == steps
    got = np.asarray(seen)
    mults = [0.1, 0.5] if rules else [1.0] * got.shape[1]
    np.testing.assert_allclose(got, _expected(spec, steps, mults), rtol=1e-9)


# --- the recommendation ---------------------------------------------------------------------


def test_the_recommendation_has_every_format_and_says_which_are_exact() -> None:
    spec = parse_schedule({"policy": "cosine", "lr": 0.1, "decay_steps": 900, "warmup_steps": 100})
    trial = TrialSummary(trial_id="1", policy="cosine", schedule=spec, seed=0, metric_values=[0.9])
    plain = build_recommendation(
        job_id="1", trials=[trial], metric="val_accuracy", mode="max", final=True,
        training_steps=1000,
    )  # fmt: skip
    assert set(plain.code) == set(plain.exact) == set(FORMATS)
    assert plain.exact == {name: True for name in FORMATS}
    assert "CosineDecay(" in plain.code["keras"]
    assert "lr_scheduler_type='cosine'" in plain.code["huggingface"]
    grouped = build_recommendation(
        job_id="1", trials=[trial], metric="val_accuracy", mode="max", final=True,
        param_groups=RULES, training_steps=1000,
    )  # fmt: skip
    assert grouped.exact == {"pytorch": True, "keras": False, "huggingface": True}
    first = grouped.code["keras"].splitlines()[0]
    assert first.startswith("# NOT EXACT in Keras") and "'head.': 0.5" in first
    assert "optimizers = (optimizer, scheduler)" in grouped.code["huggingface"]


@settings(max_examples=200, deadline=None)
@given(spec=_specs(), multipliers=st.sampled_from(MULTIPLIERS), steps=st.sampled_from([None, 500]))
def test_every_spec_exports_in_every_format(
    spec: ScheduleSpec,
    multipliers: tuple[list[ParamGroupRule], list[float]],
    steps: int | None,
) -> None:
    snippets = export_snippets(spec, param_groups=multipliers[0] or None, training_steps=steps)
    assert set(snippets) == set(FORMATS)
    for name, snippet in snippets.items():
        compile(snippet.code, f"<{spec.policy} {name}>", "exec")
        first = snippet.code.splitlines()[0]
        assert first.startswith("# NOT EXACT" if not snippet.exact else "# lrtune schedule (")


# --- plateau: the rate follows the metric ---------------------------------------------------


@st.composite
def _plateau_runs(draw: st.DrawFn) -> tuple[ScheduleSpec, int, list[float]]:
    """A plateau spec (maybe with a warmup), steps per epoch and each epoch's metric."""
    data = draw(_plateau_specs())
    if draw(st.booleans()):
        data["warmup_steps"] = draw(st.integers(1, 40))
        data["warmup_start_lr"] = draw(st.sampled_from([0.0]) | st.floats(0.0, 1.0))
    steps_per_epoch = draw(st.integers(1, 12))
    # A random walk with plateaus, repeats and the odd NaN: reductions, cooldowns, skips.
    moves = draw(
        st.lists(
            st.sampled_from([0.0, 0.0, 1e-5]) | st.floats(-1.0, 1.0) | st.just(math.nan),
            min_size=1,
            max_size=20,
        )
    )
    metrics = list(itertools.accumulate(moves, initial=draw(st.floats(-5.0, 5.0))))[1:]
    return parse_schedule(data), steps_per_epoch, metrics


def _plateau_expected(
    spec: ScheduleSpec, steps_per_epoch: int, metrics: list[float], mults: list[float]
) -> np.ndarray:
    """Each group's rates: torch keeps one plateau per group (its floor and eps apply to the
    group's own rate), which is the spec with lr, min_lr and the warmup scaled by the group's
    multiplier."""
    ends = [steps_per_epoch * (epoch + 1) for epoch in range(len(metrics))]
    steps = np.arange(steps_per_epoch * len(metrics))
    columns = []
    for mult in mults:
        scaled = spec.model_copy(
            update={
                name: getattr(spec, name) * mult for name in ("lr", "min_lr", "warmup_start_lr")
            }
        )
        columns.append(learning_rates(scaled, steps, metrics=metrics, epoch_ends=ends))
    return np.stack(columns, axis=1)


@_KERAS_SETTINGS
@given(run=_plateau_runs())
def test_keras_plateau_follows_the_metric(
    keras: ModuleType, run: tuple[ScheduleSpec, int, list[float]]
) -> None:
    spec, steps_per_epoch, metrics = run
    namespace: dict[str, Any] = {}
    with _floatx(keras, "float64"):
        exec(keras_snippet(spec, metric="val_accuracy").code, namespace)
        optimizer = keras.optimizers.SGD(learning_rate=namespace["schedule"])
        callback = namespace["callback"]
        callback.set_model(SimpleNamespace(optimizer=optimizer))
        got = []
        for epoch, value in enumerate(metrics):
            for _ in range(steps_per_epoch):
                got.append(float(optimizer.learning_rate))
                optimizer.iterations.assign_add(1)
            callback.on_epoch_end(epoch, {"val_accuracy": value})
    expected = _plateau_expected(spec, steps_per_epoch, metrics, [1.0])[:, 0]
    np.testing.assert_allclose(got, expected, rtol=KERAS_FLOAT64)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(run=_plateau_runs(), multipliers=st.sampled_from(MULTIPLIERS))
def test_huggingface_plateau_follows_the_metric(
    transformers: ModuleType,
    tmp_path: Path,
    run: tuple[ScheduleSpec, int, list[float]],
    multipliers: tuple[list[ParamGroupRule], list[float]],
) -> None:
    """As Trainer does it: the scheduler after each step, then at each evaluation the callbacks'
    on_evaluate and (for its own ReduceLROnPlateau) the scheduler with the metric."""
    spec, steps_per_epoch, metrics = run
    rules, mults = multipliers
    steps = steps_per_epoch * len(metrics)
    code = huggingface_snippet(
        spec, param_groups=rules or None, training_steps=steps, metric="val_accuracy"
    ).code
    model, optimizer = _model_and_optimizer()
    namespace: dict[str, Any] = {"model": model, "optimizer": optimizer}
    exec(code, namespace)
    args = namespace["training_args"]
    args.output_dir = str(tmp_path)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        eval_dataset=_dataset(4),
        optimizers=namespace.get("optimizers", (None, None)),
        callbacks=namespace.get("callbacks"),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    on_plateau = isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    got = []
    for value in metrics:
        for _ in range(steps_per_epoch):
            got.append([group["lr"] for group in trainer.optimizer.param_groups])
            trainer.optimizer.step()
            if not on_plateau:
                trainer.lr_scheduler.step()
            trainer.state.global_step += 1
        trainer.callback_handler.on_evaluate(
            args, trainer.state, trainer.control, metrics={"eval_accuracy": value}
        )
        if on_plateau:
            trainer.lr_scheduler.step(value)
    if "optimizers = (optimizer, scheduler)" not in code:
        mults = [1.0] * len(got[0])  # Trainer's own optimizer
    expected = _plateau_expected(spec, steps_per_epoch, metrics, mults)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=FLOAT64_TINY)


def test_keras_plateau_trains_with_model_fit(keras: ModuleType) -> None:
    """model.fit with the snippet's schedule and callback, on the real validation loss."""
    # mode max on a falling loss: no epoch after the first improves, so each one cuts the rate.
    spec = parse_schedule(
        {"policy": "plateau", "lr": 0.05, "mode": "max", "factor": 0.5, "patience": 0,
         "warmup_steps": 7}
    )  # fmt: skip
    namespace: dict[str, Any] = {}
    exec(keras_snippet(spec, metric="val_loss").code, namespace)
    seen: list[float] = []
    losses: list[float] = []

    class Record(keras.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            seen.append(float(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            losses.append(logs["val_loss"])

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=namespace["schedule"]), loss="mse")
    x = np.random.default_rng(0).normal(size=(20, 2)).astype("float32")
    model.fit(
        x, x[:, :1], batch_size=4, epochs=6, validation_data=(x, x[:, :1]), verbose=0,
        callbacks=[namespace["callback"], Record()],
    )  # fmt: skip
    expected = _plateau_expected(spec, 5, losses, [1.0])[:, 0]
    assert len(set(expected[7:])) > 2  # the rate was cut more than once
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("data", "rules"),
    [
        ({"policy": "plateau", "lr": 0.05, "mode": "max", "factor": 0.5, "patience": 0}, []),
        (
            {"policy": "plateau", "lr": 0.05, "mode": "max", "factor": 0.5, "patience": 0,
             "warmup_steps": 6, "warmup_start_lr": 0.01},
            RULES,
        ),
    ],
)  # fmt: skip
def test_huggingface_plateau_trains_with_trainer(
    transformers: ModuleType, tmp_path: Path, data: dict[str, Any], rules: list[ParamGroupRule]
) -> None:
    """Trainer.train, evaluating each epoch: the rates follow the real evaluation loss."""
    spec = parse_schedule(data)
    steps_per_epoch, epochs = 5, 5
    model, optimizer = _model_and_optimizer()
    namespace: dict[str, Any] = {"model": model, "optimizer": optimizer}
    code = huggingface_snippet(
        spec, param_groups=rules, training_steps=steps_per_epoch * epochs, metric="val_loss"
    ).code
    exec(code, namespace)
    seen: list[list[float]] = []
    losses: list[float] = []

    class Record(transformers.TrainerCallback):  # type: ignore[name-defined]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.append([group["lr"] for group in kwargs["optimizer"].param_groups])

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            losses.append(kwargs["metrics"]["eval_loss"])

    dataset = _dataset(steps_per_epoch * 4)
    args = namespace["training_args"]
    args.output_dir = str(tmp_path)
    args.per_device_train_batch_size = args.per_device_eval_batch_size = 4
    args.use_cpu = True
    args.save_strategy = "no"
    args.max_steps = steps_per_epoch * epochs
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        optimizers=namespace.get("optimizers", (None, None)),
        callbacks=[*namespace.get("callbacks", []), Record()],
    )
    trainer.train()
    assert len(losses) == epochs
    got = np.asarray(seen)
    mults = [0.1, 0.5] if rules else [1.0] * got.shape[1]
    expected = _plateau_expected(spec, steps_per_epoch, losses, mults)
    assert len(np.unique(expected[:, -1])) > 2  # the rate was cut more than once
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_a_schedule_free_job_exports_its_optimizer_where_it_can() -> None:
    spec = parse_schedule({"policy": "fixed", "lr": 0.01, "warmup_steps": 50})
    optimizer = OptimizerSpec(name="adamw_schedulefree")
    snippets = export_snippets(spec, training_steps=500, optimizer=optimizer)
    assert snippets["keras"].code.startswith("# NOT EXACT in Keras: Keras has no schedule-free")
    assert not snippets["keras"].exact
    hf = snippets["huggingface"]
    assert hf.exact and "schedulefree.AdamWScheduleFree(" in hf.code
    assert "optimizers = (optimizer, scheduler)" in hf.code and "lr_scheduler_type" not in hf.code
