"""Entrypoints come from the code paths only: `subprocess:getoutput`, `os:system` or a module
outside the code paths are refused before anything is imported or called, by the API where it
knows the code paths (`lrtune serve`), by the worker's planning, and in every trial process.

Each refused entrypoint names a shell command that would create a marker file; the marker must
stay absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lrtune.service.app import create_app
from lrtune.service.settings import Settings
from lrtune.service.store import Store
from lrtune.workers.user_code import CodeSnapshot, EntrypointRefused, EntrypointSources
from lrtune.workers.workloads import WorkloadError, build_training

from tests.conftest import use_code_path

USER_MODULE = """
from lrtune.workers.workloads import build_workload


def make(**params):
    return build_workload("digits", {"model": "mlp"}, seed=0)
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A code path holding a package `my_models` and a module that shadows the standard
    library's `subprocess`."""
    folder = tmp_path / "code"
    (folder / "my_models").mkdir(parents=True)
    (folder / "my_models" / "__init__.py").write_text("")
    (folder / "my_models" / "zoo.py").write_text(USER_MODULE)
    (folder / "subprocess.py").write_text("def getoutput(cmd):\n    return cmd\n")
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder on no code path, with a module that would run a shell command."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "stray.py").write_text("import os\n\n\ndef make(cmd):\n    os.system(cmd)\n")
    return folder


def hostile(marker: Path) -> list[tuple[str, dict[str, Any]]]:
    """Entrypoints that would each create `marker`, with the params that make them do it."""
    touch = f"touch {marker}"
    return [
        ("subprocess:getoutput", {"cmd": touch}),
        ("os:system", {"command": touch}),
        ("builtins:exec", {"source": f"open({str(marker)!r}, 'w')"}),
        ("stray:make", {"cmd": touch}),
    ]


def test_sources_refuse_the_standard_library_and_modules_outside_their_folders(
    code: Path, outside: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(outside))  # importable, but not a code path
    sources = EntrypointSources((str(code),), ())
    sources.check("my_models.zoo:make")
    for entrypoint, _ in hostile(tmp_path / "marker"):
        with pytest.raises(EntrypointRefused, match="is refused") as refused:
            sources.check(entrypoint)
        assert str(code) in str(refused.value) and "LRTUNE_ENTRYPOINT_PACKAGES" in str(
            refused.value
        )
    # A code path's own `subprocess.py` does not make the standard library's one allowed.
    with pytest.raises(EntrypointRefused):
        sources.check("subprocess:getoutput")
    # Nothing configured: nothing allowed.
    with pytest.raises(EntrypointRefused, match="none"):
        EntrypointSources().check("my_models.zoo:make")
    # An installed package the operator names is allowed without a folder.
    EntrypointSources((), ("json",)).check("json.decoder:JSONDecoder")
    # Checking imported nothing.
    assert "stray" not in __import__("sys").modules


def test_a_trial_process_refuses_entrypoints_outside_its_snapshot_and_runs_nothing(
    code: Path, outside: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    # No snapshot active: no code path at all, so every entrypoint is refused.
    for entrypoint, params in hostile(marker):
        with pytest.raises(WorkloadError, match="is refused"):
            build_training(entrypoint, params)
    monkeypatch.syspath_prepend(str(outside))
    use_code_path(monkeypatch, code)
    assert build_training("my_models.zoo:make").steps_per_epoch > 0
    for entrypoint, params in hostile(marker):
        with pytest.raises(WorkloadError, match="is refused"):
            build_training(entrypoint, params)
    assert not marker.exists()


def test_a_module_of_the_same_name_imported_from_elsewhere_is_refused_after_its_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module imported earlier from elsewhere is what Python returns for its name, whatever
    # the code path holds: the check after the import catches it.
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "stray_twin.py").write_text("def make():\n    raise AssertionError('called')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "stray_twin.py").write_text("def make():\n    raise AssertionError('called')\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    __import__("stray_twin")  # imported from elsewhere first: sys.modules answers with it
    monkeypatch.delitem(__import__("sys").modules, "stray_twin")
    snapshot = CodeSnapshot.take([folder])
    assert snapshot is not None
    sources = snapshot.sources
    sources.check("stray_twin:make")
    with pytest.raises(EntrypointRefused):
        sources.check_imported("stray_twin:make", __import__("stray_twin"))


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_the_api_that_knows_the_code_paths_refuses_other_entrypoints_with_a_422(
    auth: bool,
    settings: Settings,
    store: Store,
    job_body: dict[str, Any],
    code: Path,
    tmp_path: Path,
) -> None:
    served = settings.model_copy(
        update={"auth": auth, "code_path": str(code), "entrypoints_known": True}
    )
    headers = {}
    if auth:
        _, token = store.create_token(tenant="lab", scope="code")
        headers = {"Authorization": f"Bearer {token}"}
    marker = tmp_path / "marker"
    with TestClient(create_app(served), client=("127.0.0.1", 40000)) as client:
        for entrypoint, params in hostile(marker):
            body = {**job_body, "workload": {"entrypoint": entrypoint, "params": params}}
            refused = client.post("/v1/jobs", json=body, headers=headers)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["fields"][0]["path"] == "workload.entrypoint"
            assert "is refused" in error["message"]
        body = {**job_body, "workload": {"entrypoint": "my_models.zoo:make"}}
        assert client.post("/v1/jobs", json=body, headers=headers).status_code == 201
    assert not marker.exists()
    assert len(store.list_jobs(limit=10).items) == 1


@pytest.mark.ray
@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_the_worker_fails_a_job_whose_entrypoint_is_outside_the_code_paths_and_runs_nothing(
    auth: bool,
    ray_local: str,
    settings: Settings,
    store: Store,
    job_body: dict[str, Any],
    code: Path,
    outside: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lrtune.service.worker import run_worker

    # An API that does not know the workers' code paths (`lrtune api` alone) accepts the jobs.
    api_settings = settings.model_copy(update={"auth": auth})
    headers = {}
    if auth:
        _, token = store.create_token(tenant="lab", scope="code")
        headers = {"Authorization": f"Bearer {token}"}
    monkeypatch.syspath_prepend(str(outside))  # importable in the worker, yet not a code path
    marker = tmp_path / "marker"
    job_ids = []
    with TestClient(create_app(api_settings), client=("127.0.0.1", 40000)) as client:
        for entrypoint, params in hostile(marker):
            body = {**job_body, "workload": {"entrypoint": entrypoint, "params": params}}
            accepted = client.post("/v1/jobs", json=body, headers=headers)
            assert accepted.status_code == 201, accepted.text
            job_ids.append(accepted.json()["id"])
    worker_settings = settings.model_copy(update={"code_path": str(code)})
    for _ in job_ids:
        run_worker(worker_settings, once=True, store=store)
    for job_id in job_ids:
        job = store.get_job(job_id)
        assert job.status == "failed"
        assert job.error is not None and "is refused" in job.error, job.error
        assert store.list_trials(job_id=job_id).items == []
    assert not marker.exists()
