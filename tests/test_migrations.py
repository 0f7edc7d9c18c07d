"""Alembic owns the schema: upgrade from empty to head and back, no drift, the head check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient
from lrtune.schemas.jobs import JobSpec, TrialMetric, TrialProbe
from lrtune.service.app import create_app
from lrtune.service.db import make_engine
from lrtune.service.errors import SchemaOutdatedError
from lrtune.service.migrate import (
    current_revision,
    downgrade,
    ensure_schema_current,
    head_revision,
    prepare_serving_database,
    schema_drift,
    upgrade_to_head,
)
from lrtune.service.settings import Settings
from lrtune.service.store import Store, token_digest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

if TYPE_CHECKING:
    from conftest import PostgresServer

TABLES = {
    "jobs",
    "trials",
    "trial_metrics",
    "range_tests",
    "recommendations",
    "idempotency_keys",
    "best_settings",
    "tenants",
    "api_tokens",
    "trial_probes",
    "job_phases",
}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_to_head_and_back_down(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None
    assert _tables(empty_database_url) == set()

    assert upgrade_to_head(empty_database_url) == head_revision()
    assert current_revision(empty_database_url) == head_revision()
    assert _tables(empty_database_url) == TABLES

    downgrade(empty_database_url, "base")
    assert current_revision(empty_database_url) is None
    assert _tables(empty_database_url) == set()

    # And up again: the downgrade left nothing behind that blocks a fresh upgrade.
    upgrade_to_head(empty_database_url)
    assert _tables(empty_database_url) == TABLES


def test_upgrading_a_database_made_by_0001_backfills_best_settings(database_url: str) -> None:
    store = Store.from_url(database_url)
    try:
        job, _ = store.create_job(
            spec=JobSpec.model_validate(
                {
                    "workload": {"name": "digits"},
                    "policies": ["fixed", "clr"],
                    "budget": {"epochs": 2, "trials_per_policy": 2},
                }
            )
        )
        store.claim_next_job(worker_id="w", lease_seconds=60)
        schedules: dict[str, dict[str, Any]] = {
            "fixed": {"policy": "fixed", "lr": 0.1},
            "clr": {"policy": "clr", "base_lr": 0.001, "max_lr": 0.1, "step_size": 10},
        }
        for policy, accuracy in (("fixed", 0.6), ("fixed", 0.7), ("clr", 0.65)):
            trial = store.create_trial(
                job_id=job.id, policy=policy, schedule=schedules[policy], search_config={}, seed=0
            )
            store.record_trial_results(
                trial_id=trial.id,
                results=[
                    TrialMetric(
                        epoch=1,
                        step=5,
                        lr=0.1,
                        train_loss=1.0,
                        val_loss=1.0,
                        metrics={"val_accuracy": accuracy},
                        elapsed_s=1.0,
                    )
                ],
            )
            store.update_trial_status(trial_id=trial.id, status="completed")
        store.mark_job_succeeded(job_id=job.id)
        before = store.best_settings()
        assert [(b.policy, b.value) for b in before] == [("clr", 0.65), ("fixed", 0.7)]

        downgrade(database_url, "0001")  # the schema as the first release left it, with data
        assert current_revision(database_url) == "0001"
        upgrade_to_head(database_url)
        after = store.best_settings()
        assert [b.model_dump() for b in after] == [b.model_dump() for b in before]
    finally:
        store.dispose()


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    assert schema_drift(database_url) == []


def test_constraints_and_indexes_are_named(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        inspector = inspect(engine)
        indexes = {i["name"] for i in inspector.get_indexes("trials")}
        uniques = {u["name"] for u in inspector.get_unique_constraints("trials")}
        assert {"ix_trials_job_id_id", "ix_trials_job_id_status"} <= indexes
        assert "uq_trials_job_id_ray_trial_id" in uniques
        assert inspector.get_pk_constraint("trial_metrics")["constrained_columns"] == [
            "trial_id",
            "epoch",
        ]
    finally:
        engine.dispose()


def test_schema_behind_head_is_refused_with_the_command_to_run(empty_database_url: str) -> None:
    with pytest.raises(SchemaOutdatedError, match="run `lrtune db upgrade`"):
        ensure_schema_current(empty_database_url)
    upgrade_to_head(empty_database_url)
    ensure_schema_current(empty_database_url)


def test_readyz_answers_503_until_migrated_then_200(
    empty_database_url: str, tmp_path: Path
) -> None:
    app = create_app(Settings(database_url=empty_database_url, home=tmp_path))
    with TestClient(app) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "schema_outdated"
        assert "lrtune db upgrade" in answer.json()["error"]["message"]
        upgrade_to_head(empty_database_url)
        answer = client.get("/readyz")
        assert answer.status_code == 200
        assert answer.json()["schema_revision"] == head_revision()


def test_readyz_answers_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    url = "postgresql://nobody@127.0.0.1:1/none"
    with TestClient(create_app(Settings(database_url=url, home=tmp_path))) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "storage_unavailable"


def test_embedded_sqlite_is_upgraded_automatically(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    prepare_serving_database(settings)
    assert (tmp_path / "home" / "lrtune.db").exists()
    assert current_revision(settings.resolved_database_url) == head_revision()


@pytest.mark.postgres
def test_an_empty_server_database_gets_its_schema_and_an_older_one_is_refused(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    name = f"{postgres_server.prefix}_serving"
    url = postgres_server.create(name)
    try:
        settings = Settings(database_url=url, home=tmp_path)
        prepare_serving_database(settings)
        assert current_revision(url) == head_revision()
        prepare_serving_database(settings)  # a second start finds it made
        downgrade(url, "-1")
        older = current_revision(url)
        with pytest.raises(SchemaOutdatedError, match="lrtune db upgrade"):
            prepare_serving_database(settings)
        assert current_revision(url) == older  # never migrated implicitly
    finally:
        postgres_server.drop(name)


def test_upgrading_a_database_made_by_0002_puts_its_jobs_in_the_default_tenant(
    database_url: str,
) -> None:
    downgrade(database_url, "0002")
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO jobs (name, kind, status, spec, workload, metric_name, metric_mode, "
                "planned_trials, created_at) VALUES ('old', 'search', 'failed', '{}', 'digits', "
                "'val_accuracy', 'max', 2, CURRENT_TIMESTAMP)"
            )
            connection.exec_driver_sql(
                "INSERT INTO idempotency_keys (key, body_sha256, job_id, created_at) "
                "VALUES ('k', 'x', 1, CURRENT_TIMESTAMP)"
            )
        upgrade_to_head(database_url)
        with engine.connect() as connection:
            tenants = connection.exec_driver_sql("SELECT id, name FROM tenants").all()
            jobs = connection.exec_driver_sql("SELECT name, tenant_id FROM jobs").all()
            keys = connection.exec_driver_sql("SELECT key, tenant_id FROM idempotency_keys").all()
    finally:
        engine.dispose()
    assert [tuple(t) for t in tenants] == [(1, "default")]
    assert [tuple(j) for j in jobs] == [("old", 1)]
    assert [tuple(k) for k in keys] == [("k", 1)]

    # A second tenant's rows, then down to 0002: every job survives, with its trials.
    store = Store.from_url(database_url)
    try:
        other = store.ensure_tenant(name="other")
        spec = JobSpec.model_validate(
            {
                "workload": {"name": "digits"},
                "policies": ["fixed"],
                "budget": {"epochs": 1, "trials_per_policy": 1},
            }
        )
        theirs, _ = store.create_job(spec=spec, tenant_id=other.id, idempotency_key="k")
        store.claim_next_job(worker_id="w", lease_seconds=60)
        trial = store.create_trial(
            job_id=theirs.id, policy="fixed", schedule={"policy": "fixed"}, search_config={}, seed=0
        )
    finally:
        store.dispose()
    downgrade(database_url, "0002")
    assert current_revision(database_url) == "0002"
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            names = connection.exec_driver_sql("SELECT name FROM jobs ORDER BY id").scalars().all()
            trials = connection.exec_driver_sql("SELECT id FROM trials").scalars().all()
    finally:
        engine.dispose()
    assert len(names) == 2 and names[0] == "old"
    assert trials == [trial.id]  # rebuilding jobs on SQLite did not cascade into its trials
    assert "tenants" not in _tables(database_url)


def test_upgrading_a_database_made_by_0003_makes_its_trials_search_trials(
    database_url: str,
) -> None:
    downgrade(database_url, "0003")
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO jobs (name, kind, status, spec, workload, metric_name, metric_mode, "
                "planned_trials, created_at) VALUES ('old', 'search', 'succeeded', "
                '\'{"workload": {"name": "digits"}, "policies": ["fixed"], '
                '"budget": {"epochs": 1, "trials_per_policy": 1}}\', '
                "'digits', 'val_accuracy', 'max', 1, CURRENT_TIMESTAMP)"
            )
            connection.exec_driver_sql(
                "INSERT INTO trials (job_id, policy, schedule, search_config, seed, status, "
                "epochs_done, last_metric_kind, created_at) VALUES (1, 'fixed', "
                "'{\"policy\": \"fixed\", \"lr\": 0.1}', '{}', 0, 'completed', 1, 0, "
                "CURRENT_TIMESTAMP)"
            )
        upgrade_to_head(database_url)
        with engine.connect() as connection:
            trials = connection.exec_driver_sql("SELECT id, phase FROM trials").all()
            spaces = connection.exec_driver_sql("SELECT search_spaces FROM jobs").scalar_one()
    finally:
        engine.dispose()
    assert [tuple(t) for t in trials] == [(1, "search")]
    assert spaces is None

    store = Store.from_url(database_url)
    try:
        assert store.get_job(1).search_spaces is None
        assert store.get_trial(1).phase == "search"
        store.set_search_spaces(job_id=1, spaces={"fixed": {"lr": {"loguniform": [0.01, 0.1]}}})
        assert store.get_job(1).search_spaces == {"fixed": {"lr": {"loguniform": [0.01, 0.1]}}}
    finally:
        store.dispose()
    # An unknown phase is refused by the constraint the migration added.
    engine = make_engine(database_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("UPDATE trials SET phase = 'other' WHERE id = 1")
    finally:
        engine.dispose()

    downgrade(database_url, "0003")
    assert current_revision(database_url) == "0003"
    engine = make_engine(database_url)
    try:
        trial_columns = {c["name"] for c in inspect(engine).get_columns("trials")}
        job_columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
        with engine.connect() as connection:
            kept = connection.exec_driver_sql("SELECT id, policy FROM trials").all()
    finally:
        engine.dispose()
    assert "phase" not in trial_columns and "search_spaces" not in job_columns
    assert [tuple(t) for t in kept] == [(1, "fixed")]


def test_upgrading_a_database_made_by_0004_leaves_its_trials_unrestored_and_unprobed(
    database_url: str,
) -> None:
    downgrade(database_url, "0004")
    assert "trial_probes" not in _tables(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO jobs (name, kind, status, spec, workload, metric_name, metric_mode, "
                "planned_trials, created_at) VALUES ('old', 'search', 'running', "
                '\'{"workload": {"name": "digits"}, "policies": ["fixed"], '
                '"budget": {"epochs": 2, "trials_per_policy": 1}}\', '
                "'digits', 'val_accuracy', 'max', 1, CURRENT_TIMESTAMP)"
            )
            connection.exec_driver_sql(
                "INSERT INTO trials (job_id, policy, phase, schedule, search_config, seed, status, "
                "epochs_done, last_metric_kind, created_at) VALUES (1, 'fixed', 'search', "
                "'{\"policy\": \"fixed\", \"lr\": 0.1}', '{}', 0, 'running', 1, 0, "
                "CURRENT_TIMESTAMP)"
            )
            connection.exec_driver_sql(
                "INSERT INTO trial_metrics (trial_id, epoch, step, lr, lr_kind, train_loss, "
                "train_loss_kind, val_loss, val_loss_kind, metrics, elapsed_s) VALUES "
                "(1, 1, 10, 0.1, 0, 1.0, 0, 1.2, 0, '{\"val_accuracy\": 0.5}', 0.5)"
            )
        upgrade_to_head(database_url)
        with engine.connect() as connection:
            restored = connection.exec_driver_sql(
                "SELECT id, restored_from_epoch FROM trials"
            ).all()
            probes = connection.exec_driver_sql("SELECT count(*) FROM trial_probes").scalar_one()
    finally:
        engine.dispose()
    assert [tuple(t) for t in restored] == [(1, None)]
    assert probes == 0

    store = Store.from_url(database_url)
    try:
        assert store.get_trial(1).restored_from_epoch is None
        assert store.list_trial_probes(1) == []
        assert store.job_rungs(1) == []
        store.record_trial_probes(
            trial_id=1,
            probes=[
                TrialProbe(epoch=1, step=10, cooldown_steps=10, elapsed_s=0.1),
            ],
        )
        store.set_restored_from_epoch(trial_id=1, epoch=1)
        assert store.get_trial(1).restored_from_epoch == 1
    finally:
        store.dispose()
    # A decision other than continue or stop is refused by the table's constraint.
    engine = make_engine(database_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("UPDATE trial_probes SET decision = 'maybe'")
    finally:
        engine.dispose()

    downgrade(database_url, "0004")
    assert current_revision(database_url) == "0004"
    assert "trial_probes" not in _tables(database_url)
    engine = make_engine(database_url)
    try:
        trial_columns = {c["name"] for c in inspect(engine).get_columns("trials")}
        with engine.connect() as connection:
            kept = connection.exec_driver_sql("SELECT id, policy, phase FROM trials").all()
            epochs = connection.exec_driver_sql("SELECT trial_id, epoch FROM trial_metrics").all()
        # Rebuilding trials on SQLite kept its constraints (and did not cascade into its epochs).
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("UPDATE trials SET phase = 'other' WHERE id = 1")
    finally:
        engine.dispose()
    assert "restored_from_epoch" not in trial_columns
    assert [tuple(t) for t in kept] == [(1, "fixed", "search")]
    assert [tuple(e) for e in epochs] == [(1, 1)]
    upgrade_to_head(database_url)
    assert schema_drift(database_url) == []


def test_upgrading_a_database_made_by_0005_gives_its_jobs_an_empty_timeline(
    database_url: str,
) -> None:
    downgrade(database_url, "0005")
    assert "job_phases" not in _tables(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO jobs (name, kind, status, spec, workload, metric_name, metric_mode, "
                "planned_trials, worker_id, lease_expires_at, created_at, started_at) VALUES "
                "('old', 'search', 'running', "
                '\'{"workload": {"name": "digits"}, "policies": ["fixed"], '
                '"budget": {"epochs": 2, "trials_per_policy": 1}}\', '
                "'digits', 'val_accuracy', 'max', 1, 'w1', '2100-01-01 00:00:00', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        upgrade_to_head(database_url)
        with engine.connect() as connection:
            phases = connection.exec_driver_sql("SELECT count(*) FROM job_phases").scalar_one()
    finally:
        engine.dispose()
    assert phases == 0

    store = Store.from_url(database_url)
    try:
        timeline = store.job_timeline(1)
        assert timeline.phases == [] and timeline.phases_s == 0.0
        # The job's worker goes on: its phases are recorded from here.
        assert store.begin_job_phase(job_id=1, phase="search", worker_id="w1")
        assert [p.phase for p in store.job_timeline(1).phases] == ["search"]
    finally:
        store.dispose()
    # A phase the timeline does not know is refused by the table's constraint.
    engine = make_engine(database_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("UPDATE job_phases SET phase = 'napping'")
    finally:
        engine.dispose()

    downgrade(database_url, "0005")
    assert current_revision(database_url) == "0005"
    assert "job_phases" not in _tables(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            kept = connection.exec_driver_sql("SELECT id, status FROM jobs").all()
    finally:
        engine.dispose()
    assert [tuple(j) for j in kept] == [(1, "running")]
    upgrade_to_head(database_url)
    assert schema_drift(database_url) == []


def test_upgrading_a_database_made_by_0006_gives_its_jobs_no_notes(database_url: str) -> None:
    downgrade(database_url, "0006")
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO jobs (name, kind, status, spec, workload, metric_name, metric_mode, "
                "planned_trials, created_at) VALUES ('old', 'search', 'queued', "
                '\'{"workload": {"name": "digits"}, "policies": ["fixed"], '
                '"budget": {"epochs": 2, "trials_per_policy": 1}}\', '
                "'digits', 'val_accuracy', 'max', 1, CURRENT_TIMESTAMP)"
            )
    finally:
        engine.dispose()
    upgrade_to_head(database_url)
    store = Store.from_url(database_url)
    try:
        assert store.get_job(1).notes == []
        store.add_job_note(job_id=1, note="judged raw")
        store.add_job_note(job_id=1, note="judged raw")  # a resumed job says it again: once
        assert store.get_job(1).notes == ["judged raw"]
    finally:
        store.dispose()
    downgrade(database_url, "0006")
    assert current_revision(database_url) == "0006"
    upgrade_to_head(database_url)
    assert schema_drift(database_url) == []


def test_upgrading_a_database_made_by_0007_gives_its_tokens_every_right(
    database_url: str, tmp_path: Path, job_body: dict[str, Any]
) -> None:
    downgrade(database_url, "0007")
    token = "lrt_made-before-scopes"
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO api_tokens (tenant_id, token_sha256, label, created_at) "
                f"VALUES (1, '{token_digest(token)}', 'old', CURRENT_TIMESTAMP)"
            )
            connection.exec_driver_sql(
                "INSERT INTO jobs (name, kind, status, spec, workload, metric_name, metric_mode, "
                "planned_trials, created_at) VALUES ('old', 'search', 'queued', "
                '\'{"workload": {"name": "digits"}, "policies": ["fixed"], '
                '"budget": {"epochs": 2, "trials_per_policy": 1}}\', '
                "'digits', 'val_accuracy', 'max', 1, CURRENT_TIMESTAMP)"
            )
        upgrade_to_head(database_url)
        with engine.connect() as connection:
            scopes = connection.exec_driver_sql("SELECT label, scope FROM api_tokens").all()
    finally:
        engine.dispose()
    assert [tuple(s) for s in scopes] == [("old", "code")]

    # The old token still does everything: an entrypoint job, and cancelling the old job, whose
    # submitter nobody recorded.
    settings = Settings(database_url=database_url, home=tmp_path, auth=True)
    bearer = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/whoami", headers=bearer).json()["scope"] == "code"
        body = {**job_body, "workload": {"entrypoint": "my_models.zoo:make"}}
        submitted = client.post("/v1/jobs", json=body, headers=bearer)
        assert submitted.status_code == 201, submitted.text
        cancelled = client.post("/v1/jobs/1/cancel", headers=bearer)
        assert cancelled.status_code == 202, cancelled.text
        old = cancelled.json()
    assert old["submitted_by"] is None
    assert old["cancelled_by"] == {"id": 1, "label": "old"}
    # A token written without a scope gets none (no default), and only the three are allowed.
    engine = make_engine(database_url)
    try:
        for scope in ("NULL", "'admin'"):
            with pytest.raises(IntegrityError), engine.begin() as connection:
                connection.exec_driver_sql(
                    "INSERT INTO api_tokens (tenant_id, token_sha256, label, scope, created_at) "
                    f"VALUES (1, 'x', '', {scope}, CURRENT_TIMESTAMP)"
                )
    finally:
        engine.dispose()

    downgrade(database_url, "0007")
    assert current_revision(database_url) == "0007"
    engine = make_engine(database_url)
    try:
        token_columns = {c["name"] for c in inspect(engine).get_columns("api_tokens")}
        job_columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
        with engine.connect() as connection:
            kept = connection.exec_driver_sql("SELECT id, status FROM jobs ORDER BY id").all()
    finally:
        engine.dispose()
    assert "scope" not in token_columns
    assert not {"submitted_by_token_id", "cancelled_by_token_id"} & job_columns
    assert [tuple(j) for j in kept] == [(1, "cancelled"), (2, "queued")]
    upgrade_to_head(database_url)
    assert schema_drift(database_url) == []
