"""Workloads: the built-ins build and train, CIFAR-10 reads the real format, user code checks."""

from __future__ import annotations

import math
import pickle
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.schemas.workloads import BUILTIN_WORKLOADS, WorkloadSpec
from lrtune.workers.trial import evaluate, run_trial
from lrtune.workers.workloads import (
    TensorBatches,
    Workload,
    WorkloadError,
    build_workload,
    check_entrypoint,
)
from pydantic import ValidationError

from tests.conftest import use_code_path

SMALL_MNIST1D = {"n_train": 1000, "n_test": 200, "batch_size": 32}
IMAGES_PER_FILE = 64


def write_cifar_batch(path: Path, n: int, *, seed: int) -> None:
    """A batch file in the python-version CIFAR-10 format (Python 2 style pickled dict)."""
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [int(label) for label in rng.integers(0, 10, size=n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar"
    folder.mkdir()
    for index in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{index}", IMAGES_PER_FILE, seed=index)
    write_cifar_batch(folder / "test_batch", IMAGES_PER_FILE, seed=0)
    return folder


def one_epoch(workload: Mapping[str, object]) -> tuple[list[float], int]:
    config = TrialConfig.model_validate(
        {
            "workload": workload,
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "schedule": {"policy": "fixed", "lr": 0.1},
            "epochs": 1,
        }
    )
    rows: list[EpochResult] = []
    outcome = run_trial(config, rows.append)
    assert outcome.status == "completed"
    assert len(rows) == 1
    row = rows[0]
    return [row.train_loss, row.val_loss, row.metrics["val_accuracy"]], row.step


@pytest.mark.parametrize(
    ("name", "params", "n_train", "batch_size"),
    [
        ("mnist1d", {"model": "mlp", **SMALL_MNIST1D}, 1000, 32),
        ("mnist1d", {"model": "cnn1d", **SMALL_MNIST1D}, 1000, 32),
        ("digits", {"model": "mlp"}, 1347, 64),
        ("digits", {"model": "cnn", "batch_size": 100}, 1347, 100),
    ],
)
def test_builtin_workload_trains_one_epoch(
    name: str, params: dict[str, object], n_train: int, batch_size: int
) -> None:
    untrained = build_workload(name, params, seed=0)
    initial_loss, _ = evaluate(
        untrained, untrained.model, untrained.val_loader, torch.device("cpu")
    )

    (train_loss, val_loss, accuracy), steps = one_epoch({"name": name, "params": params})

    assert steps == math.ceil(n_train / batch_size)
    assert math.isfinite(train_loss)
    # The trial starts from the same initialisation (seed 0); one epoch must improve on it.
    assert val_loss < initial_loss
    assert 0.0 <= accuracy <= 1.0


def test_mnist1d_sizes_and_data_are_fixed_by_data_seed() -> None:
    first = build_workload("mnist1d", {"n_train": 300, "n_test": 50, "data_seed": 1}, seed=0)
    again = build_workload("mnist1d", {"n_train": 300, "n_test": 50, "data_seed": 1}, seed=5)
    other = build_workload("mnist1d", {"n_train": 300, "n_test": 50, "data_seed": 2}, seed=0)

    assert isinstance(first.train_loader, TensorBatches)
    assert isinstance(again.train_loader, TensorBatches)
    assert isinstance(other.train_loader, TensorBatches)
    assert first.train_loader.inputs.shape == (300, 40)
    assert sum(len(x) for x, _ in first.val_loader) == 50
    assert torch.equal(first.train_loader.inputs, again.train_loader.inputs)
    assert not torch.equal(first.train_loader.inputs, other.train_loader.inputs)


def test_building_mnist1d_leaves_global_rngs_alone() -> None:
    # mnist1d's generator reseeds numpy globally; a trial's own seeding must survive it.
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    build_workload("mnist1d", {"n_train": 200, "n_test": 30, "data_seed": 7}, seed=0)
    assert np.random.rand() == expected


def test_digits_split_is_fixed_by_split_seed_not_trial_seed() -> None:
    a = build_workload("digits", {"split_seed": 3}, seed=0)
    b = build_workload("digits", {"split_seed": 3}, seed=1)

    assert isinstance(a.train_loader, TensorBatches) and isinstance(b.train_loader, TensorBatches)
    assert torch.equal(a.train_loader.inputs, b.train_loader.inputs)
    # The trial seed still changes the initialisation.
    assert not torch.equal(a.model.state_dict()["head.weight"], b.model.state_dict()["head.weight"])


def test_tensor_batches_cover_every_example_once_in_a_seeded_order() -> None:
    batches = TensorBatches(torch.arange(10), torch.arange(10), batch_size=4, shuffle=True, seed=1)

    def order(epoch: int) -> list[int]:
        batches.set_epoch(epoch)
        return [int(v) for x, _ in batches for v in x]

    assert len(batches) == 3
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert sorted(order(0)) == list(range(10))
    assert order(0) == order(0)
    assert order(0) != order(1)


def test_cifar10_reads_the_python_batches_and_trains(cifar_dir: Path) -> None:
    workload = {"name": "cifar10", "params": {"data_dir": str(cifar_dir), "depth": 8}}
    (train_loss, val_loss, accuracy), steps = one_epoch(workload)

    assert steps == math.ceil(5 * IMAGES_PER_FILE / 128)
    assert math.isfinite(train_loss) and math.isfinite(val_loss)
    assert 0.0 <= accuracy <= 1.0


def test_cifar10_limits_and_the_archive_folder_layout(tmp_path: Path, cifar_dir: Path) -> None:
    # The archive unpacks to cifar-10-batches-py/; its parent works as data_dir too.
    cifar_dir.rename(tmp_path / "cifar-10-batches-py")
    built = build_workload(
        "cifar10", {"data_dir": str(tmp_path), "limit_train": 100, "limit_test": 10}, seed=0
    )

    assert isinstance(built.train_loader, TensorBatches)
    assert built.train_loader.inputs.shape == (100, 3, 32, 32)
    assert built.steps_per_epoch == 1
    images, labels = next(iter(built.train_loader))
    assert images.dtype == torch.float32 and images.shape == (100, 3, 32, 32)
    assert labels.dtype == torch.int64
    assert sum(len(x) for x, _ in built.val_loader) == 10


def test_cifar10_resnet_depth_must_be_6n_plus_2(cifar_dir: Path) -> None:
    with pytest.raises(WorkloadError, match="6n\\+2"):
        build_workload("cifar10", {"data_dir": str(cifar_dir), "depth": 10}, seed=0)
    model = build_workload("cifar10", {"data_dir": str(cifar_dir), "depth": 20}, seed=0).model
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 19  # plus the linear head: 20 weighted layers
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.27e6, rel=0.02)


def test_cifar10_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(WorkloadError, match="does not exist") as caught:
        build_workload("cifar10", {"data_dir": str(missing)}, seed=0)
    assert str(missing) in str(caught.value)


def test_cifar10_missing_file_names_the_file(cifar_dir: Path) -> None:
    (cifar_dir / "data_batch_3").unlink()
    with pytest.raises(WorkloadError, match="missing") as caught:
        build_workload("cifar10", {"data_dir": str(cifar_dir)}, seed=0)
    assert str(cifar_dir / "data_batch_3") in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps({b"data": np.zeros((4, 100), dtype=np.uint8), b"labels": [0] * 4}),
        pickle.dumps({b"data": np.zeros((4, 3072), dtype=np.float32), b"labels": [0] * 4}),
        pickle.dumps({b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0] * 3}),
        pickle.dumps({b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 10]}),
        pickle.dumps([1, 2, 3]),
    ],
    ids=["garbage", "wrong-width", "not-uint8", "label-count", "label-range", "not-a-dict"],
)
def test_cifar10_malformed_file_names_the_file(cifar_dir: Path, content: bytes) -> None:
    (cifar_dir / "test_batch").write_bytes(content)
    with pytest.raises(WorkloadError) as caught:
        build_workload("cifar10", {"data_dir": str(cifar_dir)}, seed=0)
    assert str(cifar_dir / "test_batch") in str(caught.value)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_cifar10_refuses_pickles_that_name_arbitrary_code(
    cifar_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (cifar_dir / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(WorkloadError, match="refusing"):
        build_workload("cifar10", {"data_dir": str(cifar_dir)}, seed=0)
    assert "must never run" not in capsys.readouterr().out


def test_builtin_params_are_checked() -> None:
    with pytest.raises(WorkloadError, match="no param"):
        build_workload("digits", {"modle": "mlp"}, seed=0)
    with pytest.raises(WorkloadError, match="one of"):
        build_workload("mnist1d", {"model": "transformer"}, seed=0)
    with pytest.raises(WorkloadError, match="needs param 'data_dir'"):
        build_workload("cifar10", {}, seed=0)
    with pytest.raises(WorkloadError, match="must be a int"):
        build_workload("digits", {"batch_size": True}, seed=0)
    with pytest.raises(WorkloadError, match="unknown workload"):
        build_workload("imagenet", {}, seed=0)


def test_workload_spec_fills_defaults_and_rejects_bad_specs() -> None:
    spec = WorkloadSpec.model_validate({"name": "mnist1d", "params": {"model": "cnn1d"}})
    assert spec.params == {
        "model": "cnn1d",
        "batch_size": 128,
        "n_train": 4000,
        "n_test": 1000,
        "data_seed": 42,
    }
    for bad in (
        {},
        {"name": "digits", "entrypoint": "a.b:c"},
        {"name": "nope"},
        {"entrypoint": "no_colon"},
        {"name": "digits", "params": {"val_fraction": float("nan")}},
    ):
        with pytest.raises(ValidationError):
            WorkloadSpec.model_validate(bad)


def test_classifiers_report_val_accuracy_and_the_language_model_bits_per_char() -> None:
    assert set(BUILTIN_WORKLOADS) == {"mnist1d", "digits", "cifar10", "charlm"}
    for info in BUILTIN_WORKLOADS.values():
        if info.name == "charlm":
            assert info.metrics == ["val_bits_per_char"]
            assert (info.default_metric, info.default_mode) == ("val_loss", "min")
        else:
            assert "val_accuracy" in info.metrics
            assert (info.default_metric, info.default_mode) == ("val_accuracy", "max")
        for param in info.params:
            assert param.required or param.choices is None or param.default in param.choices


# --- user code --------------------------------------------------------------------------------

USER_MODULE = """
import torch
from torch import nn
from lrtune.workers.workloads import TensorBatches, Workload

NOT_CALLABLE = 3


def make(n=32, width=4):
    x = torch.randn(n, 5)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 2))
    return Workload(
        model=model,
        train_loader=TensorBatches(x, y, batch_size=8, shuffle=True),
        val_loader=TensorBatches(x, y, batch_size=32, shuffle=False),
    )


def not_a_workload():
    return {"model": None}


def fails(**params):
    raise RuntimeError("user bug")
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module importable by dotted path, as user code on a worker would be."""
    package = tmp_path / "user_workloads"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(textwrap.dedent(USER_MODULE))
    (package / "broken.py").write_text("import not_a_real_package_lrtune\n")
    use_code_path(monkeypatch, tmp_path)
    yield "user_workloads"
    for name in [m for m in sys.modules if m.split(".")[0] == "user_workloads"]:
        del sys.modules[name]


def test_user_entrypoint_builds_and_trains(user_module: str) -> None:
    built = build_workload(f"{user_module}.good:make", {"n": 40, "width": 3}, seed=0)
    assert isinstance(built, Workload)
    assert built.steps_per_epoch == 5

    (train_loss, val_loss, accuracy), steps = one_epoch(
        {"entrypoint": f"{user_module}.good:make", "params": {"n": 40}}
    )
    assert steps == 5
    assert math.isfinite(train_loss) and math.isfinite(val_loss)
    assert 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("broken:make", "No module named 'not_a_real_package_lrtune'"),
        ("missing_module:make", "No module named 'user_workloads.missing_module'"),
        ("good:nothing_here", "has no attribute 'nothing_here'"),
        ("good:NOT_CALLABLE", "not a callable"),
    ],
)
def test_broken_entrypoint_fails_fast_with_the_cause(
    user_module: str, target: str, message: str
) -> None:
    entrypoint = f"{user_module}.{target}"
    with pytest.raises(WorkloadError, match=message):
        check_entrypoint(entrypoint)
    with pytest.raises(WorkloadError, match=message):
        build_workload(entrypoint, {}, seed=0)


def test_entrypoint_must_return_a_workload(user_module: str) -> None:
    assert callable(check_entrypoint(f"{user_module}.good:not_a_workload"))
    with pytest.raises(WorkloadError, match=r"must return an lrtune\.workers\.Workload or an"):
        build_workload(f"{user_module}.good:not_a_workload", {}, seed=0)
    with pytest.raises(WorkloadError, match="RuntimeError: user bug"):
        build_workload(f"{user_module}.good:fails", {}, seed=0)
    with pytest.raises(WorkloadError, match="unexpected keyword"):
        build_workload(f"{user_module}.good:make", {"depth": 3}, seed=0)


def test_mnist1d_arrays_are_kept_on_disk_for_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from lrtune.workers import workloads

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    workloads.mnist1d_arrays.cache_clear()
    made = workloads.mnist1d_arrays(200, 50, 3)
    [cached] = (tmp_path / "lrtune-data").glob("mnist1d-200-50-3-*.pt")
    # A fresh process: nothing in memory, the generator must not be called again.
    workloads.mnist1d_arrays.cache_clear()

    def no_generation(*args: Any) -> None:
        raise AssertionError("generated again instead of loading the file")

    monkeypatch.setattr(workloads, "_generate_mnist1d", no_generation)
    loaded = workloads.mnist1d_arrays(200, 50, 3)
    assert all(torch.equal(a, b) for a, b in zip(made, loaded, strict=True))
    # A broken file is made again, not trusted.
    cached.write_bytes(b"not a tensor file")
    workloads.mnist1d_arrays.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    again = workloads.mnist1d_arrays(200, 50, 3)
    assert all(torch.equal(a, b) for a, b in zip(made, again, strict=True))
    workloads.mnist1d_arrays.cache_clear()
