"""POST /v1/schedules/preview, GET /v1/policies and /healthz through HTTP."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lrtune.schemas.schedules import POLICY_NAMES, parse_schedule
from lrtune.schemas.search import resolve_schedule, validate_search_space
from lrtune.service.app import create_app
from lrtune.service.settings import Settings
from lrtune.workers.schedule_math import learning_rates

VALID_SPECS: dict[str, dict[str, Any]] = {
    "fixed": {"lr": 0.1},
    "step": {"lr": 0.1, "step_size": 30, "gamma": 0.5},
    "multistep": {"lr": 0.1, "milestones": [20, 50]},
    "piecewise": {"boundaries": [10, 40], "values": [0.1, 0.05, 0.01]},
    "exponential": {"lr": 0.1, "decay_rate": 0.9, "decay_steps": 10},
    "natural_exp": {"lr": 0.1, "decay_rate": 0.1, "decay_steps": 10, "staircase": True},
    "inverse_time": {"lr": 0.1, "decay_rate": 0.5, "decay_steps": 10},
    "polynomial": {"lr": 0.1, "decay_steps": 40, "power": 2.0, "cycle": True},
    "cosine": {"lr": 0.1, "decay_steps": 80, "alpha": 0.1},
    "linear_cosine": {"lr": 0.1, "decay_steps": 80},
    "noisy_linear_cosine": {"lr": 0.1, "decay_steps": 80, "seed": 3},
    "clr": {"base_lr": 0.01, "max_lr": 0.1, "step_size": 10, "mode": "exp_range", "gamma": 0.99},
    "sgdr": {"eta_max": 0.1, "eta_min": 0.001, "t_0": 7, "t_mult": 2},
    "one_cycle": {"max_lr": 0.1, "total_steps": 90, "three_phase": True, "anneal": "linear"},
    "wsd": {"lr": 0.1, "total_steps": 90, "decay_frac": 0.3, "min_lr_ratio": 0.1},
    "inverse_sqrt": {"lr": 0.1, "timescale": 20},
    "rex": {"lr": 0.1, "total_steps": 80, "min_lr": 0.001},
    "plateau": {"lr": 0.1, "patience": 1, "factor": 0.5},
}


@pytest.fixture(scope="module")
def preview_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    home = tmp_path_factory.mktemp("lrtune-home")
    return TestClient(create_app(Settings(home=home)))


def _preview(client: TestClient, schedule: Any, steps: Any = 100, **extra: Any) -> Any:
    return client.post(
        "/v1/schedules/preview", json={"schedule": schedule, "steps": steps, **extra}
    )


def test_healthz_answers(preview_client: TestClient) -> None:
    assert preview_client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_preview_matches_the_schedule_math(preview_client: TestClient, policy: str) -> None:
    schedule = {"policy": policy, **VALID_SPECS[policy], "warmup_steps": 5}
    response = _preview(preview_client, schedule, steps=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["step"] == list(range(120))
    expected = learning_rates(parse_schedule(schedule), np.arange(120))
    np.testing.assert_allclose(body["lr"], expected, rtol=1e-12, atol=0)


def test_preview_every_subsamples_the_same_curve(preview_client: TestClient) -> None:
    schedule = {"policy": "sgdr", **VALID_SPECS["sgdr"]}
    full = _preview(preview_client, schedule, steps=1000).json()
    sparse = _preview(preview_client, schedule, steps=1000, every=7).json()
    assert sparse["step"] == list(range(0, 1000, 7))
    assert sparse["lr"] == full["lr"][::7]


def test_preview_serves_a_million_steps(preview_client: TestClient) -> None:
    response = _preview(
        preview_client, {"policy": "one_cycle", "max_lr": 1, "total_steps": 10**6}, steps=1_000_000
    )
    assert response.status_code == 200
    body = response.json()
    assert len(body["lr"]) == 1_000_000
    assert body["lr"][-1] == pytest.approx(1 / 25 / 1e4, rel=1e-6)


def test_preview_refuses_more_than_a_million_steps(preview_client: TestClient) -> None:
    response = _preview(preview_client, {"policy": "fixed", "lr": 0.1}, steps=1_000_001)
    assert response.status_code == 422
    assert [f["path"] for f in response.json()["error"]["fields"]] == ["steps"]


INVALID_SPECS = [
    ({"policy": "step", "lr": 0.1, "step_size": 0}, "schedule.step_size"),
    (
        {"policy": "exponential", "lr": 0.1, "decay_rate": 0.9, "decay_steps": -3},
        "schedule.decay_steps",
    ),
    ({"policy": "clr", "base_lr": 0.1, "max_lr": 0.1, "step_size": 4}, "schedule.max_lr"),
    ({"policy": "clr", "base_lr": 0.2, "max_lr": 0.1, "step_size": 4}, "schedule.max_lr"),
    ({"policy": "sgdr", "eta_max": 0.1, "eta_min": 0.2, "t_0": 4}, "schedule.eta_min"),
    (
        {"policy": "piecewise", "boundaries": [10, 5], "values": [1, 0.5, 0.1]},
        "schedule.boundaries",
    ),
    ({"policy": "piecewise", "boundaries": [5, 10], "values": [1, 0.5]}, "schedule.values"),
    ({"policy": "multistep", "lr": 0.1, "milestones": [30, 10]}, "schedule.milestones"),
    ({"policy": "fixed", "lr": -0.1}, "schedule.lr"),
    ({"policy": "fixed", "lr": 0.0}, "schedule.lr"),
    ({"policy": "clr", "base_lr": -1, "max_lr": 0.1, "step_size": 4}, "schedule.base_lr"),
    ({"policy": "fixed", "lr": 0.1, "warmup_start_lr": -1}, "schedule.warmup_start_lr"),
    (
        {"policy": "one_cycle", "max_lr": 0.1, "total_steps": 100, "pct_start": 1.0},
        "schedule.pct_start",
    ),
    (
        {"policy": "one_cycle", "max_lr": 0.1, "total_steps": 100, "pct_start": 0.0},
        "schedule.pct_start",
    ),
    (
        {
            "policy": "one_cycle",
            "max_lr": 0.1,
            "total_steps": 100,
            "pct_start": 0.6,
            "three_phase": True,
        },
        "schedule.pct_start",
    ),
    ({"policy": "step", "lr": 0.1, "step_size": 5, "colour": "red"}, "schedule.colour"),
    (
        {"policy": "exponential", "lr": 0.1, "decay_rate": 1.5, "decay_steps": 3},
        "schedule.decay_rate",
    ),
    # WSD's decay must fit in the schedule after its warmup (total_steps counts the warmup).
    ({"policy": "wsd", "lr": 0.1, "total_steps": 100, "decay_steps": 101}, "schedule.decay_steps"),
    (
        {"policy": "wsd", "lr": 0.1, "total_steps": 100, "decay_steps": 90, "warmup_steps": 20},
        "schedule.decay_steps",
    ),
    (
        {"policy": "wsd", "lr": 0.1, "total_steps": 100, "decay_frac": 0.9, "warmup_steps": 20},
        "schedule.decay_steps",
    ),
    (
        {"policy": "wsd", "lr": 0.1, "total_steps": 100, "decay_frac": 0.2, "decay_steps": 30},
        "schedule.decay_steps",
    ),
    (
        {"policy": "wsd", "lr": 0.1, "total_steps": 100, "min_lr_ratio": 1.5},
        "schedule.min_lr_ratio",
    ),
    (
        {"policy": "wsd", "lr": 0.1, "total_steps": 100, "min_lr_ratio": -0.1},
        "schedule.min_lr_ratio",
    ),
    ({"policy": "wsd", "lr": 0.1, "total_steps": 10, "warmup_steps": 10}, "schedule.total_steps"),
    ({"policy": "wsd", "lr": 0.1, "total_steps": 100, "decay_frac": 0.0}, "schedule.decay_frac"),
    ({"policy": "inverse_sqrt", "lr": 0.1, "timescale": 0}, "schedule.timescale"),
    ({"policy": "rex", "lr": 0.1, "total_steps": 10, "min_lr": 0.2}, "schedule.min_lr"),
    ({"policy": "plateau", "lr": 0.1, "factor": 1.0}, "schedule.factor"),
    ({"policy": "plateau", "lr": 0.1, "mode": "up"}, "schedule.mode"),
    ({"policy": "plateau", "lr": 0.1, "min_lr": 0.5}, "schedule.min_lr"),
]


@pytest.mark.parametrize(("schedule", "path"), INVALID_SPECS)
def test_invalid_spec_is_422_naming_the_field(
    preview_client: TestClient, schedule: dict[str, Any], path: str
) -> None:
    response = _preview(preview_client, schedule)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert path in [f["path"] for f in error["fields"]]
    assert path.split(".")[-1] in error["message"]


PLATEAU = {"policy": "plateau", "lr": 0.1, "patience": 1, "factor": 0.5, "warmup_steps": 15}


def test_plateau_preview_follows_the_metrics_epoch_by_epoch(preview_client: TestClient) -> None:
    metrics = [1.0, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.65]
    response = _preview(preview_client, PLATEAU, steps=95, steps_per_epoch=10, metrics=metrics)
    assert response.status_code == 200, response.text
    rates = response.json()["lr"]
    ends = [10 * (e + 1) for e in range(len(metrics))]
    expected = learning_rates(
        parse_schedule(PLATEAU), np.arange(95), metrics=metrics, epoch_ends=ends
    )
    assert rates == expected.tolist()
    # The warmup's epoch (ends at 10 < 15) is not judged; 0.8 stalls at epochs 3 and 4, so the
    # rate halves from step 40; 0.7 stalls at epochs 6 and 7: halved again from step 70.
    assert rates[14] < rates[15] == rates[39] == 0.1
    assert rates[40] == rates[69] == 0.05 and rates[70] == 0.025
    # Without metrics the rate holds after the warmup.
    held = _preview(preview_client, PLATEAU, steps=95).json()["lr"]
    assert held[15:] == [0.1] * 80


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"steps_per_epoch": 10, "metrics": [1.0] * 9}, "one value per epoch"),
        ({"steps_per_epoch": 10, "metrics": [1.0] * 11}, "ceil(95 / 10) = 10, got 11"),
        ({"metrics": [1.0] * 10}, "steps_per_epoch"),
    ],
)
def test_plateau_metrics_of_the_wrong_length_are_422_naming_metrics(
    preview_client: TestClient, extra: dict[str, Any], fragment: str
) -> None:
    error = _preview(preview_client, PLATEAU, steps=95, **extra).json()["error"]
    assert [f["path"] for f in error["fields"]] == ["metrics"]
    assert fragment in error["message"]


def test_metrics_for_a_policy_of_the_step_alone_are_422(preview_client: TestClient) -> None:
    schedule = {"policy": "wsd", **VALID_SPECS["wsd"]}
    response = _preview(preview_client, schedule, steps=20, steps_per_epoch=10, metrics=[1, 1])
    error = response.json()["error"]
    assert [f["path"] for f in error["fields"]] == ["metrics"]
    assert "only plateau reads metrics" in error["message"]


def test_plateau_watches_the_jobs_metric_in_its_mode() -> None:
    spec = resolve_schedule(
        "plateau", {"lr": 0.1}, steps_per_epoch=10, total_steps=100, metric_mode="max"
    )
    assert spec.policy == "plateau" and spec.mode == "max"
    with pytest.raises(ValueError, match="whose mode is 'max'"):
        resolve_schedule(
            "plateau",
            {"lr": 0.1, "mode": "min"},
            steps_per_epoch=10,
            total_steps=100,
            metric_mode="max",
        )


def test_new_policies_resolve_durations_from_epochs_and_fractions() -> None:
    wsd = resolve_schedule(
        "wsd",
        {"lr": 0.1, "decay_frac": 0.2, "warmup_steps_epochs": 2},
        steps_per_epoch=10,
        total_steps=500,
    )
    assert (wsd.total_steps, wsd.decay_steps, wsd.warmup_steps) == (500, 100, 20)
    inverse_sqrt = resolve_schedule(
        "inverse_sqrt", {"lr": 0.1, "warmup_steps_frac": 0.1}, steps_per_epoch=10, total_steps=500
    )
    assert (inverse_sqrt.warmup_steps, inverse_sqrt.timescale) == (50, 50)
    rex = resolve_schedule("rex", {"lr": 0.1}, steps_per_epoch=10, total_steps=500)
    assert rex.total_steps == 500
    with pytest.raises(ValueError, match="give one of them"):
        validate_search_space("wsd", {"decay_steps_frac": 0.2, "decay_frac": 0.2})


def test_a_policys_preview_draws_the_middle_of_its_search_space(preview_client: TestClient) -> None:
    space = {
        "lr": {"loguniform": [1e-3, 1e-1]},
        "alpha": {"choice": [0.1, 0.0]},
        "decay_steps_frac": 0.5,
        "warmup_steps_epochs": {"int": [1, 3]},
    }
    body = {
        "policy": "cosine",
        "search_space": space,
        "steps": 1000,
        "steps_per_epoch": 100,
        "every": 50,
    }
    answer = preview_client.post("/v1/search-spaces/preview", json=body)
    assert answer.status_code == 200, answer.text
    middle = {"policy": "cosine", "lr": 0.01, "alpha": 0.1, "decay_steps": 500}
    expected = preview_client.post(
        "/v1/schedules/preview",
        json={"schedule": {**middle, "warmup_steps": 200}, "steps": 1000, "every": 50},
    )
    assert answer.json()["step"] == expected.json()["step"]
    assert answer.json()["lr"] == pytest.approx(expected.json()["lr"], rel=1e-12)

    for policy, space, field in [
        ("warp", {}, "policy"),
        ("cosine", {"lr": {"loguniform": [1.0, 0.1]}}, "search_space"),
        ("cosine", {"learning_rate": 0.1}, "search_space"),
        ("clr", {"base_lr": 0.5, "max_lr": 0.1}, "search_space"),
    ]:
        body = {"policy": policy, "search_space": space, "steps": 100, "steps_per_epoch": 10}
        refused = preview_client.post("/v1/search-spaces/preview", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["fields"][0]["path"] == field, refused.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_rates_are_refused(preview_client: TestClient, literal: str) -> None:
    body = '{"schedule": {"policy": "fixed", "lr": LR}, "steps": 10}'.replace("LR", literal)
    response = preview_client.post(
        "/v1/schedules/preview", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["path"] == "schedule.lr"


def test_unknown_policy_lists_the_known_ones(preview_client: TestClient) -> None:
    response = _preview(preview_client, {"policy": "warm_restarts", "lr": 0.1})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "warm_restarts" in message
    assert all(name in message for name in POLICY_NAMES)


def test_malformed_json_is_422(preview_client: TestClient) -> None:
    response = preview_client.post(
        "/v1/schedules/preview", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_unknown_route_uses_the_error_body(preview_client: TestClient) -> None:
    response = preview_client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


_json_leaf = (
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats() | st.text(max_size=12)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    sorted({f for spec in VALID_SPECS.values() for f in spec} | {"warmup_steps", "warmup_start_lr"})
)
_schedules = st.builds(
    lambda policy, base, overrides: {"policy": policy, **base, **overrides},
    st.sampled_from(POLICY_NAMES),
    st.sampled_from(list(VALID_SPECS.values())),
    st.dictionaries(
        _field_names, _json_leaf | st.lists(st.integers(-5, 10**6), max_size=4), max_size=3
    ),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    schedule=_schedules | _json,
    steps=st.integers(-5, 5000) | _json_leaf,
    every=st.integers(-2, 50) | _json_leaf,
)
def test_no_preview_input_yields_a_5xx(
    preview_client: TestClient, schedule: Any, steps: Any, every: Any
) -> None:
    body = json.dumps({"schedule": schedule, "steps": steps, "every": every}, allow_nan=True)
    response = preview_client.post(
        "/v1/schedules/preview", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert all(math.isfinite(v) and v >= 0 for v in response.json()["lr"])
    else:
        assert response.json()["error"]["message"]


def test_policy_catalogue_describes_every_policy(preview_client: TestClient) -> None:
    catalogue = preview_client.get("/v1/policies").json()
    assert [p["name"] for p in catalogue] == list(POLICY_NAMES)
    for policy in catalogue:
        fields = {f["name"]: f for f in policy["fields"]}
        assert {"warmup_steps", "warmup_start_lr"} <= set(fields)
        assert policy["source"] and policy["family"]
        assert policy["json_schema"]["properties"]["policy"]["const"] == policy["name"]
        # The default search space is valid and, with durations filled in, yields a valid spec.
        space = validate_search_space(policy["name"], policy["default_search_space"])
        point = {
            k: (v.model_dump()["choice"][0] if hasattr(v, "choice") else v)
            for k, v in space.items()
            if not hasattr(v, "model_dump") or hasattr(v, "choice")
        }
        for key, domain in space.items():
            if key not in point:
                low, high = next(iter(domain.model_dump().values()))
                point[key] = high if policy["name"] == "clr" and key == "max_lr" else low
        resolve_schedule(policy["name"], point, steps_per_epoch=50, total_steps=1000)
    clr_fields = {f["name"]: f for f in catalogue[POLICY_NAMES.index("clr")]["fields"]}
    assert clr_fields["mode"]["default"] == "triangular"
    assert clr_fields["max_lr"]["required"] is True
    assert clr_fields["step_size"]["duration"] is True


def test_workload_catalogue_lists_the_built_ins(preview_client: TestClient) -> None:
    workloads = {w["name"]: w for w in preview_client.get("/v1/workloads").json()}
    assert set(workloads) == {"mnist1d", "digits", "cifar10", "charlm"}
    assert "val_accuracy" in workloads["digits"]["metrics"]
    assert workloads["charlm"]["metrics"] == ["val_bits_per_char"]
    assert (workloads["charlm"]["default_metric"], workloads["charlm"]["default_mode"]) == (
        "val_loss",
        "min",
    )
    seq_len = next(p for p in workloads["charlm"]["params"] if p["name"] == "seq_len")
    assert (seq_len["default"], seq_len["minimum"], seq_len["maximum"]) == (64, 8, 1024)
    models = next(p for p in workloads["mnist1d"]["params"] if p["name"] == "model")
    assert set(models["choices"]) == {"mlp", "cnn1d"}
    data_dir = next(p for p in workloads["cifar10"]["params"] if p["name"] == "data_dir")
    assert data_dir["required"] is True
