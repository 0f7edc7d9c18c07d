"""Schedule specs: one pydantic model per policy, joined in a union discriminated on `policy`.

The exact formulas live in `lrtune.workers.schedule_math`; this module says what a valid spec is.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, ClassVar, Literal

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

    @classmethod
    def durations(cls) -> tuple[str, ...]:
        """Every field counted in optimizer steps, the warmup's included."""
        return ("warmup_steps", *cls.duration_fields)


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


# WSD's decay, when neither decay_steps nor decay_frac is given: 20% of the schedule, the upper
# end of the 10-20% cooldowns that match a cosine run in Hägele et al. 2024.
DEFAULT_WSD_DECAY_FRAC = 0.2
# inverse_sqrt's timescale without a warmup (Hugging Face's default).
DEFAULT_INVERSE_SQRT_TIMESCALE = 10_000


class WsdSchedule(_Schedule):
    """Warmup, a stable phase at `lr`, then a decay over the last `decay_steps` of `total_steps`.

    `total_steps` includes the warmup (as Hugging Face's num_training_steps does): the decay ends
    at t = total_steps whatever the warmup is.
    """

    family: ClassVar[str] = "wsd"
    source: ClassVar[str] = (
        "transformers get_wsd_schedule, timm WSDLRScheduler (Hu et al. 2024; Hägele et al. 2024)"
    )
    duration_fields: ClassVar[tuple[str, ...]] = ("total_steps", "decay_steps")

    policy: Literal["wsd"] = "wsd"
    lr: PositiveRate
    total_steps: Steps = Field(description="Steps of the whole schedule, the warmup's included.")
    decay_frac: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = Field(
        None,
        description="The decay's share of total_steps; an alternative to decay_steps "
        f"(default {DEFAULT_WSD_DECAY_FRAC} when neither is given).",
    )
    decay_steps: Steps | None = Field(
        None,
        validate_default=True,
        description="Steps of the decay, the last of total_steps; default: "
        "round(decay_frac x total_steps).",
    )
    decay_shape: Literal["linear", "1-sqrt", "cosine"] = Field(
        "1-sqrt", description="linear: 1 - p; 1-sqrt: 1 - sqrt(p); cosine: (1 + cos(pi p)) / 2."
    )
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = Field(
        0.0, description="The rate at the end of the decay, as a share of lr."
    )

    @field_validator("total_steps")
    @classmethod
    def _longer_than_warmup(cls, total_steps: int, info: ValidationInfo) -> int:
        warmup = info.data.get("warmup_steps", 0)
        if total_steps <= warmup:
            raise ValueError(
                f"total_steps ({total_steps}) counts the warmup and must exceed warmup_steps "
                f"({warmup})"
            )
        return total_steps

    @field_validator("decay_steps")
    @classmethod
    def _decay_fits(cls, decay_steps: int | None, info: ValidationInfo) -> int | None:
        total = info.data.get("total_steps")
        if total is None or "decay_frac" not in info.data:
            return decay_steps  # reported on those fields already
        fraction = info.data["decay_frac"]
        implied = None if fraction is None else max(1, round(fraction * total))
        if decay_steps is None:
            decay_steps = (
                implied if implied is not None else max(1, round(DEFAULT_WSD_DECAY_FRAC * total))
            )
        elif implied is not None and implied != decay_steps:
            raise ValueError(
                f"decay_steps ({decay_steps}) and decay_frac ({fraction}) disagree: decay_frac x "
                f"total_steps is {implied} steps; give one of them"
            )
        room = total - info.data.get("warmup_steps", 0)
        if decay_steps > room:
            given = "decay_steps" if fraction is None else f"decay_frac ({fraction}) x total_steps"
            raise ValueError(
                f"{given} ({decay_steps}) is longer than the schedule after its warmup: "
                f"total_steps - warmup_steps = {room}"
            )
        return decay_steps


class InverseSqrtSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "transformers get_inverse_sqrt_schedule (Vaswani et al. 2017)"
    duration_fields: ClassVar[tuple[str, ...]] = ("timescale",)

    policy: Literal["inverse_sqrt"] = "inverse_sqrt"
    lr: PositiveRate
    timescale: Steps | None = Field(
        None,
        validate_default=True,
        description="lr / sqrt((t + timescale) / timescale) after the warmup; default: "
        f"warmup_steps, or {DEFAULT_INVERSE_SQRT_TIMESCALE} without a warmup.",
    )

    @field_validator("timescale")
    @classmethod
    def _default_to_warmup(cls, timescale: int | None, info: ValidationInfo) -> int:
        if timescale is not None:
            return timescale
        return info.data.get("warmup_steps") or DEFAULT_INVERSE_SQRT_TIMESCALE


class RexSchedule(_Schedule):
    family: ClassVar[str] = "decay"
    source: ClassVar[str] = "pytorch_optimizer REXScheduler (Chen et al. 2022)"
    duration_fields: ClassVar[tuple[str, ...]] = ("total_steps",)

    policy: Literal["rex"] = "rex"
    lr: PositiveRate
    total_steps: Steps
    min_lr: Rate = 0.0

    @field_validator("min_lr")
    @classmethod
    def _below_lr(cls, min_lr: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and min_lr > lr:
            raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
        return min_lr


class PlateauSchedule(_Schedule):
    """torch's ReduceLROnPlateau: not a function of the step alone but of the monitored metric,
    fed once per epoch (a job's metric, in its mode). Without metrics the rate holds at lr."""

    family: ClassVar[str] = "plateau"
    source: ClassVar[str] = "torch.optim.lr_scheduler.ReduceLROnPlateau (the job's metric)"

    policy: Literal["plateau"] = "plateau"
    lr: PositiveRate
    mode: Literal["min", "max"] = Field(
        "min", description="The metric's sense; in a job, the job's metric mode."
    )
    factor: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = Field(
        0.1, description="The rate is multiplied by this at each reduction."
    )
    patience: int = Field(
        10, ge=0, le=MAX_STEPS, description="Epochs without improvement tolerated."
    )
    threshold: NonNegative = Field(1e-4, description="What counts as an improvement.")
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: int = Field(
        0, ge=0, le=MAX_STEPS, description="Epochs after a reduction before counting again."
    )
    min_lr: Rate = 0.0
    eps: NonNegative = Field(1e-8, description="Reductions smaller than this are skipped.")

    @field_validator("min_lr")
    @classmethod
    def _below_lr(cls, min_lr: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and min_lr > lr:
            raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
        return min_lr


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
        WsdSchedule,
        InverseSqrtSchedule,
        RexSchedule,
        PlateauSchedule,
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
    | OneCycleSchedule
    | WsdSchedule
    | InverseSqrtSchedule
    | RexSchedule
    | PlateauSchedule,
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
    steps_per_epoch: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="Where epochs end, for `metrics`."
    )
    metrics: list[float] | None = Field(
        None,
        description="plateau only: the monitored metric after each epoch, one value per epoch "
        "the preview spans (ceil(steps / steps_per_epoch)); each decides the rate from the end "
        "of its epoch on. Without it plateau's rate holds.",
    )

    @field_validator("metrics")
    @classmethod
    def _one_per_epoch(cls, metrics: list[float] | None, info: ValidationInfo) -> Any:
        schedule, steps = info.data.get("schedule"), info.data.get("steps")
        if metrics is None or schedule is None or steps is None:
            return metrics
        if schedule.policy != "plateau":
            raise ValueError(
                f"only plateau reads metrics; {schedule.policy} is a function of the step alone"
            )
        if "steps_per_epoch" not in info.data:
            return metrics  # reported on steps_per_epoch already
        steps_per_epoch = info.data["steps_per_epoch"]
        if steps_per_epoch is None:
            raise ValueError("metrics need steps_per_epoch, to know where each epoch ends")
        epochs = -(-steps // steps_per_epoch)
        if len(metrics) != epochs:
            raise ValueError(
                f"metrics must have one value per epoch of the preview: ceil(steps / "
                f"steps_per_epoch) = ceil({steps} / {steps_per_epoch}) = {epochs}, "
                f"got {len(metrics)}"
            )
        return metrics

    def epoch_ends(self) -> list[int]:
        """The step at which each of `metrics` was measured (the end of its epoch)."""
        if not self.metrics or self.steps_per_epoch is None:
            return []
        return [self.steps_per_epoch * (epoch + 1) for epoch in range(len(self.metrics))]


class PreviewResponse(BaseModel):
    step: list[int]
    lr: list[float]


def _require_increasing(values: list[int]) -> list[int]:
    if any(later <= earlier for earlier, later in itertools.pairwise(values)):
        raise ValueError(f"must be strictly increasing, got {values}")
    return values
