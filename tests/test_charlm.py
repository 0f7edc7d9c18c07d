"""The charlm workload: its stdlib corpus and split, the transformer, its metrics, the API."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from lrtune.schemas.trials import EpochResult, TrialConfig
from lrtune.workers.trial import evaluate, run_trial
from lrtune.workers.workloads import (
    CHARLM_FILES,
    CHARLM_VAL_EVERY,
    CHARLM_VOCAB_SIZE,
    TensorBatches,
    WorkloadError,
    bits_per_char,
    build_workload,
    char_windows,
    charlm_files,
    encode_chars,
    sequence_cross_entropy,
)

# Seconds, not the default limits: 8 steps of 16 windows per epoch, 64 validation windows.
TINY = {"seq_len": 32, "batch_size": 16, "limit_train": 128, "limit_val": 64}


def test_the_file_list_is_fixed_sorted_and_present_in_this_python() -> None:
    assert len(CHARLM_FILES) == 80
    assert list(CHARLM_FILES) == sorted(set(CHARLM_FILES))
    train, val = charlm_files()
    # Every listed module ships with CPython 3.11+ (checked against 3.11, 3.12 and 3.13).
    assert len(train) + len(val) == len(CHARLM_FILES)
    assert not set(train) & set(val)
    assert [p.name for p in val[:2]] == ["codecs.py", "message.py"]
    assert len(val) == len(CHARLM_FILES) // CHARLM_VAL_EVERY
    assert charlm_files() == (train, val)


def test_a_missing_file_is_skipped_without_moving_another_across_the_split(
    tmp_path: Path,
) -> None:
    for name in CHARLM_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    full_train, full_val = charlm_files(tmp_path)
    (tmp_path / CHARLM_FILES[0]).unlink()  # a training file
    (tmp_path / CHARLM_FILES[CHARLM_VAL_EVERY - 1]).unlink()  # a validation file

    train, val = charlm_files(tmp_path)

    assert train == full_train[1:]
    assert val == full_val[1:]


def test_characters_map_to_a_small_fixed_vocabulary() -> None:
    tokens = encode_chars("a \n\t\u00e9~")
    assert tokens.dtype == torch.uint8
    # Newline is 1, space (32) is 2, printable ASCII follows; tab and non-ASCII are "other".
    assert tokens.tolist() == [2 + ord("a") - 32, 2, 1, 0, 0, 2 + ord("~") - 32]
    assert CHARLM_VOCAB_SIZE == 97


def test_windows_do_not_overlap_the_targets_are_shifted_and_limits_spread() -> None:
    tokens = torch.arange(100)
    inputs, targets = char_windows(tokens, seq_len=9, limit=None)
    assert inputs.shape == targets.shape == (10, 9)
    assert inputs[1].tolist() == list(range(10, 19))
    assert targets[1].tolist() == list(range(11, 20))

    spread, _ = char_windows(tokens, seq_len=9, limit=3)
    assert spread[:, 0].tolist() == [0, 30, 60]


def test_charlm_builds_a_causal_transformer_with_named_parts() -> None:
    workload = build_workload("charlm", TINY, seed=0)
    assert isinstance(workload.train_loader, TensorBatches)
    assert workload.train_loader.inputs.shape == (128, 32)
    assert workload.steps_per_epoch == 8
    assert sum(len(x) for x, _ in workload.val_loader) == 64
    names = [name for name, _ in workload.model.named_parameters()]
    assert {name.split(".")[0] for name in names} == {"embed", "blocks", "head"}
    assert sum(name.startswith("blocks.1.") for name in names) > 0  # two blocks by default

    inputs, targets = next(iter(workload.train_loader))
    workload.model.eval()
    logits = workload.model(inputs)
    assert logits.shape == (16, 32, CHARLM_VOCAB_SIZE)
    assert targets.shape == (16, 32) and targets.dtype == torch.int64
    # Causal: a change at position 20 leaves the predictions before it alone.
    changed = inputs.clone()
    changed[:, 20] = (changed[:, 20] + 1) % CHARLM_VOCAB_SIZE
    after = workload.model(changed)
    assert torch.allclose(after[:, :20], logits[:, :20], atol=1e-5)
    assert not torch.allclose(after[:, 20:], logits[:, 20:], atol=1e-5)


def test_bits_per_char_is_the_cross_entropy_over_every_character_in_bits() -> None:
    logits = torch.randn(3, 5, CHARLM_VOCAB_SIZE)
    targets = torch.randint(0, CHARLM_VOCAB_SIZE, (3, 5))
    per_char = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[b, t : t + 1], targets[b, t : t + 1])
            for b in range(3)
            for t in range(5)
        ]
    )
    assert float(sequence_cross_entropy(logits, targets)) == pytest.approx(float(per_char.mean()))
    assert bits_per_char(logits, targets) == pytest.approx(float(per_char.mean()) / math.log(2))


def test_two_epochs_of_adamw_with_warmup_and_cosine_lower_val_loss() -> None:
    config = TrialConfig.model_validate(
        {
            "workload": {"name": "charlm", "params": TINY},
            "optimizer": {"name": "adamw", "weight_decay": 0.01},
            "schedule": {"policy": "cosine", "lr": 3e-3, "decay_steps": 12, "warmup_steps": 4},
            "epochs": 2,
        }
    )
    untrained = build_workload("charlm", TINY, seed=0)
    initial_loss, _ = evaluate(
        untrained, untrained.model, untrained.val_loader, torch.device("cpu")
    )
    rows: list[EpochResult] = []

    outcome = run_trial(config, rows.append)

    assert outcome.status == "completed"
    assert (outcome.metric, config.metric_mode) == ("val_loss", "min")
    assert [row.step for row in rows] == [8, 16]
    assert initial_loss == pytest.approx(math.log(CHARLM_VOCAB_SIZE), rel=0.05)
    assert rows[1].val_loss < rows[0].val_loss < initial_loss
    for row in rows:
        # Every window has seq_len characters, so the mean over windows is the mean per char.
        assert row.metrics["val_bits_per_char"] == pytest.approx(
            row.val_loss / math.log(2), rel=1e-5
        )
    assert outcome.best_metric == rows[1].val_loss


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seq_len": 4096}, "'seq_len' must be at most 1024"),
        ({"limit_train": 0}, "'limit_train' must be at least 1"),
        ({"d_model": 100, "n_heads": 3}, "'d_model' must be a multiple of n_heads"),
        ({"n_layer": 2}, "no param"),
    ],
)
def test_bad_params_name_the_field(params: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        build_workload("charlm", params, seed=0)


def test_jobs_on_charlm_default_to_val_loss_and_bad_params_are_422(
    api_client: TestClient, job_body: dict[str, Any]
) -> None:
    charlm = {**job_body, "workload": {"name": "charlm", "params": TINY}}
    del charlm["metric"]
    answer = api_client.post("/v1/jobs", json=charlm)
    assert answer.status_code == 201, answer.text
    assert answer.json()["spec"]["metric"] == {"name": "val_loss", "mode": "min"}

    charlm["workload"] = {"name": "charlm", "params": {"d_model": 100, "n_heads": 3}}
    answer = api_client.post("/v1/jobs", json=charlm)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert "workload" in [field["path"] for field in error["fields"]]
    assert "d_model" in answer.text
