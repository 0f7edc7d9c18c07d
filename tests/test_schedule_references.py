"""wsd, inverse_sqrt, rex and plateau against the libraries that define them, run side by side.

Each library is stepped on a real optimizer for 10,000 updates, over random specs (hypothesis)
with and without warmup, and must agree with `learning_rates` to a relative error below 1e-6:
transformers' get_wsd_schedule and get_inverse_sqrt_schedule, timm's WSDLRScheduler,
pytorch_optimizer's REXScheduler and torch's ReduceLROnPlateau fed the same metric sequence.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lrtune.schemas.schedules import parse_schedule
from lrtune.workers.schedule_math import learning_rates

STEPS = 10_000
EXAMPLES = 12

pytest.importorskip("transformers")
pytest.importorskip("pytorch_optimizer")
from pytorch_optimizer.lr_scheduler.rex import REXScheduler  # noqa: E402
from transformers import get_inverse_sqrt_schedule, get_wsd_schedule  # noqa: E402


def _rates(
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_step: Callable[[int], None],
) -> np.ndarray:
    """The rate of every update, read before it, with `after_step(t)` after update t."""
    rates = np.empty(steps)
    parameter = optimizer.param_groups[0]["params"][0]
    for t in range(steps):
        rates[t] = optimizer.param_groups[0]["lr"]
        parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        after_step(t)
    return rates


def _sgd(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    # Relative error below 1e-6 at every step; exact zeros must be zeros on both sides.
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)


_rate = st.floats(1e-4, 1.0)
_shape = st.sampled_from(["linear", "1-sqrt", "cosine"])


@st.composite
def _wsd_specs(draw: st.DrawFn, *, warmup_starts_at_min: bool) -> dict[str, Any]:
    """WSD over the 10,000 steps (total_steps up to 12,000, so some end inside the window)."""
    total = draw(st.integers(50, 12_000))
    warmup = draw(st.integers(0, total // 3))
    lr, ratio = draw(_rate), draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
    spec: dict[str, Any] = {
        "policy": "wsd",
        "lr": lr,
        "total_steps": total,
        "decay_steps": draw(st.integers(1, total - warmup)),
        "decay_shape": draw(_shape),
        "min_lr_ratio": ratio,
        "warmup_steps": warmup,
    }
    if warmup:
        # Hugging Face's warmup starts at min_lr_ratio x lr; timm's from any rate.
        spec["warmup_start_lr"] = ratio * lr if warmup_starts_at_min else draw(_rate)
    return spec


@settings(max_examples=EXAMPLES, deadline=None)
@given(_wsd_specs(warmup_starts_at_min=True))
def test_wsd_matches_transformers_get_wsd_schedule(data: dict[str, Any]) -> None:
    spec = parse_schedule(data)
    optimizer = _sgd(spec.lr)
    scheduler = get_wsd_schedule(
        optimizer,
        num_warmup_steps=spec.warmup_steps,
        num_decay_steps=spec.decay_steps,
        num_training_steps=spec.total_steps,
        warmup_type="linear",
        decay_type=spec.decay_shape,
        min_lr_ratio=spec.min_lr_ratio,
        num_cycles=0.5,
    )
    theirs = _rates(optimizer, STEPS, lambda _: scheduler.step())
    _assert_same(learning_rates(spec, np.arange(STEPS)), theirs)


def _timm_wsd_scheduler() -> Any:
    """timm's WSDLRScheduler, loaded from the installed timm without running `timm/__init__.py`.

    That file imports timm's models and data pipeline, which import torchvision, and PyPI's
    torchvision wheels are CUDA builds whose operators do not register beside this CPU torch
    (`RuntimeError: operator torchvision::nms does not exist`); download.pytorch.org's CPU
    torchvision is not reachable here. The scheduler package (scheduler.py, wsd_lr.py) imports
    only torch, so its own files run unchanged, under an alias package. Install with
    `pip install --no-deps timm`; a plain `pip install timm` would replace torch.
    """
    found = importlib.util.find_spec("timm")
    if found is None or not found.submodule_search_locations:
        pytest.skip("timm is not installed (pip install --no-deps timm: it pulls torchvision)")
    root = Path(next(iter(found.submodule_search_locations)))
    for name, folder in (("_lrtune_timm", root), ("_lrtune_timm.scheduler", root / "scheduler")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module("_lrtune_timm.scheduler.wsd_lr").WSDLRScheduler


@settings(max_examples=EXAMPLES, deadline=None)
@given(_wsd_specs(warmup_starts_at_min=False))
def test_wsd_matches_timm_wsd_lr_scheduler(data: dict[str, Any]) -> None:
    scheduler_class = _timm_wsd_scheduler()
    spec = parse_schedule(data)
    optimizer = _sgd(spec.lr)
    # timm's t_initial is the stable + decay phases; its warmup is a prefix (ours is counted in
    # total_steps), and its lr_min is absolute. Stepped per update, as its docstring asks.
    scheduler = scheduler_class(
        optimizer,
        t_initial=spec.total_steps - spec.warmup_steps,
        decay_t=spec.decay_steps,
        lr_min=spec.min_lr_ratio * spec.lr,
        decay_fn=spec.decay_shape,
        warmup_t=spec.warmup_steps,
        warmup_lr_init=spec.warmup_start_lr,
        t_in_epochs=False,
    )
    theirs = _rates(optimizer, STEPS, lambda t: scheduler.step_update(num_updates=t + 1))
    _assert_same(learning_rates(spec, np.arange(STEPS)), theirs)


def test_timm_module_is_timms_own() -> None:
    # The class under test is the file timm ships, not a copy of ours.
    scheduler_class = _timm_wsd_scheduler()
    source = Path(sys.modules[scheduler_class.__module__].__file__ or "")
    assert source.parts[-3:] == ("timm", "scheduler", "wsd_lr.py")


@st.composite
def _inverse_sqrt_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"policy": "inverse_sqrt", "lr": draw(_rate)}
    if draw(st.booleans()):
        spec["warmup_steps"] = draw(st.integers(1, 4000))
    if draw(st.booleans()):
        spec["timescale"] = draw(st.integers(1, 20_000))
    return spec


@settings(max_examples=EXAMPLES, deadline=None)
@given(_inverse_sqrt_specs())
def test_inverse_sqrt_matches_transformers_get_inverse_sqrt_schedule(data: dict[str, Any]) -> None:
    spec = parse_schedule(data)
    optimizer = _sgd(spec.lr)
    # None: transformers' own default (the warmup's length, or 10,000), which ours must equal.
    scheduler = get_inverse_sqrt_schedule(
        optimizer, num_warmup_steps=spec.warmup_steps, timescale=data.get("timescale")
    )
    theirs = _rates(optimizer, STEPS, lambda _: scheduler.step())
    _assert_same(learning_rates(spec, np.arange(STEPS)), theirs)


@st.composite
def _rex_specs(draw: st.DrawFn) -> dict[str, Any]:
    lr = draw(_rate)
    spec: dict[str, Any] = {
        "policy": "rex",
        "lr": lr,
        "total_steps": draw(st.integers(10, 12_000)),
        "min_lr": lr * draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))),
    }
    if draw(st.booleans()):
        spec["warmup_steps"] = draw(st.integers(1, 2000))
        spec["warmup_start_lr"] = draw(st.floats(0.0, 1.0))
    return spec


def _rex_library_rates(lr: float, min_lr: float, total_steps: int, steps: int) -> np.ndarray:
    """pytorch_optimizer's REX rates r(0) .. r(steps - 1), from its scheduler.

    Built on an optimizer, REXScheduler sets min_lr (its init_lr) after LRScheduler's own first
    step() already advanced its counter, so a training loop would run its first update at
    min_lr; its k-th step() then sets r(k). r(0) is its formula at step 0 (get_linear_lr).
    """
    optimizer = _sgd(lr)
    scheduler = REXScheduler(optimizer, total_steps=total_steps, max_lr=lr, min_lr=min_lr)
    assert optimizer.param_groups[0]["lr"] == min_lr  # the quirk the docstring describes
    counted = scheduler.step_t
    scheduler.step_t = 0
    first = scheduler.get_linear_lr()
    scheduler.step_t = counted
    rates = _rates(optimizer, steps, lambda _: scheduler.step())
    rates[0] = first
    return rates


@settings(max_examples=EXAMPLES, deadline=None)
@given(_rex_specs())
def test_rex_matches_pytorch_optimizer_rex_scheduler(data: dict[str, Any]) -> None:
    spec = parse_schedule(data)
    warmup = spec.warmup_steps
    theirs = _rex_library_rates(spec.lr, spec.min_lr, spec.total_steps, STEPS - warmup)
    if warmup:
        # The warmup ramps to the schedule's first rate, whose clock starts after it.
        start = spec.warmup_start_lr
        ramp = start + (theirs[0] - start) * (np.arange(warmup) / warmup)
        theirs = np.concatenate([ramp, theirs])
    _assert_same(learning_rates(spec, np.arange(STEPS)), theirs)


# --- plateau against torch's ReduceLROnPlateau ------------------------------------------------


@st.composite
def _metric_sequences(draw: st.DrawFn, epochs: int, mode: str) -> list[float]:
    """A noisy learning curve with plateaus: improvements, repeats, small and large moves."""
    value = draw(st.floats(0.5, 5.0))
    sign = -1.0 if mode == "min" else 1.0
    moves = st.sampled_from([0.0, 0.0, 1e-5, 1e-3, 0.05, -0.02, 0.3])
    values = []
    for _ in range(epochs):
        value += sign * draw(moves) * abs(value)
        values.append(value)
    if draw(st.booleans()):
        values[draw(st.integers(0, epochs - 1))] = math.nan  # a diverged evaluation
    return values


@st.composite
def _plateau_cases(draw: st.DrawFn) -> tuple[dict[str, Any], int, list[float]]:
    lr = draw(_rate)
    mode = draw(st.sampled_from(["min", "max"]))
    spec: dict[str, Any] = {
        "policy": "plateau",
        "lr": lr,
        "mode": mode,
        "factor": draw(st.floats(0.05, 0.9)),
        "patience": draw(st.integers(0, 5)),
        "threshold": draw(st.sampled_from([0.0, 1e-4, 1e-2])),
        "threshold_mode": draw(st.sampled_from(["rel", "abs"])),
        "cooldown": draw(st.integers(0, 3)),
        "min_lr": lr * draw(st.sampled_from([0.0, 1e-4, 0.05])),
        "eps": draw(st.sampled_from([0.0, 1e-8, 1e-5])),
    }
    steps_per_epoch = draw(st.integers(20, 400))
    if draw(st.booleans()):
        spec["warmup_steps"] = draw(st.integers(1, 3 * steps_per_epoch))
        spec["warmup_start_lr"] = draw(st.floats(0.0, lr))
    epochs = -(-STEPS // steps_per_epoch)
    return spec, steps_per_epoch, draw(_metric_sequences(epochs, mode))


def _torch_plateau_rates(
    spec: Any, steps_per_epoch: int, metrics: list[float], steps: int
) -> np.ndarray:
    """torch's ReduceLROnPlateau stepped with `metrics[e]` after epoch e (a LambdaLR warmup in
    front: stepped over the first warmup_steps updates; plateau from the first epoch ending at
    or after it)."""
    optimizer = _sgd(1.0 if spec.warmup_steps else spec.lr)
    warmup = spec.warmup_steps
    ramp = None
    if warmup:
        start = spec.warmup_start_lr

        def lam(t: int) -> float:
            return start + (spec.lr - start) * (t / warmup) if t < warmup else spec.lr

        ramp = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lam)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=spec.mode,
        factor=spec.factor,
        patience=spec.patience,
        threshold=spec.threshold,
        threshold_mode=spec.threshold_mode,
        cooldown=spec.cooldown,
        min_lr=spec.min_lr,
        eps=spec.eps,
    )

    def after_step(t: int) -> None:
        done = t + 1
        if ramp is not None and done <= warmup:
            ramp.step()
        if done % steps_per_epoch == 0 and done >= warmup:
            plateau.step(metrics[done // steps_per_epoch - 1])

    return _rates(optimizer, steps, after_step)


@settings(max_examples=25, deadline=None)
@given(_plateau_cases())
def test_plateau_matches_torch_reduce_lr_on_plateau_fed_the_same_metrics(
    case: tuple[dict[str, Any], int, list[float]],
) -> None:
    data, steps_per_epoch, metrics = case
    spec = parse_schedule(data)
    theirs = _torch_plateau_rates(spec, steps_per_epoch, metrics, STEPS)
    ends = [steps_per_epoch * (e + 1) for e in range(len(metrics))]
    ours = learning_rates(spec, np.arange(STEPS), metrics=metrics, epoch_ends=ends)
    _assert_same(ours, theirs)


def test_plateau_reduces_after_patience_and_waits_out_its_cooldown() -> None:
    # A hand-made sequence: best 1.0 at epoch 1, then no improvement.
    spec = parse_schedule(
        {"policy": "plateau", "lr": 1.0, "factor": 0.5, "patience": 1, "cooldown": 2}
    )
    metrics = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    per_epoch = learning_rates(
        spec, np.arange(1, 9), metrics=metrics, epoch_ends=list(range(1, 9))
    ).tolist()
    # Epochs 2 and 3 are bad: more than patience, x0.5 after epoch 3. Epochs 4 and 5 are the
    # cooldown; 6 and 7 are bad again: x0.5 after epoch 7. Epoch 8 improves.
    assert per_epoch == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
