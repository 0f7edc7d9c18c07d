"""The models and data a trial trains: the built-ins (mnist1d, digits, cifar10, charlm) and user
code.

Datasets live in memory as tensors, are loaded once per process (a Ray worker runs many trials)
and are batched by `TensorBatches`, a shuffled-index iterator: cheaper than a DataLoader with
worker processes on a two-core machine, and its order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import math
import os
import pickle
import random
import sysconfig
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from lrtune.schemas.trials import single_model_metric
from lrtune.schemas.workloads import BUILTIN_WORKLOADS, ENTRYPOINT_PATTERN, resolve_params
from lrtune.workers.train_function import TrainFunction
from lrtune.workers.user_code import EntrypointRefused, active_sources
from torch import Tensor, nn
from torch.nn import functional as F

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
# A validation metric: (outputs of the whole validation set, its targets) -> a number.
MetricFn = Callable[[Tensor, Tensor], float]


class WorkloadError(ValueError):
    """A workload cannot be built: unknown name, bad params, missing data, broken user code."""


class BatchSource(Protocol):
    """What a trial iterates: (inputs, targets) batches with a known count per epoch."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Share of examples whose highest logit is the target class."""
    return float((outputs.argmax(dim=1) == targets).float().mean().item())


@dataclass
class Workload:
    """A model, its data and how to score it; what `build_workload` and user entrypoints return.

    - `model`: trained in place. Parameter-group rules (`param_groups` in a job) match the names
      of `model.named_parameters()`, e.g. "head.*" or "features.".
    - `train_loader`, `val_loader`: iterables of (inputs, targets) batches. `len(train_loader)`
      must be the number of optimizer steps per epoch, known before training (schedules are
      counted in steps). A loader with `set_epoch(epoch)` (like `TensorBatches`, or a
      DistributedSampler-style loader) is told the 0-based epoch before each pass, which lets it
      reshuffle reproducibly.
    - `loss_fn(outputs, targets)`: the mean loss of a batch, used for training and val_loss.
    - `metrics`: name -> fn(outputs, targets) -> float, evaluated on the concatenated outputs
      of the whole validation set, e.g. {"val_accuracy": accuracy}.
    - `ensemble_average`: how a snapshot ensemble (a job's `snapshots`) averages its members'
      outputs before `loss_fn` and `metrics` score them: "probabilities", the softmax over the
      last dimension (outputs are logits; the average goes on as its logarithm, logits of the
      averaged probabilities), or "outputs", the raw outputs (e.g. a regression's).
    """

    model: nn.Module
    train_loader: BatchSource
    val_loader: Iterable[Batch]
    loss_fn: LossFn = field(default_factory=lambda: nn.CrossEntropyLoss())
    metrics: Mapping[str, MetricFn] = field(default_factory=lambda: {"val_accuracy": accuracy})
    ensemble_average: Literal["probabilities", "outputs"] = "probabilities"

    @property
    def steps_per_epoch(self) -> int:
        try:
            steps = len(self.train_loader)
        except TypeError as error:
            raise WorkloadError(
                "the workload's train_loader has no len(): steps per epoch must be known up "
                "front because schedules are counted in optimizer steps"
            ) from error
        if steps <= 0:
            raise WorkloadError("the workload's train_loader yields no batches")
        return steps


def check_reports_metric(workload: Workload, metric: str, *, label: str) -> None:
    """WorkloadError unless `workload` reports `metric` every epoch (an ensemble_<metric> of
    snapshots: unless it reports <metric>)."""
    reported = {"train_loss", "val_loss", *workload.metrics}
    if single_model_metric(metric) not in reported:
        raise WorkloadError(
            f"metric {metric!r} is not reported by workload {label!r}; "
            f"it reports {sorted(reported)}"
        )


class TensorBatches:
    """Mini-batches of in-memory tensors, reshuffled each epoch from (seed, epoch).

    `transform(inputs, generator)` turns a stored batch (e.g. uint8 images) into model inputs;
    `generator` is None when not shuffling, so validation batches are not augmented.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        transform: Callable[[Tensor, torch.Generator | None], Tensor] | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise WorkloadError(f"{len(inputs)} inputs but {len(targets)} targets")
        if batch_size <= 0:
            raise WorkloadError(f"batch_size must be positive, got {batch_size}")
        self.inputs = inputs
        self.targets = targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.transform = transform
        self.epoch = 0

    def __len__(self) -> int:
        # The last, smaller batch is kept: every example counts once per epoch.
        return math.ceil(len(self.inputs) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def to(self, device: torch.device | str) -> TensorBatches:
        """The same batches with the data moved once to `device`, not copied every step."""
        moved = TensorBatches(
            self.inputs.to(device),
            self.targets.to(device),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            transform=self.transform,
        )
        moved.epoch = self.epoch
        return moved

    def __iter__(self) -> Iterator[Batch]:
        generator: torch.Generator | None = None
        if self.shuffle:
            # A generator of its own, so the order depends on nothing but (seed, epoch).
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.inputs), generator=generator)
        else:
            order = torch.arange(len(self.inputs))
        order = order.to(self.inputs.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            inputs = self.inputs[index]
            if self.transform is not None:
                inputs = self.transform(inputs, generator)
            yield inputs, self.targets[index]


def build_workload(
    name_or_entrypoint: str, params: Mapping[str, Any] | None = None, seed: int = 0
) -> Workload:
    """`build_training` where lrtune's own loop must train (the LR range test): a
    `TrainFunction` is refused with WorkloadError."""
    built = build_training(name_or_entrypoint, params, seed)
    if isinstance(built, TrainFunction):
        raise WorkloadError(
            f"entrypoint {name_or_entrypoint!r} returns a TrainFunction, and the LR range test "
            "runs lrtune's own loop on a Workload: give the job lr_bounds {min, max} instead "
            'of "auto"'
        )
    return built


def build_training(
    name_or_entrypoint: str, params: Mapping[str, Any] | None = None, seed: int = 0
) -> Workload | TrainFunction:
    """Build a built-in workload by name, or call user code given as "package.module:callable",
    which returns a `Workload` (lrtune's loop trains it) or a `TrainFunction` (its own loop).

    `seed` drives the model's initialisation and the batch order (the data of the built-ins is
    fixed by their own data seeds, so every trial sees the same examples). User code is called
    with `**params` after the global RNGs are seeded with `seed`. Raises `WorkloadError`.
    """
    params = dict(params or {})
    if name_or_entrypoint in BUILTIN_WORKLOADS:
        info = BUILTIN_WORKLOADS[name_or_entrypoint]
        try:
            resolved = resolve_params(info, params)
        except ValueError as error:
            raise WorkloadError(str(error)) from error
        return _BUILDERS[name_or_entrypoint](resolved, seed)
    if ":" not in name_or_entrypoint:
        raise WorkloadError(
            f"unknown workload {name_or_entrypoint!r}: built-ins are {sorted(BUILTIN_WORKLOADS)}, "
            f"user code is given as 'package.module:callable'"
        )
    factory = check_entrypoint(name_or_entrypoint)
    seed_everything(seed)
    try:
        workload = factory(**params)
    except Exception as error:
        raise WorkloadError(
            f"entrypoint {name_or_entrypoint!r} raised {type(error).__name__}: {error}"
        ) from error
    if isinstance(workload, TrainFunction):
        return workload
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"entrypoint {name_or_entrypoint!r} must return an lrtune.workers.Workload or an "
            f"lrtune.workers.TrainFunction, got {type(workload).__name__}"
        )
    workload.steps_per_epoch  # noqa: B018 (raises WorkloadError for a loader without len)
    return workload


def check_entrypoint(entrypoint: str) -> Callable[..., Any]:
    """Import "package.module:callable" and return the callable; WorkloadError if that fails,
    or if the module lies outside this process's code paths and allowed packages (see
    `lrtune.workers.user_code.EntrypointSources`).

    Cheap enough for a job to call before it starts any trial, so a typo fails the job at once.
    """
    if not ENTRYPOINT_PATTERN.match(entrypoint):
        raise WorkloadError(
            f"entrypoint must look like 'package.module:callable', got {entrypoint!r}"
        )
    module_name, _, attribute_path = entrypoint.partition(":")
    sources = active_sources()
    try:
        sources.check(entrypoint)
    except EntrypointRefused as error:
        raise WorkloadError(str(error)) from None
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # a user module may raise anything while importing
        raise WorkloadError(
            f"cannot import {module_name!r} for entrypoint {entrypoint!r}: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        sources.check_imported(entrypoint, target)
    except EntrypointRefused as error:
        raise WorkloadError(str(error)) from None
    for attribute in attribute_path.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError as error:
            raise WorkloadError(
                f"entrypoint {entrypoint!r}: {module_name!r} has no attribute {attribute_path!r}"
            ) from error
    if not callable(target):
        raise WorkloadError(
            f"entrypoint {entrypoint!r} is a {type(target).__name__}, not a callable"
        )
    return target


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (what user code may draw from)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_shuffle_seed(workload: Workload, shuffle_seed: int) -> None:
    """Order the training batches by `shuffle_seed` instead of the trial's seed.

    Only a `TensorBatches` loader has an order of its own to reseed; any other loader draws
    from wherever it likes, so a data seed cannot be honoured there (WorkloadError).
    """
    if not isinstance(workload.train_loader, TensorBatches):
        raise WorkloadError(
            "shuffle_seed needs the workload's train_loader to be an lrtune TensorBatches, whose "
            f"order is a function of (seed, epoch); got {type(workload.train_loader).__name__}"
        )
    workload.train_loader.seed = shuffle_seed


# --- mnist1d ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def mnist1d_arrays(n_train: int, n_test: int, data_seed: int) -> tuple[Tensor, ...]:
    """MNIST-1D generated in memory (no download): x_train, y_train, x_test, y_test.

    With the defaults (4,000 + 1,000, seed 42) this is the published dataset's split: the
    package generates the examples in one shuffled pool and the first 80% are the training set.

    Generating takes seconds (and importing mnist1d pulls matplotlib in), which every fresh
    trial process would pay before its first step; so the arrays are also kept in a file under
    the machine's temporary folder, which the next process loads in milliseconds.
    """
    cached = _mnist1d_cache_file(n_train, n_test, data_seed)
    try:
        arrays: tuple[Tensor, ...] = tuple(torch.load(cached, weights_only=True))
        return arrays
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        pass  # not made yet on this machine (or a broken file): make it
    arrays = _generate_mnist1d(n_train, n_test, data_seed)
    _save_atomically(list(arrays), cached)
    return arrays


def _mnist1d_cache_file(n_train: int, n_test: int, data_seed: int) -> Path:
    # The generator's version is in the name: a new mnist1d may make other examples.
    version = importlib.metadata.version("mnist1d")
    name = f"mnist1d-{n_train}-{n_test}-{data_seed}-mnist1d{version}.pt"
    return Path(tempfile.gettempdir()) / "lrtune-data" / name


def _save_atomically(value: Any, path: Path) -> None:
    """Write beside, then rename: a process reading at the same time sees all or nothing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as part:
            torch.save(value, part)
        os.replace(part.name, path)
    except OSError:
        pass  # a read-only temporary folder: every process generates, as before


def _generate_mnist1d(n_train: int, n_test: int, data_seed: int) -> tuple[Tensor, ...]:
    from mnist1d.data import get_dataset_args, make_dataset  # heavy (matplotlib); only here

    args = get_dataset_args()
    # Whole classes: make_dataset makes num_samples // 10 examples of each digit.
    args.num_samples = math.ceil((n_train + n_test) / 10) * 10
    args.train_split = 1.0  # we split below, so n_train and n_test are exact
    args.seed = data_seed
    # make_dataset reseeds the global numpy and random generators; restore them so building a
    # workload leaves a trial's seeding alone whether or not the dataset came from the cache.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        dataset = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    x = torch.as_tensor(dataset["x"], dtype=torch.float32)
    y = torch.as_tensor(dataset["y"], dtype=torch.int64)
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def _mnist1d(params: dict[str, Any], seed: int) -> Workload:
    x_train, y_train, x_test, y_test = mnist1d_arrays(
        params["n_train"], params["n_test"], params["data_seed"]
    )
    torch.manual_seed(seed)
    model: nn.Module
    if params["model"] == "mlp":
        model = nn.Sequential(
            OrderedDict(
                hidden=nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU()),
                head=nn.Linear(100, 10),
            )
        )
    else:
        # The MNIST-1D paper's ConvBase: lengths 40 -> 19 -> 10 -> 5, so 25 x 5 features.
        model = nn.Sequential(
            OrderedDict(
                channels=nn.Unflatten(1, (1, 40)),
                features=nn.Sequential(
                    nn.Conv1d(1, 25, 5, stride=2, padding=1),
                    nn.ReLU(),
                    nn.Conv1d(25, 25, 3, stride=2, padding=1),
                    nn.ReLU(),
                    nn.Conv1d(25, 25, 3, stride=2, padding=1),
                    nn.ReLU(),
                    nn.Flatten(),
                ),
                head=nn.Linear(125, 10),
            )
        )
    batch_size = params["batch_size"]
    return Workload(
        model=model,
        train_loader=TensorBatches(
            x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed
        ),
        val_loader=TensorBatches(x_test, y_test, batch_size=1024, shuffle=False),
    )


# --- digits ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def digits_arrays(val_fraction: float, split_seed: int) -> tuple[Tensor, ...]:
    """scikit-learn's digits scaled to [0, 1] as 1x8x8 images: x_train, y_train, x_val, y_val."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_val, y_train, y_val = train_test_split(
        x, digits.target, test_size=val_fraction, random_state=split_seed, stratify=digits.target
    )
    return (
        torch.as_tensor(x_train),
        torch.as_tensor(y_train, dtype=torch.int64),
        torch.as_tensor(x_val),
        torch.as_tensor(y_val, dtype=torch.int64),
    )


def _digits(params: dict[str, Any], seed: int) -> Workload:
    x_train, y_train, x_val, y_val = digits_arrays(params["val_fraction"], params["split_seed"])
    torch.manual_seed(seed)
    model: nn.Module
    if params["model"] == "mlp":
        model = nn.Sequential(
            OrderedDict(
                hidden=nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU()),
                head=nn.Linear(128, 10),
            )
        )
    else:
        model = nn.Sequential(
            OrderedDict(
                features=nn.Sequential(
                    nn.Conv2d(1, 16, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(16, 32, 3, padding=1),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                    nn.Flatten(),
                ),
                head=nn.Linear(32 * 4 * 4, 10),
            )
        )
    return Workload(
        model=model,
        train_loader=TensorBatches(
            x_train, y_train, batch_size=params["batch_size"], shuffle=True, seed=seed
        ),
        val_loader=TensorBatches(x_val, y_val, batch_size=1024, shuffle=False),
    )


# --- cifar10 ---------------------------------------------------------------------------------

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
# Per-channel statistics of the CIFAR-10 training set, the constants the literature uses.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches' dicts of numpy arrays, lists and bytes, and nothing else.

    `data_dir` comes from a job spec, and a plain pickle.load would run whatever code a file
    names; the batches only ever need numpy's array reconstruction.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise WorkloadError(f"CIFAR-10 file missing: {path}")
    try:
        with path.open("rb") as handle:
            # The batches were pickled by Python 2; "bytes" keeps their str keys as b"data".
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as error:
        raise WorkloadError(
            f"CIFAR-10 file {path} is not a python-version CIFAR batch: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise WorkloadError(f"CIFAR-10 file {path} is not a dict with b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise WorkloadError(
            f"CIFAR-10 file {path}: b'data' must be uint8 of shape N x 3072, "
            f"got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise WorkloadError(
            f"CIFAR-10 file {path}: b'labels' must be {len(data)} integers, got {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise WorkloadError(f"CIFAR-10 file {path}: labels must lie in 0..9")
    return data, labels


def _cifar_folder(data_dir: str) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise WorkloadError(f"CIFAR-10 data_dir does not exist or is not a folder: {root}")
    # Accept the folder the official archive unpacks to, or its parent.
    nested = root / "cifar-10-batches-py"
    if not (root / CIFAR10_TEST_FILE).exists() and nested.is_dir():
        return nested
    return root


@functools.lru_cache(maxsize=2)
def cifar10_arrays(data_dir: str) -> tuple[Tensor, ...]:
    """The CIFAR-10 python batches as uint8 N x 3 x 32 x 32 tensors: x_train, y_train, x_test,
    y_test. Kept as uint8 (150 MB for the training set) and converted per batch."""
    folder = _cifar_folder(data_dir)
    train = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    x_test, y_test = _read_cifar_batch(folder / CIFAR10_TEST_FILE)
    x_train = np.concatenate([data for data, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    return (
        torch.from_numpy(x_train.reshape(-1, 3, 32, 32)),
        torch.from_numpy(y_train.astype(np.int64)),
        torch.from_numpy(x_test.reshape(-1, 3, 32, 32)),
        torch.from_numpy(y_test.astype(np.int64)),
    )


def _normalise_cifar(images: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _augment_cifar(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Normalise; when shuffling (training), random crop of the 4-padded image and h-flip."""
    x = _normalise_cifar(images)
    if generator is None:
        return x
    n = len(x)
    # Random numbers come from the CPU generator, so the batch order and the crops share one
    # reproducible stream; only the small index tensors move to the data's device.
    offsets = torch.randint(0, 9, (n, 2), generator=generator).to(x.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (4, 4, 4, 4))  # zero padding, i.e. the mean after normalisation
    span = torch.arange(32, device=x.device)
    rows = (offsets[:, 0:1] + span)[:, None, :, None]  # n x 1 x 32 x 1
    cols = (offsets[:, 1:2] + span)[:, None, None, :]  # n x 1 x 1 x 32
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(3, device=x.device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    return torch.where(flips[:, None, None, None], cropped.flip(3), cropped)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; option A of He et al.: a strided identity padded
    with zero channels, so the CIFAR ResNets have no projection parameters."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        self.extra_channels = channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra_channels:
            half = self.extra_channels // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.extra_channels - half))
        return F.relu(out + shortcut)


def cifar_resnet(depth: int = 20, num_classes: int = 10) -> nn.Module:
    """ResNet-{depth} for 32x32 images (He et al. 2016, section 4.2): 6n+2 layers in three
    stages of 16, 32 and 64 channels."""
    if depth < 8 or (depth - 2) % 6:
        raise WorkloadError(f"ResNet depth must be 6n+2 with n >= 1 (20, 32, 44 ...), got {depth}")
    n = (depth - 2) // 6
    stages: list[tuple[str, nn.Module]] = [
        (
            "stem",
            nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            ),
        )
    ]
    in_channels = 16
    for index, channels in enumerate((16, 32, 64)):
        blocks = []
        for block in range(n):
            stride = 2 if index > 0 and block == 0 else 1
            blocks.append(_BasicBlock(in_channels, channels, stride))
            in_channels = channels
        stages.append((f"stage{index + 1}", nn.Sequential(*blocks)))
    stages.append(
        ("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)))
    )
    model = nn.Sequential(OrderedDict(stages))
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def _cifar10(params: dict[str, Any], seed: int) -> Workload:
    x_train, y_train, x_test, y_test = cifar10_arrays(str(Path(params["data_dir"]).expanduser()))
    if params["limit_train"] is not None:
        x_train, y_train = x_train[: params["limit_train"]], y_train[: params["limit_train"]]
    if params["limit_test"] is not None:
        x_test, y_test = x_test[: params["limit_test"]], y_test[: params["limit_test"]]
    if len(x_train) == 0 or len(x_test) == 0:
        raise WorkloadError(f"CIFAR-10 data in {params['data_dir']} has no training or test images")
    torch.manual_seed(seed)
    model = cifar_resnet(params["depth"])
    train_transform = _augment_cifar if params["augment"] else _no_augment
    return Workload(
        model=model,
        train_loader=TensorBatches(
            x_train,
            y_train,
            batch_size=params["batch_size"],
            shuffle=True,
            seed=seed,
            transform=train_transform,
        ),
        val_loader=TensorBatches(
            x_test, y_test, batch_size=500, shuffle=False, transform=_no_augment
        ),
    )


def _no_augment(images: Tensor, generator: torch.Generator | None) -> Tensor:
    return _normalise_cifar(images)


# --- charlm ----------------------------------------------------------------------------------

# charlm's corpus, relative to the standard library folder (sysconfig's "stdlib" path): pure
# Python modules present in CPython 3.11 to 3.13, sorted. A file missing from some Python is
# skipped. Every 10th (codecs.py, email/message.py, ...) is validation, so no file is in both.
CHARLM_FILES: tuple[str, ...] = (
    "abc.py",
    "argparse.py",
    "ast.py",
    "base64.py",
    "bisect.py",
    "bz2.py",
    "calendar.py",
    "cmd.py",
    "code.py",
    "codecs.py",
    "collections/__init__.py",
    "colorsys.py",
    "configparser.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "dis.py",
    "email/message.py",
    "enum.py",
    "filecmp.py",
    "fileinput.py",
    "fnmatch.py",
    "fractions.py",
    "ftplib.py",
    "functools.py",
    "getopt.py",
    "gettext.py",
    "glob.py",
    "graphlib.py",
    "gzip.py",
    "hashlib.py",
    "heapq.py",
    "hmac.py",
    "html/parser.py",
    "http/client.py",
    "inspect.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "locale.py",
    "logging/__init__.py",
    "lzma.py",
    "mimetypes.py",
    "numbers.py",
    "operator.py",
    "optparse.py",
    "os.py",
    "pickle.py",
    "pprint.py",
    "queue.py",
    "quopri.py",
    "random.py",
    "re/_parser.py",
    "reprlib.py",
    "sched.py",
    "secrets.py",
    "selectors.py",
    "shlex.py",
    "shutil.py",
    "smtplib.py",
    "socket.py",
    "statistics.py",
    "string.py",
    "subprocess.py",
    "tarfile.py",
    "tempfile.py",
    "textwrap.py",
    "threading.py",
    "timeit.py",
    "tokenize.py",
    "trace.py",
    "traceback.py",
    "typing.py",
    "unittest/case.py",
    "urllib/parse.py",
    "uuid.py",
    "warnings.py",
    "weakref.py",
)
CHARLM_VAL_EVERY = 10


# Token 0 is "other" (tabs, carriage returns, anything beyond ASCII); then newline and the 95
# printable ASCII characters, which is nearly all of the standard library's text.
CHARLM_VOCAB = "\n" + "".join(chr(code) for code in range(32, 127))
CHARLM_VOCAB_SIZE = len(CHARLM_VOCAB) + 1


def _charlm_table() -> np.ndarray:
    table = np.zeros(128, dtype=np.uint8)  # code point below 128 -> token
    for token, char in enumerate(CHARLM_VOCAB, start=1):
        table[ord(char)] = token
    return table


_CHARLM_TABLE = _charlm_table()


def encode_chars(text: str) -> Tensor:
    """uint8 tokens of `text`: 1 + the index in CHARLM_VOCAB, or 0 for any other character."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    tokens = np.where(codes < 128, _CHARLM_TABLE[np.minimum(codes, 127)], 0).astype(np.uint8)
    return torch.from_numpy(tokens)


def charlm_files(stdlib: str | Path | None = None) -> tuple[list[Path], list[Path]]:
    """charlm's training and validation files: CHARLM_FILES under the standard library folder
    (default: this Python's), every CHARLM_VAL_EVERY-th of the list for validation.

    The split is by position in the fixed list, so a file some Python lacks is skipped without
    moving any other file to the other side.
    """
    root = Path(stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"])
    train: list[Path] = []
    val: list[Path] = []
    for index, name in enumerate(CHARLM_FILES):
        path = root / name
        if path.is_file():
            (val if index % CHARLM_VAL_EVERY == CHARLM_VAL_EVERY - 1 else train).append(path)
    return train, val


@functools.lru_cache(maxsize=1)
def charlm_tokens() -> tuple[Tensor, Tensor]:
    """The training and validation text as uint8 tokens, each split's files joined in order."""
    train, val = charlm_files()
    if not train or not val:
        raise WorkloadError(
            f"charlm found no corpus files under {sysconfig.get_paths()['stdlib']} "
            f"({len(train)} training, {len(val)} validation)"
        )

    def read(paths: list[Path]) -> Tensor:
        return encode_chars("".join(p.read_text(encoding="utf-8", errors="replace") for p in paths))

    return read(train), read(val)


def char_windows(tokens: Tensor, seq_len: int, limit: int | None) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows of seq_len + 1 tokens as (inputs, targets shifted by one), int64;
    with `limit`, that many windows spread evenly over the text, so every file is sampled."""
    count = len(tokens) // (seq_len + 1)
    windows = tokens[: count * (seq_len + 1)].view(count, seq_len + 1)
    if limit is not None and limit < count:
        windows = windows[torch.arange(limit) * count // limit]
    windows = windows.long()
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def sequence_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in nats over every position of (batch, time, vocab) logits."""
    return F.cross_entropy(outputs.flatten(0, 1), targets.flatten())


def bits_per_char(outputs: Tensor, targets: Tensor) -> float:
    """Mean cross-entropy over every character, in bits."""
    return float(sequence_cross_entropy(outputs, targets).item()) / math.log(2)


class _CharEmbedding(nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, d_model: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(seq_len, d_model)
        # GPT-2's initialisation; PyTorch's N(0, 1) would swamp the blocks' first updates.
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.tokens(tokens) + self.positions(positions)


class CharTransformer(nn.Module):
    """A GPT-style causal transformer over characters: token and learned position embeddings
    ('embed.*'), pre-LN blocks of attention and a GELU MLP ('blocks.*'), then a final LayerNorm
    and the logits ('head.*'). No dropout: a run sees each window a few times at most."""

    def __init__(
        self, *, vocab_size: int, seq_len: int, d_model: int, n_heads: int, n_layers: int
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise WorkloadError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.embed = _CharEmbedding(vocab_size, seq_len, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                dim_feedforward=4 * d_model,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(n_layers)
        )
        self.head = nn.Sequential(
            OrderedDict(norm=nn.LayerNorm(d_model), out=nn.Linear(d_model, vocab_size))
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """(batch, time) tokens -> (batch, time, vocab) logits of each next character."""
        length = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(x)


def _charlm(params: dict[str, Any], seed: int) -> Workload:
    train_tokens, val_tokens = charlm_tokens()
    seq_len = params["seq_len"]
    x_train, y_train = char_windows(train_tokens, seq_len, params["limit_train"])
    x_val, y_val = char_windows(val_tokens, seq_len, params["limit_val"])
    torch.manual_seed(seed)
    model = CharTransformer(
        vocab_size=CHARLM_VOCAB_SIZE,
        seq_len=seq_len,
        d_model=params["d_model"],
        n_heads=params["n_heads"],
        n_layers=params["n_layers"],
    )
    return Workload(
        model=model,
        train_loader=TensorBatches(
            x_train, y_train, batch_size=params["batch_size"], shuffle=True, seed=seed
        ),
        val_loader=TensorBatches(x_val, y_val, batch_size=256, shuffle=False),
        loss_fn=sequence_cross_entropy,
        metrics={"val_bits_per_char": bits_per_char},
    )


_BUILDERS: dict[str, Callable[[dict[str, Any], int], Workload]] = {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "cifar10": _cifar10,
    "charlm": _charlm,
}
