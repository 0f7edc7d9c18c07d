"""Configuration from the environment (LRTUNE_*), validated by pydantic-settings."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LRTUNE_", extra="ignore")

    home: Path = Field(
        Path("~/.lrtune"), description="Where the embedded database and Ray Tune state live."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file under LRTUNE_HOME."
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("RAY_ADDRESS", "LRTUNE_RAY_ADDRESS"),
        description="Join this Ray cluster; unset: start a local Ray sized to the machine.",
    )
    auth: bool = Field(
        False,
        description="LRTUNE_AUTH=on: every /v1 request needs a bearer token (`lrtune token "
        "create`); off: one trusted local user, the tenant 'default'.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: the server's log as one JSON object per line."
    )
    metrics_token: str | None = Field(
        None,
        description="With LRTUNE_AUTH=on, the bearer token /metrics answers (operators' only; "
        "tenant tokens get 403). Auth off: /metrics is open, as every route is.",
    )
    max_request_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest request body accepted (413 above it)."
    )
    max_preview_steps: int = Field(1_000_000, gt=0)
    max_epochs: int = Field(
        1000, gt=0, description="Most epochs a trial may train (a tenant's own limit wins)."
    )
    max_concurrent_jobs: int = Field(
        50, gt=0, description="Jobs a tenant may have queued or running at once (429 above it)."
    )
    max_trials_per_job: int = Field(
        2000, gt=0, description="Most trials (planned, with confirmation seeds) in one job."
    )
    max_trials_per_policy: int = Field(200, gt=0)
    max_policies_per_job: int = Field(32, gt=0)
    job_lease_seconds: float = Field(
        60.0, gt=0, description="A worker that stops heartbeating loses its job after this long."
    )
    db_retry_attempts: int = Field(
        8, ge=1, description="Tries for a transaction that hits a lock or serialization failure."
    )
    sqlite_busy_timeout_ms: int = Field(
        30_000, ge=0, description="How long a SQLite writer waits for the lock before retrying."
    )
    db_pool_size: int = Field(10, gt=0, description="PostgreSQL connections kept per process.")
    storage: str | None = Field(
        None,
        description="Where Ray Tune keeps experiment state and trial checkpoints: a folder, a "
        "shared folder, or a pyarrow filesystem URI (s3://..., gs://...); a cluster needs one "
        "every node reaches. Default: LRTUNE_HOME/ray.",
    )
    checkpoint_every_epochs: int = Field(
        5,
        ge=0,
        description="A trial also checkpoints every this many epochs (it always does at ASHA's "
        "rungs); 0: at the rungs only. A dying worker or node costs at most this many epochs.",
    )

    code_path: str | None = Field(
        None,
        description="Folders of users' code, colon-separated (as PYTHONPATH): importable by "
        "jobs' entrypoints in the worker and every trial, snapshotted afresh for each job. "
        "`lrtune serve` and `lrtune worker` add their --code-path folders to these.",
    )
    entrypoint_packages: str | None = Field(
        None,
        description="Installed packages (comma-separated top-level names) that job entrypoints "
        "may also come from, for those who ship their models as packages. Entrypoints from "
        "anywhere else than these and the code paths are refused.",
    )
    entrypoints_known: bool = Field(
        False,
        description="The API has the workers' code paths and entrypoint packages (its own are "
        "theirs, as under `lrtune serve`, which turns this on): it refuses an entrypoint from "
        "elsewhere with a 422 at submission instead of leaving that to the worker.",
    )
    planning_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest a job's planning (importing its entrypoint, building the workload "
        "once) may take before the job fails.",
    )

    @property
    def code_paths(self) -> tuple[str, ...]:
        return tuple(part for part in (self.code_path or "").split(os.pathsep) if part)

    @property
    def allowed_entrypoint_packages(self) -> tuple[str, ...]:
        names = (part.strip() for part in (self.entrypoint_packages or "").split(","))
        return tuple(name for name in names if name)

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def resolved_storage(self) -> str:
        return self.storage or str(self.home_dir / "ray")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_dir / 'lrtune.db'}"
