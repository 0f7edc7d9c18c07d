"""Search spaces over schedule fields: the domains a job spec may use and each policy's default.

A space maps a field to a plain value (fixed) or a domain: {"choice": [...]}, {"uniform": [a, b]},
{"loguniform": [a, b]} or {"int": [a, b]}. Durations may be written in epochs (`step_size_epochs`)
or as a fraction of the whole training (`decay_steps_frac`); `resolve_schedule` turns a sampled
point into a concrete spec counted in steps.
"""

from __future__ import annotations

import builtins
import functools
import math
from typing import Annotated, Any

from lrtune.schemas.schedules import MAX_STEPS, SCHEDULE_MODELS, ScheduleSpec, parse_schedule
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

DURATION_SUFFIXES = ("_epochs", "_frac")
_LIST_DURATIONS = ("milestones", "boundaries")
# Fields that say the same thing two ways: a space sets one of them.
_ALTERNATIVES: dict[str, tuple[tuple[str, str], ...]] = {"wsd": (("decay_steps", "decay_frac"),)}


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    choice: list[Any] = Field(min_length=1)


class Uniform(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uniform: tuple[float, float]

    @field_validator("uniform")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        return _ordered_finite(bounds, strict=True)


class LogUniform(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loguniform: tuple[float, float]

    @field_validator("loguniform")
    @classmethod
    def _ordered_positive(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return _ordered_finite(bounds, strict=True)


class IntRange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The contract spells this domain {"int": [a, b]}; inside the class `int` is that field.
    int: tuple[builtins.int, builtins.int]

    @field_validator("int")
    @classmethod
    def _ordered(
        cls, bounds: tuple[builtins.int, builtins.int]
    ) -> tuple[builtins.int, builtins.int]:
        if bounds[1] < bounds[0]:
            raise ValueError(f"bounds are reversed: {list(bounds)}")
        return bounds


Domain = Choice | Uniform | LogUniform | IntRange
DOMAIN_KEYS: dict[str, type[BaseModel]] = {
    "choice": Choice,
    "uniform": Uniform,
    "loguniform": LogUniform,
    "int": IntRange,
}


class SearchSpaceError(ValueError):
    """A problem with one key of a search space: `key` says which, and the message names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def parse_domain(value: Any) -> Domain | Any:
    """A one-key dict naming a domain becomes that domain; anything else is a fixed value."""
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        if key in DOMAIN_KEYS:
            return DOMAIN_KEYS[key].model_validate(value)
    return value


def field_of(policy: str, key: str) -> tuple[str, str | None]:
    """Split `step_size_epochs` into (`step_size`, `_epochs`); ValueError for unknown fields."""
    model = SCHEDULE_MODELS[policy]
    for suffix in DURATION_SUFFIXES:
        if key.endswith(suffix) and key.removesuffix(suffix) in model.durations():
            return key.removesuffix(suffix), suffix
    if key == "policy" or key not in model.model_fields:
        known = sorted(
            [f for f in model.model_fields if f != "policy"]
            + [f + s for f in model.durations() for s in DURATION_SUFFIXES]
        )
        raise ValueError(f"policy {policy!r} has no field {key!r}; its fields are {known}")
    return key, None


def validate_search_space(policy: str, space: dict[str, Any]) -> dict[str, Domain | Any]:
    """Check every key names a field of `policy` and every domain is well formed;
    SearchSpaceError names the key at fault."""
    parsed: dict[str, Domain | Any] = {}
    seen: dict[str, str] = {}
    for key, value in space.items():
        try:
            field, suffix = field_of(policy, key)
        except ValueError as error:
            raise SearchSpaceError(key, str(error)) from None
        if field in seen:
            raise SearchSpaceError(key, f"{key!r} and {seen[field]!r} set the same field {field!r}")
        seen[field] = key
        try:
            parsed[key] = parse_domain(value)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])  # e.g. uniform.1
            message = problem["msg"].removeprefix("Value error, ")
            raise SearchSpaceError(key, f"{key}: {where}: {message}") from None
        if suffix is None:
            _check_values(policy, field, parsed[key])
    for one, other in _ALTERNATIVES.get(policy, ()):
        if one in seen and other in seen:
            raise SearchSpaceError(
                seen[other],
                f"{seen[one]!r} and {seen[other]!r} both set {policy}'s decay; give one of them",
            )
    return parsed


def _check_values(policy: str, field: str, value: Domain | Any) -> None:
    """A fixed value, every choice and a range's bounds must be valid for the field itself (e.g.
    min_lr_ratio in [0, 1]); what depends on other fields is checked when a point is resolved."""
    if isinstance(value, Choice):
        candidates = list(value.choice)
    elif isinstance(value, Uniform | LogUniform):
        candidates = list(next(iter(value.model_dump().values())))
    elif isinstance(value, IntRange):
        candidates = list(value.int)
    else:
        candidates = [value]
    adapter = _field_adapter(policy, field)
    for candidate in candidates:
        try:
            adapter.validate_python(candidate)
        except ValidationError as error:
            problem = error.errors()[0]["msg"]
            raise SearchSpaceError(
                field, f"{field} = {candidate!r} is not a valid value: {problem}"
            ) from None


@functools.cache
def _field_adapter(policy: str, field: str) -> TypeAdapter[Any]:
    # The field's FieldInfo as metadata carries its constraints (ge, le, allow_inf_nan, ...).
    info = SCHEDULE_MODELS[policy].model_fields[field]
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[info.annotation, info])  # type: ignore[arg-type]
    return adapter


def check_metric_mode(policy: str, space: dict[str, Any], metric_mode: str) -> None:
    """plateau watches the job's metric, so its `mode` is the metric's: a space may leave it out
    (it is filled in) or repeat it, not contradict it; ValueError otherwise."""
    if policy != "plateau" or "mode" not in space:
        return
    if space["mode"] != metric_mode:
        raise ValueError(
            f"plateau watches the job's metric, whose mode is {metric_mode!r}; its search space "
            f"sets mode {space['mode']!r} (leave mode out: it follows the metric)"
        )


def resolve_schedule(
    policy: str,
    point: dict[str, Any],
    *,
    steps_per_epoch: int,
    total_steps: int,
    metric_mode: str | None = None,
) -> ScheduleSpec:
    """Turn one sampled point of a search space into a schedule spec counted in optimizer steps.

    Durations the point leaves out default to the whole training length (`decay_steps`,
    `total_steps`, `t_0`, `step_size`), so every policy has a sensible horizon. With
    `metric_mode` (the job's), plateau watches the metric in that sense.
    """
    if metric_mode is not None:
        check_metric_mode(policy, point, metric_mode)
    fields: dict[str, Any] = {"policy": policy}
    if policy == "plateau" and metric_mode is not None:
        fields["mode"] = metric_mode
    for key, value in point.items():
        field, suffix = field_of(policy, key)
        if suffix == "_epochs":
            fields[field] = _convert(value, lambda v: v * steps_per_epoch)
        elif suffix == "_frac":
            fields[field] = _convert(value, lambda v: v * total_steps)
        else:
            fields[field] = value
    model = SCHEDULE_MODELS[policy]
    for field in model.duration_fields:
        if (
            field not in fields
            and field not in _LIST_DURATIONS
            and model.model_fields[field].is_required()
        ):
            fields[field] = total_steps
    return parse_schedule(fields)


def compress_schedule(schedule: ScheduleSpec, *, epochs: int, budget_epochs: int) -> ScheduleSpec:
    """The whole schedule run in `epochs` instead of `budget_epochs`: every field counted in
    steps (the warmup's, boundaries and milestones included) times epochs / budget_epochs,
    rounded to whole steps and at least 1 (a zero stays zero), so its shape is the same at any
    length. A WSD decay given as `decay_frac` stays that share. ValidationError when the
    shorter schedule is not valid (e.g. two milestones rounded onto one step)."""
    factor = epochs / budget_epochs
    fields = schedule.model_dump()
    for field in type(schedule).durations():
        value = fields.get(field)
        if value is not None:
            fields[field] = _convert(value, lambda v: v * factor) if value else value
    if fields.get("decay_frac") is not None:
        fields["decay_steps"] = None  # round(decay_frac x total_steps) again
    return parse_schedule(fields)


def middle_point(policy: str, space: dict[str, Any]) -> dict[str, Any]:
    """The point in the middle of a search space: a range's midpoint (geometric for loguniform,
    rounded for int), a choice's first option, a fixed value as it is. ValueError for a space
    `validate_search_space` refuses."""
    point: dict[str, Any] = {}
    for key, domain in validate_search_space(policy, space).items():
        if isinstance(domain, Choice):
            point[key] = domain.choice[0]
        elif isinstance(domain, LogUniform):
            point[key] = math.sqrt(domain.loguniform[0] * domain.loguniform[1])
        elif isinstance(domain, Uniform):
            point[key] = (domain.uniform[0] + domain.uniform[1]) / 2
        elif isinstance(domain, IntRange):
            point[key] = round((domain.int[0] + domain.int[1]) / 2)
        else:
            point[key] = domain
    return point


class SpacePreviewRequest(BaseModel):
    """POST /v1/search-spaces/preview: a policy's curve at the middle of a search space."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(description="The schedule policy the space is of.")
    search_space: dict[str, Any] = Field(description="A search space of the policy's fields.")
    steps: int = Field(
        gt=0, le=1_000_000, description="The training's length: `_frac` durations are of it."
    )
    steps_per_epoch: int = Field(gt=0, le=MAX_STEPS, description="What `_epochs` count in.")
    every: int = Field(
        1, gt=0, le=MAX_STEPS, description="Return every n-th step only (t = 0, n, 2n, ...)."
    )


def _convert(value: Any, to_steps: Any) -> Any:
    if isinstance(value, list):
        return [max(1, round(to_steps(v))) for v in value]
    return max(1, round(to_steps(value)))


def _ordered_finite(bounds: tuple[float, float], *, strict: bool) -> tuple[float, float]:
    if not all(math.isfinite(b) for b in bounds):
        raise ValueError("bounds must be finite numbers")
    if bounds[1] < bounds[0] or (strict and bounds[1] == bounds[0]):
        raise ValueError(f"bounds are reversed or empty: {list(bounds)}")
    return bounds


# Each policy's default search space: wide enough to matter, small enough for a few trials.
# Rates span two decades; `lr_bounds` (explicit or "auto") recentres them on the user's range.
DEFAULT_SEARCH_SPACES: dict[str, dict[str, Any]] = {
    "fixed": {"lr": {"loguniform": [1e-3, 1.0]}},
    "step": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "step_size_frac": {"choice": [0.25, 0.34, 0.5]},
        "gamma": {"choice": [0.1, 0.3, 0.5]},
    },
    "multistep": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "milestones_frac": {"choice": [[0.5, 0.75], [0.3, 0.6, 0.8]]},
        "gamma": {"choice": [0.1, 0.2]},
    },
    "piecewise": {
        "boundaries_frac": [0.5, 0.75],
        "values": {"choice": [[0.1, 0.01, 0.001], [0.05, 0.01, 0.002], [0.3, 0.03, 0.003]]},
    },
    "exponential": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "decay_rate": {"uniform": [0.5, 0.98]},
        "decay_steps_epochs": 1,
    },
    "natural_exp": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "decay_rate": {"uniform": [0.02, 0.7]},
        "decay_steps_epochs": 1,
    },
    "inverse_time": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "decay_rate": {"uniform": [0.1, 2.0]},
        "decay_steps_epochs": 1,
    },
    "polynomial": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "power": {"choice": [0.5, 1.0, 2.0]},
        "end_lr": 1e-5,
        "decay_steps_frac": 1.0,
    },
    "cosine": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "alpha": {"choice": [0.0, 0.01, 0.1]},
        "decay_steps_frac": 1.0,
    },
    "linear_cosine": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "num_periods": {"choice": [0.5, 1.0, 2.0]},
        "decay_steps_frac": 1.0,
    },
    "noisy_linear_cosine": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "num_periods": {"choice": [0.5, 1.0, 2.0]},
        "initial_variance": {"choice": [0.1, 0.5, 1.0]},
        "decay_steps_frac": 1.0,
    },
    "clr": {
        "base_lr": {"loguniform": [1e-4, 1e-2]},
        "max_lr": {"loguniform": [2e-2, 1.0]},
        "step_size_frac": {"choice": [0.125, 0.25]},
        "mode": {"choice": ["triangular", "triangular2", "exp_range"]},
        "gamma": {"uniform": [0.999, 1.0]},
    },
    "sgdr": {
        "eta_max": {"loguniform": [1e-2, 1.0]},
        "eta_min": 0.0,
        "t_0_frac": {"choice": [0.1, 0.25, 0.5]},
        "t_mult": {"choice": [1, 2]},
    },
    "one_cycle": {
        "max_lr": {"loguniform": [1e-2, 1.0]},
        "pct_start": {"uniform": [0.2, 0.4]},
        "div_factor": {"choice": [10.0, 25.0]},
        "anneal": {"choice": ["cos", "linear"]},
        "total_steps_frac": 1.0,
    },
    # The stable phase does not depend on the length, the cooldown's share does: 10-20% matches
    # a cosine run in Hägele et al. 2024. A short warmup, as WSD is used.
    "wsd": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "decay_frac": {"choice": [0.1, 0.2, 0.3]},
        "decay_shape": "1-sqrt",
        "warmup_steps_frac": 0.05,
        "total_steps_frac": 1.0,
    },
    # The timescale defaults to the warmup's length: lr * sqrt(warmup / t) after it (fairseq).
    "inverse_sqrt": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "warmup_steps_frac": {"choice": [0.02, 0.05, 0.1]},
    },
    "rex": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "min_lr": 0.0,
        "total_steps_frac": 1.0,
    },
    # Counted in epochs: budgets are tens of epochs, so patience is short.
    "plateau": {
        "lr": {"loguniform": [1e-3, 1.0]},
        "factor": {"choice": [0.1, 0.3, 0.5]},
        "patience": {"choice": [0, 1, 2]},
    },
}
