"""Schedule specs: one pydantic model per policy, joined in a union discriminated on `policy`.

The exact formulas live in `lrtune.workers.schedule_math`; this module says what a valid spec is.
"""

from __future__ import annotations

import itertools
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

# A learning rate: finite and not negative (NaN and inf are refused with the field named).
Rate = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PositiveRate = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
# Durations are bounded so the schedule math's int64 arithmetic cannot overflow (2**53: exact in
# JSON and JavaScript, and far beyond any training run).
MAX_STEPS = 2**53
# A duration, in optimizer steps.
Steps = Annotated[int, Field(gt=0, le=MAX_STEPS)]
DecayFactor = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Schedule(BaseModel):
    """Fields every policy accepts: a linear warmup in front of the schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: ClassVar[str]
    source: ClassVar[str]
    # Fields that count optimizer steps; a search space may give them in epochs (`_epochs`) or as a
    # fraction of the whole training (`_frac`).
    duration_fields: ClassVar[tuple[str, ...]] = ()

    warmup_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description="Steps of linear warmup before the schedule."
    )
    warmup_start_lr: Rate = Field(0.0, description="Rate at t = 0 when warmup_steps > 0.")


class FixedSchedule(_Schedule):
    family: ClassVar[str] = "fixed"
    source: ClassVar[str] = "constant rate"

    policy: Literal["fixed"] = "fixed"
    lr: PositiveRate


class StepSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "torch.optim.lr_scheduler.StepLR"
    duration_fields: ClassVar[tuple[str, ...]] = ("step_size",)

    policy: Literal["step"] = "step"
    lr: PositiveRate
    step_size: Steps
    gamma: DecayFactor = 0.1


class MultiStepSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "torch.optim.lr_scheduler.MultiStepLR"
    duration_fields: ClassVar[tuple[str, ...]] = ("milestones",)

    policy: Literal["multistep"] = "multistep"
    lr: PositiveRate
    milestones: list[Steps] = Field(min_length=1)
    gamma: DecayFactor = 0.1

    @field_validator("milestones")
    @classmethod
    def _milestones_sorted(cls, milestones: list[int]) -> list[int]:
        return _require_increasing(milestones)


class PiecewiseSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.piecewise_constant"
    duration_fields: ClassVar[tuple[str, ...]] = ("boundaries",)

    policy: Literal["piecewise"] = "piecewise"
    boundaries: list[Annotated[int, Field(ge=0, le=MAX_STEPS)]] = Field(min_length=1)
    values: list[Rate]

    @field_validator("boundaries")
    @classmethod
    def _boundaries_sorted(cls, boundaries: list[int]) -> list[int]:
        return _require_increasing(boundaries)

    @field_validator("values")
    @classmethod
    def _one_more_value(cls, values: list[float], info: ValidationInfo) -> list[float]:
        boundaries = info.data.get("boundaries")
        if boundaries is not None and len(values) != len(boundaries) + 1:
            raise ValueError(
                f"values must have one more entry than boundaries ({len(boundaries) + 1}), "
                f"got {len(values)}"
            )
        return values


class ExponentialSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.exponential_decay"
    duration_fields: ClassVar[tuple[str, ...]] = ("decay_steps",)

    policy: Literal["exponential"] = "exponential"
    lr: PositiveRate
    decay_rate: DecayFactor
    decay_steps: Steps
    staircase: bool = False


class NaturalExpSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.natural_exp_decay"
    duration_fields: ClassVar[tuple[str, ...]] = ("decay_steps",)

    policy: Literal["natural_exp"] = "natural_exp"
    lr: PositiveRate
    decay_rate: NonNegative
    decay_steps: Steps
    staircase: bool = False


class InverseTimeSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.inverse_time_decay"
    duration_fields: ClassVar[tuple[str, ...]] = ("decay_steps",)

    policy: Literal["inverse_time"] = "inverse_time"
    lr: PositiveRate
    decay_rate: NonNegative
    decay_steps: Steps
    staircase: bool = False


class PolynomialSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.polynomial_decay"
    duration_fields: ClassVar[tuple[str, ...]] = ("decay_steps",)

    policy: Literal["polynomial"] = "polynomial"
    lr: PositiveRate
    decay_steps: Steps
    end_lr: Rate = 1e-4
    power: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    cycle: bool = False

    @field_validator("end_lr")
    @classmethod
    def _decays(cls, end_lr: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and end_lr > lr:
            raise ValueError(f"end_lr ({end_lr}) must not exceed lr ({lr})")
        return end_lr


class CosineSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.cosine_decay"
    duration_fields: ClassVar[tuple[str, ...]] = ("decay_steps",)

    policy: Literal["cosine"] = "cosine"
    lr: PositiveRate
    decay_steps: Steps
    alpha: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0


class LinearCosineSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.linear_cosine_decay"
    duration_fields: ClassVar[tuple[str, ...]] = ("decay_steps",)

    policy: Literal["linear_cosine"] = "linear_cosine"
    lr: PositiveRate
    decay_steps: Steps
    num_periods: NonNegative = 0.5
    alpha: NonNegative = 0.0
    beta: NonNegative = 0.001


class NoisyLinearCosineSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "tf.compat.v1.train.noisy_linear_cosine_decay (seeded noise)"
    duration_fields: ClassVar[tuple[str, ...]] = ("decay_steps",)

    policy: Literal["noisy_linear_cosine"] = "noisy_linear_cosine"
    lr: PositiveRate
    decay_steps: Steps
    num_periods: NonNegative = 0.5
    alpha: NonNegative = 0.0
    beta: NonNegative = 0.001
    initial_variance: NonNegative = 1.0
    variance_decay: NonNegative = 0.55
    seed: int = Field(0, ge=0, lt=2**63)


class CyclicSchedule(_Schedule):
    family: ClassVar[str] = "clr"
    source: ClassVar[str] = "torch.optim.lr_scheduler.CyclicLR (Smith 2017)"
    duration_fields: ClassVar[tuple[str, ...]] = ("step_size",)

    policy: Literal["clr"] = "clr"
    base_lr: Rate
    max_lr: PositiveRate
    step_size: Steps
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: DecayFactor = 1.0

    @field_validator("max_lr")
    @classmethod
    def _above_base(cls, max_lr: float, info: ValidationInfo) -> float:
        base_lr = info.data.get("base_lr")
        if base_lr is not None and max_lr <= base_lr:
            raise ValueError(f"max_lr ({max_lr}) must be above base_lr ({base_lr})")
        return max_lr


class SgdrSchedule(_Schedule):
    family: ClassVar[str] = "sgdr"
    source: ClassVar[str] = (
        "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts (Loshchilov & Hutter 2017)"
    )
    duration_fields: ClassVar[tuple[str, ...]] = ("t_0",)

    policy: Literal["sgdr"] = "sgdr"
    eta_max: PositiveRate
    eta_min: Rate = 0.0
    t_0: Steps
    t_mult: Annotated[float, Field(ge=1.0, le=100.0, allow_inf_nan=False)] = 1
    restart_decay: DecayFactor = 1.0

    @field_validator("eta_min")
    @classmethod
    def _below_max(cls, eta_min: float, info: ValidationInfo) -> float:
        eta_max = info.data.get("eta_max")
        if eta_max is not None and eta_min > eta_max:
            raise ValueError(f"eta_min ({eta_min}) must not exceed eta_max ({eta_max})")
        return eta_min


class OneCycleSchedule(_Schedule):
    family: ClassVar[str] = "one_cycle"
    source: ClassVar[str] = "torch.optim.lr_scheduler.OneCycleLR (Smith & Topin 2019)"
    duration_fields: ClassVar[tuple[str, ...]] = ("total_steps",)

    policy: Literal["one_cycle"] = "one_cycle"
    max_lr: PositiveRate
    total_steps: Steps
    three_phase: bool = False
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.3
    div_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 25.0
    final_div_factor: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1e4
    anneal: Literal["cos", "linear"] = "cos"

    @field_validator("pct_start")
    @classmethod
    def _phases_have_steps(cls, pct_start: float, info: ValidationInfo) -> float:
        # Each phase must span at least one step, else PyTorch's interpolation divides by zero.
        total_steps = info.data.get("total_steps")
        if total_steps is None:
            return pct_start
        peak = pct_start * total_steps
        if peak <= 1:
            raise ValueError(
                f"pct_start * total_steps must exceed 1 so the rising phase has a step "
                f"(got {peak:g})"
            )
        if info.data.get("three_phase") and 2 * peak >= total_steps + 1:
            raise ValueError(
                "with three_phase, 2 * pct_start * total_steps must stay below total_steps + 1 "
                "so the final phase has a step"
            )
        return pct_start


SCHEDULE_MODELS: dict[str, type[_Schedule]] = {
    model.model_fields["policy"].default: model
    for model in (
        FixedSchedule,
        StepSchedule,
        MultiStepSchedule,
        PiecewiseSchedule,
        ExponentialSchedule,
        NaturalExpSchedule,
        InverseTimeSchedule,
        PolynomialSchedule,
        CosineSchedule,
        LinearCosineSchedule,
        NoisyLinearCosineSchedule,
        CyclicSchedule,
        SgdrSchedule,
        OneCycleSchedule,
    )
}
POLICY_NAMES: tuple[str, ...] = tuple(SCHEDULE_MODELS)

ScheduleSpec = Annotated[
    FixedSchedule
    | StepSchedule
    | MultiStepSchedule
    | PiecewiseSchedule
    | ExponentialSchedule
    | NaturalExpSchedule
    | InverseTimeSchedule
    | PolynomialSchedule
    | CosineSchedule
    | LinearCosineSchedule
    | NoisyLinearCosineSchedule
    | CyclicSchedule
    | SgdrSchedule
    | OneCycleSchedule,
    Field(discriminator="policy"),
]
schedule_adapter: TypeAdapter[ScheduleSpec] = TypeAdapter(ScheduleSpec)


def parse_schedule(data: object) -> ScheduleSpec:
    """Validate a dict (or JSON-like object) as a schedule spec; raises pydantic.ValidationError."""
    return schedule_adapter.validate_python(data)


class ParamGroupRule(BaseModel):
    """Discriminative rates: parameters matching `match` get the schedule's rate x lr_mult."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(
        min_length=1,
        description="A parameter-name prefix (e.g. 'encoder.') or a glob (e.g. '*.bias').",
    )
    lr_mult: NonNegative = 1.0


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: ScheduleSpec
    steps: int = Field(gt=0, le=1_000_000, description="How many steps to evaluate, from t = 0.")
    every: int = Field(
        1, gt=0, le=MAX_STEPS, description="Return every n-th step only (t = 0, n, 2n, ...)."
    )


class PreviewResponse(BaseModel):
    step: list[int]
    lr: list[float]


def _require_increasing(values: list[int]) -> list[int]:
    if any(later <= earlier for earlier, later in itertools.pairwise(values)):
        raise ValueError(f"must be strictly increasing, got {values}")
    return values
