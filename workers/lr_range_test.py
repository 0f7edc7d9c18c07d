"""The LR range test (Smith 2017; fastai's lr_find, torch-lr-finder) and what a job derives from it.

`run_range_test` trains the job's workload while ramping the rate from `min_lr` to `max_lr`,
`suggest_bounds` reads the bounds off the smoothed loss, and `derive_search_spaces` centres every
policy's search space on those bounds (`lr_bounds: "auto"`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from lrtune.schemas.recommendations import BoundSuggestion, RangeTestConfig, RangeTestResult
from lrtune.schemas.schedules import FixedSchedule, ParamGroupRule
from lrtune.schemas.search import field_of
from lrtune.schemas.trials import OptimizerSpec
from lrtune.schemas.workloads import WorkloadSpec
from lrtune.workers.trial import build_optimizer, train_weights
from lrtune.workers.workloads import TensorBatches, build_workload, seed_everything
from torch import Tensor

__all__ = ["derive_search_spaces", "ramp_rates", "run_range_test", "suggest_bounds"]

# fastai drops the first 10% of the curve (the EMA is still warming up) and the last 5 points
# (the blow-up) before suggesting; torch-lr-finder trims 10 and 5 points.
_SKIP_START_FRACTION = 0.1
_SKIP_END = 5
# max_lr sits a little below the rate of the lowest smoothed loss: the EMA lags the raw loss, so
# that minimum is already where training got unstable (fastai divides it by 10, Smith uses the
# point "where the loss stops falling"). See `suggest_bounds`.
MAX_LR_SAFETY = 3.0
# Smith's guidance for CLR: base_lr = max_lr / 3 to max_lr / 4; we take the wider end of the
# usual range of a search (a decade) and bound it below by where the steep descent starts.
MIN_LR_RATIO = 10.0


def ramp_rates(test: RangeTestConfig) -> npt.NDArray[np.float64]:
    """The planned rate of every step: it starts at min_lr and ends exactly at max_lr.

    Exponential: min * (max/min) ** (i / (n - 1)) (torch-lr-finder's form; fastai's i / n never
    quite reaches max); linear: min + (max - min) * i / (n - 1).
    """
    fraction = np.arange(test.iterations, dtype=np.float64) / (test.iterations - 1)
    if test.ramp == "exponential":
        return np.asarray(test.min_lr * (test.max_lr / test.min_lr) ** fraction)
    return np.asarray(test.min_lr + (test.max_lr - test.min_lr) * fraction)


def run_range_test(
    *,
    workload: WorkloadSpec,
    optimizer: OptimizerSpec,
    test: RangeTestConfig,
    param_groups: Sequence[ParamGroupRule] = (),
    seed: int = 0,
    device: str = "cpu",
) -> RangeTestResult:
    """Train `workload` for `test.iterations` steps, one rate of the ramp per step.

    Each step's rate (times the group's `lr_mult`) is set before its update, and the loss of
    that step's batch is recorded with it; training batches repeat epoch after epoch as needed.
    The smoothed loss is fastai's bias-corrected EMA, avg / (1 - beta**n). The test stops early
    (after recording the step) once the smoothed loss exceeds `divergence_factor` times its best
    or a loss is NaN/inf. Raises WorkloadError for a workload that cannot be built.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but this worker has no usable CUDA device")
    torch_device = torch.device(device)
    seed_everything(seed)
    target = workload.name if workload.name is not None else workload.entrypoint
    assert target is not None  # WorkloadSpec guarantees one of the two
    built = build_workload(target, workload.params, seed=seed)
    model = built.model.to(torch_device)
    train_loader: Iterable[tuple[Tensor, Tensor]] = built.train_loader
    if isinstance(built.train_loader, TensorBatches):
        train_loader = built.train_loader.to(torch_device)

    rates = ramp_rates(test)
    opt = build_optimizer(
        model, optimizer, FixedSchedule(lr=float(rates[0])), rules=list(param_groups)
    )
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average = 0.0
    best = math.inf
    stopped_early = False
    # A schedule-free optimizer steps in train mode: the loss is that of y, where it takes its
    # gradients (the ramp sets its rate directly, its own warmup is 0).
    train_weights(model, opt)
    for step, (inputs, targets) in enumerate(_cycle(train_loader, len(built.train_loader))):
        if step >= test.iterations:
            break
        rate = float(rates[step])
        for group in opt.param_groups:
            group["lr"] = rate * group.get("lr_mult", 1.0)
        inputs, targets = inputs.to(torch_device), targets.to(torch_device)
        opt.zero_grad(set_to_none=True)
        loss = built.loss_fn(model(inputs), targets)
        value = float(loss.item())
        average = test.smoothing * average + (1.0 - test.smoothing) * value
        debiased = average / (1.0 - test.smoothing ** (step + 1))
        lrs.append(rate)
        losses.append(value)
        smoothed.append(debiased)
        if not math.isfinite(debiased):
            # Stepping on a NaN/inf loss only spreads it into the weights.
            stopped_early = step + 1 < test.iterations
            break
        best = min(best, debiased)
        if debiased > test.divergence_factor * best:
            stopped_early = step + 1 < test.iterations
            break
        loss.backward()
        opt.step()

    return RangeTestResult(
        lr=lrs,
        loss=losses,
        smoothed_loss=smoothed,
        suggestion=suggest_bounds(lrs=lrs, smoothed=smoothed),
        ramp=test.ramp,
        iterations=len(lrs),
        stopped_early=stopped_early,
    )


def _cycle(
    loader: Iterable[tuple[Tensor, Tensor]], steps_per_epoch: int
) -> Iterable[tuple[Tensor, Tensor]]:
    # Epoch after epoch, telling a reshuffling loader which epoch it is, as a trial does.
    epoch = 0
    while True:
        set_epoch = getattr(loader, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        yielded = 0
        for batch in loader:
            yielded += 1
            yield batch
        if yielded == 0 or steps_per_epoch == 0:
            return
        epoch += 1


def suggest_bounds(*, lrs: Sequence[float], smoothed: Sequence[float]) -> BoundSuggestion:
    """Bounds from a range-test curve: rates `lrs` (increasing) and their smoothed losses.

    Only the finite points count, and, as in fastai, the first 10% (EMA warm-up) and the last
    5 points (the blow-up) are left out when at least 10 points remain.

    - `minimum`: rate of the lowest smoothed loss / 10 (fastai's `minimum`).
    - `steep`: rate of the steepest fall of the smoothed loss against log lr (fastai's `steep`;
      torch-lr-finder's suggestion).
    - `valley`: fastai's `valley`: the longest strictly descending stretch of the curve (longest
      decreasing subsequence ending at `end`, starting `length` points before it), and the
      point at start + int(s) + int(s / 2) with s = length / 3, i.e. halfway down it.
    - `max_lr`: where the smoothed loss stops falling, before it turns up: the rate of the lowest
      smoothed loss divided by `MAX_LR_SAFETY` (3). The EMA lags the raw loss, so its minimum
      already lies where training turns unstable; a third of it trains (checked on digits and
      mnist1d by tests/test_lr_range_test.py, together with 10x above it diverging).
    - `min_lr`: where the loss starts to fall steeply: `max_lr / MIN_LR_RATIO` (a decade below,
      Smith's base_lr guidance widened), raised to the start of the longest descent when the
      descent starts later, and kept below max_lr.
    """
    lr = np.asarray(lrs, dtype=np.float64)
    loss = np.asarray(smoothed, dtype=np.float64)
    if lr.shape != loss.shape:
        raise ValueError(f"{len(lr)} rates but {len(loss)} losses")
    finite = np.isfinite(loss) & np.isfinite(lr) & (lr > 0)
    lr, loss = lr[finite], loss[finite]
    if len(lr) < 2:
        raise ValueError("a range test needs at least two finite points to suggest bounds")
    if np.any(np.diff(lr) <= 0):
        raise ValueError("the range test's rates must increase")
    if len(lr) - int(len(lr) * _SKIP_START_FRACTION) - _SKIP_END >= 10:
        start = int(len(lr) * _SKIP_START_FRACTION)
        lr, loss = lr[start : len(lr) - _SKIP_END], loss[start : len(loss) - _SKIP_END]

    lowest = int(np.argmin(loss))
    minimum = float(lr[lowest] / 10.0)
    slopes = np.diff(loss) / np.diff(np.log(lr))
    steepest = int(np.argmin(slopes))
    steep = float(lr[steepest])
    valley_start, valley_end = _longest_descent(loss)
    sections = (valley_end - valley_start) / 3
    valley = float(lr[valley_start + int(sections) + int(sections / 2)])

    max_lr = float(lr[lowest] / MAX_LR_SAFETY)
    max_method = (
        f"rate of the lowest smoothed loss ({lr[lowest]:.3g}) / {MAX_LR_SAFETY:g}: where the loss "
        "stops falling, before it turns up"
    )
    if lowest == len(loss) - 1:
        # No turn-up inside the ramp: the bound is only as high as the ramp went.
        max_method += "; the loss was still falling at the end of the ramp, so a higher max_lr"
        max_method += " in the range test may find a higher bound"
    min_lr = max_lr / MIN_LR_RATIO
    min_method = f"max_lr / {MIN_LR_RATIO:g} (a decade below max_lr)"
    descent_start = float(lr[valley_start])
    if min_lr < descent_start < max_lr:
        min_lr = descent_start
        min_method = "start of the longest descent of the smoothed loss (where it starts to fall)"
    return BoundSuggestion(
        min_lr=min_lr,
        max_lr=max_lr,
        min_method=min_method,
        max_method=max_method,
        valley=valley,
        steep=steep,
        minimum=minimum,
    )


def _longest_descent(loss: npt.NDArray[np.float64]) -> tuple[int, int]:
    # fastai's valley: lds[i] is the length of the longest strictly decreasing subsequence that
    # ends at i; the longest one ending anywhere is the valley. fastai's start is end - length.
    n = len(loss)
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        higher = loss[:i] > loss[i]
        if higher.any():
            lds[i] = int(lds[:i][higher].max()) + 1
    end = int(np.argmax(lds))
    return max(0, end - int(lds[end])), end


# --- lr_bounds "auto": centre every policy's search space on the bounds ------------------------


def derive_search_spaces(
    *,
    policies: Sequence[str],
    bounds: BoundSuggestion,
    base_spaces: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each policy's search space with its rate fields centred on the range test's bounds.

    `base_spaces` gives each policy's space (e.g. `DEFAULT_SEARCH_SPACES`); rate fields are
    replaced by domains derived from (min_lr, max_lr): a single rate (fixed and the decay family)
    searches max_lr/3 .. max_lr when held constant (fixed, plateau), max_lr/3 .. 2*max_lr when
    it decays (its peak is brief; the benchmark's best decaying peaks lay up to 1.8x past
    max_lr); CLR searches base_lr over min_lr .. max_lr/3 and max_lr over
    max_lr/2 .. max_lr; SGDR's eta_max and one-cycle's max_lr search max_lr/2 .. 2*max_lr
    (their rate is high only briefly, and one-cycle starts at max_lr/div_factor); piecewise's
    values become decades below max_lr. Fields in `overrides[policy]` (the user's own fixed
    values or domains from the job spec) win and are kept as given, under the key the user wrote
    (a user's `step_size_epochs` replaces the base space's `step_size_frac`).
    """
    if bounds.max_lr <= 0 or bounds.min_lr <= 0 or bounds.min_lr >= bounds.max_lr:
        raise ValueError(
            f"bounds must satisfy 0 < min_lr < max_lr, got {bounds.min_lr:g}, {bounds.max_lr:g}"
        )
    high, low = bounds.max_lr, bounds.min_lr
    derived: dict[str, dict[str, Any]] = {}
    for policy in policies:
        if policy not in base_spaces:
            raise ValueError(f"no base search space for policy {policy!r}")
        space: dict[str, Any] = dict(base_spaces[policy])
        space.update(_rate_domains(policy, low=low, high=high, space=space))
        for key, value in (overrides or {}).get(policy, {}).items():
            # `step_size_epochs` from the user replaces a derived or default `step_size_frac`:
            # two keys for one field would make the space invalid.
            field, _ = field_of(policy, key)
            for existing in [k for k in space if field_of(policy, k)[0] == field]:
                del space[existing]
            space[key] = value
        derived[policy] = space
    return derived


# Policies whose rate stays at its peak until something else happens.
CONSTANT_RATE_POLICIES = ("fixed", "plateau")
# How far past the range test's max_lr a decaying schedule's peak rate is searched.
DECAYING_PEAK_REACH = 2.0


def _loguniform(low: float, high: float) -> dict[str, list[float]]:
    return {"loguniform": [low, high]}


def _rate_domains(
    policy: str, *, low: float, high: float, space: Mapping[str, Any]
) -> dict[str, Any]:
    if policy == "clr":
        # base_lr where the loss starts falling; the peak up to where it stops (Smith 2017).
        base_high = max(low * 1.000001, high / 3.0)
        return {"base_lr": _loguniform(low, base_high), "max_lr": _loguniform(high / 2, high)}
    if policy == "sgdr":
        fields: dict[str, Any] = {"eta_max": _loguniform(high / 2, 2 * high)}
        if "eta_min" in space and not isinstance(space["eta_min"], dict):
            fields["eta_min"] = min(float(space["eta_min"]), low)
        return fields
    if policy == "one_cycle":
        return {"max_lr": _loguniform(high / 2, 2 * high)}
    if policy == "piecewise":
        # Step-downs by a decade (or less) from around max_lr, as the default choices do.
        return {
            "values": {
                "choice": [
                    [high, high / 10, high / 100],
                    [high / 2, high / 10, high / 50],
                    [high / 3, high / 30, high / 300],
                ]
            }
        }
    # A rate held constant (fixed, and plateau until the metric stalls) must be stable for the
    # whole run: up to max_lr. A decaying schedule spends little time at its peak, and its
    # best peak lies up to 1.8x past max_lr (bench/RESULTS.md, "Search that picks right").
    top = high if policy in CONSTANT_RATE_POLICIES else DECAYING_PEAK_REACH * high
    fields = {"lr": _loguniform(high / 3, top)}
    if policy == "polynomial" and not isinstance(space.get("end_lr"), dict):
        # end_lr must not exceed lr: keep it well below the lowest rate searched.
        fields["end_lr"] = min(float(space.get("end_lr", 1e-4)), low / 10)
    return fields
