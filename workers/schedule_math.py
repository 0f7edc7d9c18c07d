"""Learning-rate schedules as vectorised numpy functions of the step index `t`.

The formulas follow `reference/schedules.md` exactly. Only numpy is imported: the API evaluates
schedules at request time (the preview endpoint) and must not pull in torch. One policy,
plateau, also reads the monitored metric at the end of each epoch (`metrics`, `epoch_ends`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from lrtune.schemas.schedules import (
    CosineSchedule,
    CyclicSchedule,
    ExponentialSchedule,
    FixedSchedule,
    InverseSqrtSchedule,
    InverseTimeSchedule,
    LinearCosineSchedule,
    MultiStepSchedule,
    NaturalExpSchedule,
    NoisyLinearCosineSchedule,
    OneCycleSchedule,
    PiecewiseSchedule,
    PlateauSchedule,
    PolynomialSchedule,
    RexSchedule,
    ScheduleSpec,
    SgdrSchedule,
    StepSchedule,
    WsdSchedule,
)

__all__ = [
    "cycle_ends",
    "learning_rate",
    "learning_rates",
    "plateau_rates",
    "plateau_watched",
    "standard_normal_noise",
]

Steps = npt.NDArray[np.int64]
Rates = npt.NDArray[np.float64]


def learning_rates(
    spec: ScheduleSpec,
    steps: npt.ArrayLike,
    *,
    metrics: Sequence[float] = (),
    epoch_ends: Sequence[int] = (),
) -> Rates:
    """The rate of `spec` at every step index in `steps` (non-negative integers, any shape).

    Each value depends only on the spec and its own step, so evaluating one step at a time, a
    subsample, or the whole range gives identical numbers. For plateau, also on the metrics
    seen so far: `metrics[i]` was measured when `epoch_ends[i]` steps had been taken (the end of
    an epoch) and decides the rates from step `epoch_ends[i]` on; without metrics plateau's
    rate holds. Every other policy is a function of the step alone and takes no metrics.
    """
    t = _as_steps(steps)
    if spec.policy == "plateau":
        return _plateau(spec, t, metrics, epoch_ends)
    if len(metrics) or len(epoch_ends):
        raise ValueError(f"only plateau reads metrics; {spec.policy} is a function of the step")
    inner = _POLICIES[spec.policy]
    warmup = spec.warmup_steps
    if warmup == 0:
        return inner(spec, t)

    out = np.empty(t.shape, dtype=np.float64)
    warming = t < warmup
    start = spec.warmup_start_lr
    # The warmup ramps towards the inner schedule's first rate, whose clock starts after warmup;
    # WSD's clock counts the warmup (its total_steps includes it, as Hugging Face's does).
    shift = 0 if spec.policy == "wsd" else warmup
    first = float(inner(spec, np.full(1, warmup - shift, dtype=np.int64))[0])
    out[warming] = start + (first - start) * (t[warming] / warmup)
    out[~warming] = inner(spec, t[~warming] - shift)
    return out


def learning_rate(
    spec: ScheduleSpec,
    t: int,
    *,
    metrics: Sequence[float] = (),
    epoch_ends: Sequence[int] = (),
) -> float:
    """The rate of `spec` at the single step `t`; for many steps use `learning_rates`."""
    steps = np.array([t], dtype=np.int64)
    return float(learning_rates(spec, steps, metrics=metrics, epoch_ends=epoch_ends)[0])


def _as_steps(steps: npt.ArrayLike) -> Steps:
    t = np.asarray(steps)
    if t.size == 0:
        # np.asarray([]) is float64; an empty request is still a valid one.
        return t.astype(np.int64)
    if t.dtype.kind not in "iu":
        raise TypeError(f"steps must be integers, got dtype {t.dtype}")
    if t.dtype == np.uint64 and int(t.max()) > np.iinfo(np.int64).max:
        raise ValueError("steps must fit in a signed 64-bit integer")
    t = t.astype(np.int64, copy=False)
    if int(t.min()) < 0:
        raise ValueError(f"steps must be non-negative, got {int(t.min())}")
    return t


# --- decay family -----------------------------------------------------------------------------


def _fixed(spec: FixedSchedule, t: Steps) -> Rates:
    return np.full(t.shape, spec.lr, dtype=np.float64)


def _step(spec: StepSchedule, t: Steps) -> Rates:
    return spec.lr * np.power(spec.gamma, (t // spec.step_size).astype(np.float64))


def _multistep(spec: MultiStepSchedule, t: Steps) -> Rates:
    # bisect_right: the decay happens AT the milestone, as in torch MultiStepLR.
    passed = np.searchsorted(np.asarray(spec.milestones, dtype=np.int64), t, side="right")
    return spec.lr * np.power(spec.gamma, passed.astype(np.float64))


def _piecewise(spec: PiecewiseSchedule, t: Steps) -> Rates:
    # side="left" counts the boundaries strictly below t, so the value changes at b + 1 (TF).
    index = np.searchsorted(np.asarray(spec.boundaries, dtype=np.int64), t, side="left")
    return np.asarray(spec.values, dtype=np.float64)[index]


def _decay_progress(t: Steps, decay_steps: int, staircase: bool) -> Rates:
    if staircase:
        return (t // decay_steps).astype(np.float64)
    return t / decay_steps


def _exponential(spec: ExponentialSchedule, t: Steps) -> Rates:
    p = _decay_progress(t, spec.decay_steps, spec.staircase)
    return spec.lr * np.power(spec.decay_rate, p)


def _natural_exp(spec: NaturalExpSchedule, t: Steps) -> Rates:
    p = _decay_progress(t, spec.decay_steps, spec.staircase)
    return spec.lr * np.exp(-spec.decay_rate * p)


def _inverse_time(spec: InverseTimeSchedule, t: Steps) -> Rates:
    p = _decay_progress(t, spec.decay_steps, spec.staircase)
    return spec.lr / (1.0 + spec.decay_rate * p)


def _polynomial(spec: PolynomialSchedule, t: Steps) -> Rates:
    decay_steps = spec.decay_steps
    if spec.cycle:
        # The horizon grows to the next multiple of decay_steps (integer ceil); t == 0 uses one
        # period. A restart therefore does not return to lr: see the vector in the reference.
        periods = np.maximum(1, -(-t // decay_steps))
        fraction = t / (decay_steps * periods)
    else:
        fraction = np.minimum(t, decay_steps) / decay_steps
    return (spec.lr - spec.end_lr) * np.power(1.0 - fraction, spec.power) + spec.end_lr


def _cosine(spec: CosineSchedule, t: Steps) -> Rates:
    # Clamped after decay_steps (TF); torch's CosineAnnealingLR would swing back up instead.
    fraction = np.minimum(t, spec.decay_steps) / spec.decay_steps
    cosine = 0.5 * (1.0 + np.cos(np.pi * fraction))
    return spec.lr * ((1.0 - spec.alpha) * cosine + spec.alpha)


def _linear_cosine_parts(
    spec: LinearCosineSchedule | NoisyLinearCosineSchedule, t: Steps
) -> tuple[Steps, Rates, Rates]:
    clamped = np.minimum(t, spec.decay_steps)
    linear = (spec.decay_steps - clamped) / spec.decay_steps
    cosine = 0.5 * (1.0 + np.cos(2.0 * np.pi * spec.num_periods * clamped / spec.decay_steps))
    return clamped, linear, cosine


def _linear_cosine(spec: LinearCosineSchedule, t: Steps) -> Rates:
    _, linear, cosine = _linear_cosine_parts(spec, t)
    return spec.lr * ((spec.alpha + linear) * cosine + spec.beta)


def _noisy_linear_cosine(spec: NoisyLinearCosineSchedule, t: Steps) -> Rates:
    clamped, linear, cosine = _linear_cosine_parts(spec, t)
    # The noise is keyed on the clamped step, so after decay_steps the rate holds still like every
    # other clamped decay (TF draws fresh noise on every call instead, and cannot be reproduced).
    # sqrt(initial_variance / (1 + t') ** variance_decay), in the log domain because it is cheaper.
    std = math.sqrt(spec.initial_variance) * np.exp(-0.5 * spec.variance_decay * np.log1p(clamped))
    noisy_linear = linear + std * standard_normal_noise(spec.seed, clamped)
    lr = spec.lr * ((spec.alpha + noisy_linear) * cosine + spec.beta)
    # A negative rate would turn gradient descent into gradient ascent; TF does not clamp, we do.
    return np.maximum(lr, 0.0)


# SplitMix64 (Steele, Lea & Flood 2014): the i-th output of the generator seeded with `s` is
# mix(s + (i + 1) * GOLDEN_GAMMA), so any output can be computed on its own, in any order.
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(seed: int, index: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # uint64 array arithmetic wraps modulo 2**64, which is exactly what SplitMix64 wants; the
    # in-place updates keep the 1,000,000-step preview well inside its time budget.
    z = (index + np.uint64(1)) * _GOLDEN_GAMMA
    z += np.uint64(seed)
    z ^= z >> np.uint64(30)
    z *= _MIX_1
    z ^= z >> np.uint64(27)
    z *= _MIX_2
    z ^= z >> np.uint64(31)
    return z


def standard_normal_noise(seed: int, t: npt.ArrayLike) -> Rates:
    """A standard normal draw for each step in `t` that depends only on (`seed`, step).

    Counter-based: step t uses outputs 2t and 2t + 1 of SplitMix64 seeded with `seed`; their top 53
    bits give two uniforms u1 in (0, 1] and u2 in [0, 1), and Box-Muller turns them into
    sqrt(-2 ln u1) * cos(2 pi u2). No state is carried between steps, which is what makes the
    noisy schedule identical in a preview, a trial and an export, however it is sampled.
    """
    index = np.asarray(t, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    first = _splitmix64(seed, index)
    index += np.uint64(1)
    second = _splitmix64(seed, index)
    first >>= np.uint64(11)
    first += np.uint64(1)  # keeps u1 away from 0, where the logarithm would be infinite
    second >>= np.uint64(11)
    u1 = first.astype(np.float64)
    u1 *= 2.0**-53
    u2 = second.astype(np.float64)
    u2 *= 2.0**-53
    # cos(2 pi u) == cos(2 pi (1 - u)): folding the angle into [0, pi] is exact and halves the
    # range numpy's cosine has to reduce, which dominates the cost of a million draws.
    angle = np.minimum(u2, 1.0 - u2)
    angle *= 2.0 * np.pi
    radius = np.log(u1)
    radius *= -2.0
    np.sqrt(radius, out=radius)
    return radius * np.cos(angle)


# --- cyclical, restarts, one cycle ------------------------------------------------------------


def _clr(spec: CyclicSchedule, t: Steps) -> Rates:
    cycle = 1 + t // (2 * spec.step_size)
    x = np.abs(t / spec.step_size - 2 * cycle + 1)
    triangle = np.maximum(0.0, 1.0 - x)
    if spec.mode == "triangular":
        scale: Rates | float = 1.0
    elif spec.mode == "triangular2":
        # exp2 of a large negative number underflows quietly to 0, where 1 / 2**n would overflow.
        scale = np.exp2(-(cycle - 1).astype(np.float64))
    else:
        # exp_range counts total iterations, as the CLR reference code and torch do.
        scale = np.power(spec.gamma, t.astype(np.float64))
    return spec.base_lr + (spec.max_lr - spec.base_lr) * triangle * scale


def _sgdr(spec: SgdrSchedule, t: Steps) -> Rates:
    t_0, t_mult = spec.t_0, spec.t_mult
    if t_mult == 1:
        restart = t // t_0
        t_cur = (t % t_0).astype(np.float64)
        t_i: Rates | float = float(t_0)
    elif t_mult.is_integer():
        restart, t_cur, t_i = _sgdr_integer_restarts(t, t_0, int(t_mult))
    else:
        restart, t_cur, t_i = _sgdr_float_restarts(t, t_0, t_mult)
    cosine = 0.5 * (1.0 + np.cos(np.pi * t_cur / t_i))
    decay = np.power(spec.restart_decay, np.asarray(restart, dtype=np.float64))
    # restart_decay scales the cosine term only, never the floor (Keras CosineDecayRestarts).
    return spec.eta_min + (spec.eta_max - spec.eta_min) * decay * cosine


def _sgdr_integer_restarts(t: Steps, t_0: int, t_mult: int) -> tuple[Steps, Rates, Rates]:
    # Restart starts t_0 * (t_mult**i - 1) / (t_mult - 1) built with exact Python ints: a float
    # logarithm misses some boundaries (torch's bug with T_mult = 3). There are O(log t) of them.
    last = int(t.max()) if t.size else 0
    starts = [0]
    lengths = [t_0]
    while starts[-1] + lengths[-1] <= last:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(lengths[-1] * t_mult)
    restart = np.searchsorted(np.asarray(starts, dtype=np.int64), t, side="right") - 1
    t_cur = (t - np.asarray(starts, dtype=np.int64)[restart]).astype(np.float64)
    # Lengths may pass int64 for huge t; float64 is enough to divide by.
    t_i = np.asarray([float(length) for length in lengths])[restart]
    return restart, t_cur, t_i


def _sgdr_float_restarts(t: Steps, t_0: int, t_mult: float) -> tuple[Steps, Rates, Rates]:
    # Every restart start t_0 * (t_mult**i - 1) / (t_mult - 1) up to max(t), then a sorted lookup:
    # the starts are the definition, so no logarithm can land a step in the wrong restart.
    starts, lengths = _sgdr_float_starts(int(t.max()) if t.size else 0, t_0, t_mult)
    restart = np.searchsorted(starts, t, side="right") - 1
    return restart, t - starts[restart], lengths[restart]


def _sgdr_float_starts(last: int, t_0: int, t_mult: float) -> tuple[Rates, Rates]:
    """Every restart's start and length up to step `last` (and one past it)."""
    count = int(np.log1p(last / t_0 * (t_mult - 1.0)) / np.log(t_mult)) + 2
    index = np.arange(count, dtype=np.float64)
    lengths = t_0 * np.power(t_mult, index)
    # expm1/log1p keep the starts accurate when t_mult is barely above 1.
    starts = t_0 * np.expm1(index * np.log1p(t_mult - 1.0)) / (t_mult - 1.0)
    return starts, lengths


def _one_cycle(spec: OneCycleSchedule, t: Steps) -> Rates:
    total = spec.total_steps
    initial = spec.max_lr / spec.div_factor
    final = initial / spec.final_div_factor
    # Phase ends and endpoints exactly as torch OneCycleLR builds them.
    peak_end = float(spec.pct_start * total) - 1
    if spec.three_phase:
        ends = [peak_end, float(2 * spec.pct_start * total) - 2, total - 1.0]
        starts_lr = [initial, spec.max_lr, initial]
        ends_lr = [spec.max_lr, initial, final]
    else:
        ends = [peak_end, total - 1.0]
        starts_lr = [initial, spec.max_lr]
        ends_lr = [spec.max_lr, final]

    # torch picks the first phase whose end is >= t (the last phase takes the rest).
    phase = np.minimum(np.searchsorted(np.asarray(ends), t, side="left"), len(ends) - 1)
    phase_end = np.asarray(ends)[phase]
    phase_start = np.asarray([0.0, *ends[:-1]])[phase]
    pct = (t - phase_start) / (phase_end - phase_start)
    a = np.asarray(starts_lr)[phase]
    b = np.asarray(ends_lr)[phase]
    if spec.anneal == "cos":
        lr = b + (a - b) / 2.0 * (np.cos(np.pi * pct) + 1)
    else:
        lr = (b - a) * pct + a
    # torch raises past the last step; we hold the final rate instead.
    return np.where(t >= total, final, lr)


def cycle_ends(spec: ScheduleSpec, total_steps: int) -> list[int]:
    """The step counts s <= `total_steps` after which a cycle of clr or sgdr ends: step s - 1
    was its last (the rate at its lowest), step s starts the next. Counted after the warmup.

    clr's cycles are 2 x step_size long (the rate back at base_lr); sgdr's end at its restarts,
    found as `_sgdr` finds them: exact integers for an integer t_mult, and for a fractional one
    the first step at or past each float restart start (where the lookup moves to it).
    """
    warmup = spec.warmup_steps
    if isinstance(spec, CyclicSchedule):
        return list(range(warmup + 2 * spec.step_size, total_steps + 1, 2 * spec.step_size))
    if not isinstance(spec, SgdrSchedule):
        raise ValueError(f"only clr and sgdr have cycles, not {spec.policy}")
    last = max(total_steps - warmup, 0)
    if spec.t_mult.is_integer():
        ends: list[int] = []
        start, length = 0, spec.t_0
        while start + length <= last:
            start += length
            length *= int(spec.t_mult)
            ends.append(warmup + start)
        return ends
    starts, _ = _sgdr_float_starts(last, spec.t_0, spec.t_mult)
    return [warmup + math.ceil(start) for start in starts[1:] if math.ceil(start) <= last]


# --- WSD, inverse square root, REX --------------------------------------------------------------


def _wsd(spec: WsdSchedule, t: Steps) -> Rates:
    # t is the global step (the clock includes the warmup); only t >= warmup_steps comes here.
    total, decay = spec.total_steps, spec.decay_steps
    assert decay is not None  # WsdSchedule fills it in from decay_frac
    ratio = spec.min_lr_ratio
    progress = np.clip((t - (total - decay)) / decay, 0.0, 1.0)
    if spec.decay_shape == "linear":
        shape = 1.0 - progress
    elif spec.decay_shape == "1-sqrt":
        shape = 1.0 - np.sqrt(progress)
    else:
        shape = 0.5 * (1.0 + np.cos(np.pi * progress))
    # Written as Hugging Face's lambda is, factor * (1 - r) + r, so the two agree to the last bit.
    decayed = spec.lr * (shape * (1.0 - ratio) + ratio)
    return np.where(t < total - decay, spec.lr, np.where(t >= total, ratio * spec.lr, decayed))


def _inverse_sqrt(spec: InverseSqrtSchedule, t: Steps) -> Rates:
    timescale = spec.timescale
    assert timescale is not None  # InverseSqrtSchedule fills it in
    # t counts from the end of the warmup: lr * sqrt(timescale / (t + timescale)), 1 at t = 0.
    return spec.lr / np.sqrt((t + timescale) / timescale)


def _rex(spec: RexSchedule, t: Steps) -> Rates:
    progress = np.minimum(t, spec.total_steps) / spec.total_steps
    shape = (1.0 - progress) / (1.0 - progress / 2.0)
    return spec.min_lr + (spec.lr - spec.min_lr) * shape


# --- reduce on plateau ----------------------------------------------------------------------


def plateau_watched(
    spec: PlateauSchedule, metrics: Sequence[float], epoch_ends: Sequence[int]
) -> tuple[list[float], list[int]]:
    """The metrics plateau acts on, with the step each was measured at: those of epochs that
    end once the warmup is over (the warmup's own epochs judge a rate still ramping)."""
    if len(metrics) != len(epoch_ends):
        raise ValueError(
            f"one epoch end per metric: {len(metrics)} metrics, {len(epoch_ends)} epoch ends"
        )
    ends = [int(end) for end in epoch_ends]
    if (
        any(later < earlier for earlier, later in itertools.pairwise(ends))
        or min(ends, default=0) < 0
    ):
        raise ValueError(f"epoch ends must be non-negative and in order, got {ends}")
    kept = [(float(m), end) for m, end in zip(metrics, ends, strict=True)]
    kept = [(m, end) for m, end in kept if end >= spec.warmup_steps]
    return [m for m, _ in kept], [end for _, end in kept]


def plateau_rates(
    spec: PlateauSchedule, metrics: Sequence[float], *, lr_mult: float = 1.0
) -> list[float]:
    """`rates[k]`: the rate once the first k of `metrics` were seen, for a param group at
    `lr * lr_mult` (rates[0]); torch's ReduceLROnPlateau.step, one metric at a time.

    As torch does per group: the floor is `min_lr * lr_mult`, and `eps` (a reduction smaller
    than it is skipped) compares the group's own rates. A NaN metric is never an improvement.
    """
    rate, floor = spec.lr * lr_mult, spec.min_lr * lr_mult
    best = math.inf if spec.mode == "min" else -math.inf
    bad_epochs = cooldown_left = 0
    rates = [rate]
    for value in metrics:
        current = float(value)
        if _improves(spec, current, best):
            best, bad_epochs = current, 0
        else:
            bad_epochs += 1
        if cooldown_left > 0:
            cooldown_left -= 1
            bad_epochs = 0  # bad epochs in cooldown do not count
        if bad_epochs > spec.patience:
            reduced = max(rate * spec.factor, floor)
            if rate - reduced > spec.eps:
                rate = reduced
            cooldown_left, bad_epochs = spec.cooldown, 0
        rates.append(rate)
    return rates


def _improves(spec: PlateauSchedule, value: float, best: float) -> bool:
    # torch's _is_better, written the same way (rel: best scaled, which for a negative best in
    # mode min asks for less than a threshold's worth of improvement, as torch does).
    if spec.mode == "min":
        if spec.threshold_mode == "rel":
            return value < best * (1.0 - spec.threshold)
        return value < best - spec.threshold
    if spec.threshold_mode == "rel":
        return value > best * (spec.threshold + 1.0)
    return value > best + spec.threshold


def _plateau(
    spec: PlateauSchedule, t: Steps, metrics: Sequence[float], epoch_ends: Sequence[int]
) -> Rates:
    watched, ends = plateau_watched(spec, metrics, epoch_ends)
    rates = np.asarray(plateau_rates(spec, watched), dtype=np.float64)
    # The metrics measured at or before step t decide its rate.
    seen = np.searchsorted(np.asarray(ends, dtype=np.int64), t, side="right")
    out = rates[seen]
    warmup = spec.warmup_steps
    if warmup:
        warming = t < warmup
        start = spec.warmup_start_lr
        out[warming] = start + (spec.lr - start) * (t[warming] / warmup)
    return out


_POLICIES: dict[str, Callable[[Any, Steps], Rates]] = {
    "fixed": _fixed,
    "step": _step,
    "multistep": _multistep,
    "piecewise": _piecewise,
    "exponential": _exponential,
    "natural_exp": _natural_exp,
    "inverse_time": _inverse_time,
    "polynomial": _polynomial,
    "cosine": _cosine,
    "linear_cosine": _linear_cosine,
    "noisy_linear_cosine": _noisy_linear_cosine,
    "clr": _clr,
    "sgdr": _sgdr,
    "one_cycle": _one_cycle,
    "wsd": _wsd,
    "inverse_sqrt": _inverse_sqrt,
    "rex": _rex,
}
