"""Workloads a job can train: the built-ins' descriptions (for GET /v1/workloads) and the spec.

Pure data: the torch side lives in `lrtune.workers.workloads`, so the API can list workloads and
validate their params without importing torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ParamType = Literal["int", "float", "str", "bool"]


class WorkloadParam(BaseModel):
    """One parameter a built-in workload accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: ParamType
    default: Any = None
    description: str
    choices: list[Any] | None = None
    required: bool = False
    minimum: float | None = Field(
        default=None, description="Smallest allowed value (numbers only)."
    )
    maximum: float | None = Field(default=None, description="Largest allowed value (numbers only).")
    nullable: bool = Field(default=False, description="Whether null is allowed (e.g. 'no limit').")


class WorkloadInfo(BaseModel):
    """A built-in workload: what it trains, its params and the metrics it reports every epoch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    params: list[WorkloadParam]
    metrics: list[str] = Field(
        description="Metrics reported every epoch besides train_loss and val_loss."
    )
    default_metric: str
    default_mode: Literal["max", "min"]

    def param(self, name: str) -> WorkloadParam | None:
        return next((p for p in self.params if p.name == name), None)


def _batch_size(default: int) -> WorkloadParam:
    return WorkloadParam(
        name="batch_size",
        type="int",
        default=default,
        description="Examples per optimizer step; steps per epoch = ceil(n_train / batch_size).",
        minimum=1,
    )


BUILTIN_WORKLOADS: dict[str, WorkloadInfo] = {
    info.name: info
    for info in (
        WorkloadInfo(
            name="mnist1d",
            description=(
                "MNIST-1D (Greydanus 2020): 10-class classification of 40-sample 1D signals, "
                "generated in memory by the mnist1d package. Seconds per epoch on a CPU. "
                "Parameter names: mlp 'hidden.*', 'head.*'; cnn1d 'features.*', 'head.*'."
            ),
            params=[
                WorkloadParam(
                    name="model",
                    type="str",
                    default="mlp",
                    choices=["mlp", "cnn1d"],
                    description="mlp: 40-100-100-10; cnn1d: three strided conv layers, as in "
                    "the MNIST-1D paper.",
                ),
                _batch_size(128),
                WorkloadParam(
                    name="n_train",
                    type="int",
                    default=4000,
                    minimum=10,
                    description="Training examples.",
                ),
                WorkloadParam(
                    name="n_test",
                    type="int",
                    default=1000,
                    minimum=10,
                    description="Validation examples (held out from the same generation).",
                ),
                WorkloadParam(
                    name="data_seed",
                    type="int",
                    default=42,
                    minimum=0,
                    description="Seed of the data generation (42 is the published dataset's); "
                    "the trial seed only drives initialisation and batch order.",
                ),
            ],
            metrics=["val_accuracy"],
            default_metric="val_accuracy",
            default_mode="max",
        ),
        WorkloadInfo(
            name="digits",
            description=(
                "scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with "
                "scikit-learn. Under a second per epoch on a CPU. "
                "Parameter names: mlp 'hidden.*', 'head.*'; cnn 'features.*', 'head.*'."
            ),
            params=[
                WorkloadParam(
                    name="model",
                    type="str",
                    default="mlp",
                    choices=["mlp", "cnn"],
                    description="mlp: 64-128-10; cnn: two 3x3 conv layers and a linear head.",
                ),
                _batch_size(64),
                WorkloadParam(
                    name="val_fraction",
                    type="float",
                    default=0.25,
                    minimum=0.05,
                    maximum=0.9,
                    description="Share of the images held out for validation (stratified).",
                ),
                WorkloadParam(
                    name="split_seed",
                    type="int",
                    default=0,
                    minimum=0,
                    description="Seed of the train/validation split, fixed across trials so "
                    "every schedule is judged on the same images.",
                ),
            ],
            metrics=["val_accuracy"],
            default_metric="val_accuracy",
            default_mode="max",
        ),
        WorkloadInfo(
            name="cifar10",
            description=(
                "CIFAR-10 with a ResNet (He et al. 2016, the CIFAR variant used in the CLR and "
                "SGDR papers), read from the standard python batches (data_batch_1..5, "
                "test_batch) in data_dir; nothing is downloaded. Minutes per epoch on a CPU: "
                "use limit_train for small runs. Parameter names: 'stem.*', 'stage1.*', "
                "'stage2.*', 'stage3.*', 'head.*'."
            ),
            params=[
                WorkloadParam(
                    name="data_dir",
                    type="str",
                    required=True,
                    description="Folder holding cifar-10-batches-py's files (or that folder's "
                    "parent), readable on every worker.",
                ),
                _batch_size(128),
                WorkloadParam(
                    name="depth",
                    type="int",
                    default=20,
                    minimum=8,
                    description="Network depth 6n+2: 20, 32, 44, 56, 110 ...",
                ),
                WorkloadParam(
                    name="limit_train",
                    type="int",
                    default=None,
                    nullable=True,
                    minimum=1,
                    description="Use only the first N training images (null: all 50,000).",
                ),
                WorkloadParam(
                    name="limit_test",
                    type="int",
                    default=None,
                    nullable=True,
                    minimum=1,
                    description="Use only the first N test images (null: all 10,000).",
                ),
                WorkloadParam(
                    name="augment",
                    type="bool",
                    default=True,
                    description="Random 32x32 crops of the 4-pixel-padded image and horizontal "
                    "flips, as in the ResNet paper.",
                ),
            ],
            metrics=["val_accuracy"],
            default_metric="val_accuracy",
            default_mode="max",
        ),
        WorkloadInfo(
            name="charlm",
            description=(
                "Character-level language modelling of Python source with a small causal "
                "transformer (pre-LN, learned positions), where warmup and the decay's shape "
                "matter as they do for real transformers; train it with AdamW. The corpus ships "
                "with every Python: 80 fixed modules of the standard library's own .py sources "
                "(CHARLM_FILES in lrtune.workers.workloads), split by file: every 10th of the "
                "sorted list is validation. Printable ASCII and newline are tokens, any other "
                "character is one 'other' token (97 in all). val_loss is in nats per character. "
                "Seconds per epoch on a CPU with the default limits. "
                "Parameter names: 'embed.*', 'blocks.*', 'head.*'."
            ),
            params=[
                _batch_size(32),
                WorkloadParam(
                    name="seq_len",
                    type="int",
                    default=64,
                    minimum=8,
                    maximum=1024,
                    description="Characters of context: the text is cut into non-overlapping "
                    "windows of seq_len + 1, the target being the input shifted by one.",
                ),
                WorkloadParam(
                    name="n_layers",
                    type="int",
                    default=2,
                    minimum=1,
                    maximum=12,
                    description="Transformer blocks.",
                ),
                WorkloadParam(
                    name="d_model",
                    type="int",
                    default=128,
                    minimum=16,
                    maximum=1024,
                    description="Width of the residual stream (the MLP is 4x wider); a "
                    "multiple of n_heads.",
                ),
                WorkloadParam(
                    name="n_heads",
                    type="int",
                    default=4,
                    minimum=1,
                    maximum=16,
                    description="Attention heads per block.",
                ),
                WorkloadParam(
                    name="limit_train",
                    type="int",
                    default=1024,
                    nullable=True,
                    minimum=1,
                    description="Training windows per epoch, spread evenly over the training "
                    "files (null: all, about 37,000 at seq_len 64).",
                ),
                WorkloadParam(
                    name="limit_val",
                    type="int",
                    default=256,
                    nullable=True,
                    minimum=1,
                    description="Validation windows, spread evenly over the validation files "
                    "(null: all, about 4,000 at seq_len 64).",
                ),
            ],
            metrics=["val_bits_per_char"],
            default_metric="val_loss",
            default_mode="min",
        ),
    )
}

# "package.module:callable", the form `importlib` and entry points use.
ENTRYPOINT_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class WorkloadSpec(BaseModel):
    """What a job trains: a built-in by `name`, or user code by `entrypoint`, with its `params`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        default=None, description="A built-in workload (see GET /v1/workloads)."
    )
    entrypoint: str | None = Field(
        default=None,
        description="User code, 'package.module:callable', importable on the workers; called "
        "with **params, it returns an lrtune.workers.workloads.Workload.",
    )
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> WorkloadSpec:
        if (self.name is None) == (self.entrypoint is None):
            raise ValueError("give exactly one of 'name' (a built-in) or 'entrypoint'")
        if self.entrypoint is not None and not ENTRYPOINT_PATTERN.match(self.entrypoint):
            raise ValueError(
                f"entrypoint must look like 'package.module:callable', got {self.entrypoint!r}"
            )
        if self.name is not None:
            info = BUILTIN_WORKLOADS.get(self.name)
            if info is None:
                raise ValueError(
                    f"unknown workload {self.name!r}; built-ins are {sorted(BUILTIN_WORKLOADS)}"
                )
            # Normalised params: defaults filled in, so a trial never guesses.
            object.__setattr__(self, "params", resolve_params(info, self.params))
        return self

    @property
    def label(self) -> str:
        """The name a user knows this workload by."""
        return self.name if self.name is not None else str(self.entrypoint)


def resolve_params(info: WorkloadInfo, params: dict[str, Any]) -> dict[str, Any]:
    """Check `params` against a built-in's declaration and fill in defaults; ValueError if wrong."""
    known = {p.name for p in info.params}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"workload {info.name!r} has no param(s) {unknown}; its params are {sorted(known)}"
        )
    resolved: dict[str, Any] = {}
    for param in info.params:
        if param.name not in params:
            if param.required:
                raise ValueError(f"workload {info.name!r} needs param {param.name!r}")
            resolved[param.name] = param.default
            continue
        resolved[param.name] = _check_value(info.name, param, params[param.name])
    check = _CROSS_CHECKS.get(info.name)
    if check is not None:
        check(resolved)
    return resolved


def _check_charlm(params: dict[str, Any]) -> None:
    if params["d_model"] % params["n_heads"]:
        raise ValueError(
            f"workload 'charlm' param 'd_model' must be a multiple of n_heads "
            f"({params['n_heads']}), got {params['d_model']}"
        )


# Constraints between a built-in's params, checked once each param has passed its own, so a
# job fails at submission rather than in its first trial.
_CROSS_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"charlm": _check_charlm}


def _check_value(workload: str, param: WorkloadParam, value: Any) -> Any:
    where = f"workload {workload!r} param {param.name!r}"
    if value is None:
        if param.nullable:
            return None
        raise ValueError(f"{where} may not be null")
    # bool is an int in Python; refuse it where a number is meant, and numbers where a bool is.
    if param.type == "bool":
        ok = isinstance(value, bool)
    elif param.type == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif param.type == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str) and value != ""
    if not ok:
        raise ValueError(f"{where} must be a {param.type}, got {value!r}")
    if param.choices is not None and value not in param.choices:
        raise ValueError(f"{where} must be one of {param.choices}, got {value!r}")
    if param.minimum is not None and value < param.minimum:
        raise ValueError(f"{where} must be at least {param.minimum:g}, got {value!r}")
    if param.maximum is not None and value > param.maximum:
        raise ValueError(f"{where} must be at most {param.maximum:g}, got {value!r}")
    return value
