"""The store: the only code that opens SQL transactions. It returns schema objects, never rows.

Every transaction goes through `Store._run`, which commits or rolls back, retries lock and
serialization failures with a bounded, jittered backoff, and turns database errors into
lrtune's own (StorageError, ConflictError). Writes that race (claiming a job, idempotent
submissions, results reported twice) rely on conditional updates and unique constraints rather
than on reading first.

Tenants: the reads and writes a request makes (jobs, trials, metrics, best settings, curves) take
`tenant_id=` and see only that tenant's rows; another tenant's id is a NotFoundError, exactly like
an id that does not exist. `tenant_id=None` is for the worker and for operators: no filter.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, get_args

from lrtune.schemas.dashboard import JobCurves, PolicyStanding
from lrtune.schemas.jobs import (
    ACTIVE_JOB_STATUSES,
    CANCELLED_TRIAL_ERROR,
    COUNTED_TRIAL_STATUSES,
    FINISHED_TRIAL_STATUSES,
    JOB_PHASES,
    TRIAL_STATUSES,
    BestSetting,
    Job,
    JobPage,
    JobRung,
    JobSpec,
    JobTimeline,
    RungDecision,
    RungTrial,
    Trial,
    TrialErrorCount,
    TrialMetric,
    TrialPage,
    TrialProbe,
    is_better,
)
from lrtune.schemas.operations import OperationsSnapshot
from lrtune.schemas.recommendations import BoundSuggestion, RangeTestResult, Recommendation
from lrtune.schemas.tenants import (
    ApiToken,
    Tenant,
    TenantLimits,
    TokenGrant,
    TokenRef,
    TokenScope,
)
from lrtune.service.codecs import (
    decode_cursor,
    decode_float,
    encode_cursor,
    encode_float,
    encode_floats,
    join_float,
    json_safe,
    split_float,
    utc,
)
from lrtune.service.conversions import (
    api_token_from_row,
    job_from_row,
    job_phase_from_row,
    metric_row_values,
    probe_row_values,
    seconds_between,
    tenant_from_row,
    trial_curve,
    trial_from_row,
    trial_metric_from_row,
    trial_probe_from_row,
    trial_timing_from_row,
)
from lrtune.service.db import WRITE_OPTION, make_engine
from lrtune.service.errors import (
    ConcurrencyLimitError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from lrtune.service.models import (
    DEFAULT_TENANT_ID,
    ApiTokenRow,
    BestSettingRow,
    IdempotencyKeyRow,
    JobPhaseRow,
    JobRow,
    RangeTestRow,
    RecommendationRow,
    TenantRow,
    TrialMetricRow,
    TrialProbeRow,
    TrialRow,
    utcnow,
)
from lrtune.service.settings import Settings
from lrtune.workers.recommendation import RecommendationInputs, TrialFacts, leader
from sqlalchemy import (
    Engine,
    and_,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs PostgreSQL uses for "try the transaction again".
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")
_METRIC_ROWS_PER_INSERT = 500
TOKEN_PREFIX = "lrt_"
# last_used_at is a hint for operators, not an audit log: write it at most this often per token,
# so authenticated reads do not each take SQLite's write lock.
_LAST_USED_RESOLUTION = timedelta(seconds=60)


class Store:
    """Jobs, trials and their metrics in SQL (SQLite or PostgreSQL)."""

    def __init__(
        self, engine: Engine, *, retry_attempts: int = 8, retry_base_s: float = 0.01
    ) -> None:
        self.engine = engine
        self.retry_attempts = retry_attempts
        self.retry_base_s = retry_base_s
        self.is_postgres = engine.dialect.name == "postgresql"

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 10, retry_attempts: int = 8) -> Store:
        return cls(make_engine(url, pool_size=pool_size), retry_attempts=retry_attempts)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        engine = make_engine(
            settings.resolved_database_url,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
            pool_size=settings.db_pool_size,
        )
        return cls(engine, retry_attempts=settings.db_retry_attempts)

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- health -------------------------------------------------------------------------------

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None: never migrated); proves it answers."""
        from alembic.runtime.migration import MigrationContext

        def work(session: Session) -> str | None:
            return MigrationContext.configure(session.connection()).get_current_revision()

        return self._run(work, write=False)

    # ---- tenants and API tokens ---------------------------------------------------------------

    def ensure_tenant(self, *, name: str) -> Tenant:
        """The tenant called `name`, created (with the server's default limits) if missing."""

        def work(session: Session) -> TenantRow:
            statement = (
                self._insert(TenantRow)
                .values(name=name, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["name"])
            )
            session.execute(statement)
            row = session.scalar(select(TenantRow).where(TenantRow.name == name))
            assert row is not None
            return row

        return tenant_from_row(self._run(work, write=True))

    def get_tenant(self, *, tenant_id: int) -> Tenant:
        def work(session: Session) -> TenantRow:
            row = session.get(TenantRow, tenant_id)
            if row is None:
                raise NotFoundError(f"no tenant with id {tenant_id}")
            return row

        return tenant_from_row(self._run(work, write=False))

    def set_tenant_limits(self, *, name: str, limits: TenantLimits) -> Tenant:
        """Replace the tenant's own limits (None: the server's default)."""

        def work(session: Session) -> TenantRow:
            row = session.scalar(select(TenantRow).where(TenantRow.name == name))
            if row is None:
                raise NotFoundError(f"no tenant called {name!r}")
            row.max_concurrent_jobs = limits.max_concurrent_jobs
            row.max_trials_per_job = limits.max_trials_per_job
            row.max_epochs = limits.max_epochs
            return row

        return tenant_from_row(self._run(work, write=True))

    def create_token(
        self, *, tenant: str, label: str = "", scope: TokenScope = "submit"
    ) -> tuple[ApiToken, str]:
        """A new bearer token for `tenant` (created if missing) with `scope`; returns (record,
        token).

        The token itself is returned once and never stored: the table keeps its SHA-256.
        """
        tenant_row = self.ensure_tenant(name=tenant)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def work(session: Session) -> int:
            row = ApiTokenRow(
                tenant_id=tenant_row.id,
                token_sha256=token_digest(token),
                label=label,
                scope=scope,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return row.id

        token_id = self._run(work, write=True)
        (record,) = [t for t in self.list_tokens() if t.id == token_id]
        return record, token

    def list_tokens(self) -> list[ApiToken]:
        def work(session: Session) -> list[ApiToken]:
            rows = session.execute(
                select(ApiTokenRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == ApiTokenRow.tenant_id)
                .order_by(ApiTokenRow.id)
            )
            return [api_token_from_row(row, tenant) for row, tenant in rows]

        return self._run(work, write=False)

    def revoke_token(self, *, token_id: int) -> ApiToken:
        """Revoke a token (idempotent): requests bearing it answer 401 from now on."""

        def work(session: Session) -> None:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                raise NotFoundError(f"no token with id {token_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()

        self._run(work, write=True)
        (record,) = [t for t in self.list_tokens() if t.id == token_id]
        return record

    def authenticate(self, *, token: str) -> TokenGrant | None:
        """What a bearer token stands for (its tenant, id, label and scope); None for an unknown
        or revoked token."""
        digest = token_digest(token)
        now = utcnow()

        def read(session: Session) -> tuple[ApiTokenRow, TenantRow] | None:
            found = session.execute(
                select(ApiTokenRow, TenantRow)
                .join(TenantRow, TenantRow.id == ApiTokenRow.tenant_id)
                .where(ApiTokenRow.token_sha256 == digest, ApiTokenRow.revoked_at.is_(None))
            ).first()
            return None if found is None else (found[0], found[1])

        found = self._run(read, write=False)
        if found is None:
            return None
        token_row, tenant_row = found
        token_id = token_row.id
        last = utc(token_row.last_used_at)
        if last is None or now - last > _LAST_USED_RESOLUTION:

            def touch(session: Session) -> None:
                session.execute(
                    update(ApiTokenRow).where(ApiTokenRow.id == token_id).values(last_used_at=now)
                )

            self._run(touch, write=True)
        return TokenGrant(
            tenant=tenant_from_row(tenant_row),
            token=TokenRef(id=token_id, label=token_row.label),
            scope=token_row.scope,
        )

    # ---- jobs ---------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        spec: JobSpec,
        idempotency_key: str | None = None,
        tenant_id: int = DEFAULT_TENANT_ID,
        max_active_jobs: int | None = None,
        submitted_by: int | None = None,
    ) -> tuple[Job, bool]:
        """Store a queued job of `tenant_id`, submitted by the token `submitted_by` (None: auth
        off); returns (job, created).

        With an idempotency key (per tenant), the same key and the same spec return the job made
        the first time (created False); the same key with another spec is a ConflictError. Twenty
        concurrent identical submissions make one job: the key's primary key decides the race.
        With `max_active_jobs`, a tenant that already has that many jobs queued, running or
        cancelling gets ConcurrencyLimitError; the tenant's row lock makes the count exact.
        """
        digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
        if idempotency_key is not None:
            existing = self._job_for_key(idempotency_key, digest, tenant_id=tenant_id)
            if existing is not None:
                return existing, False

        def work(session: Session) -> int:
            if max_active_jobs is not None:
                self._check_active_jobs(session, tenant_id=tenant_id, limit=max_active_jobs)
            row = JobRow(
                tenant_id=tenant_id,
                name=spec.name,
                kind=spec.kind,
                status="queued",
                spec=spec.model_dump(mode="json"),
                workload=spec.workload.label,
                metric_name=spec.metric_name,
                metric_mode=spec.metric_mode,
                planned_trials=spec.planned_trials,
                submitted_by_token_id=submitted_by,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            session.add(JobPhaseRow(job_id=row.id, phase="queued", started_at=row.created_at))
            if idempotency_key is not None:
                session.add(
                    IdempotencyKeyRow(
                        tenant_id=tenant_id,
                        key=idempotency_key,
                        body_sha256=digest,
                        job_id=row.id,
                    )
                )
                session.flush()
            return row.id

        try:
            job_id = self._run(work, write=True)
        except ConflictError:
            if idempotency_key is None:
                raise
            # Another request stored this key between our look-up and our insert.
            existing = self._job_for_key(idempotency_key, digest, tenant_id=tenant_id)
            if existing is None:
                raise
            return existing, False
        return self.get_job(job_id), True

    def _check_active_jobs(self, session: Session, *, tenant_id: int, limit: int) -> None:
        # Lock the tenant's row (PostgreSQL; SQLite's writers are serial anyway) so that
        # concurrent submissions count one after another and cannot all slip under the limit.
        tenant = session.scalar(
            select(TenantRow).where(TenantRow.id == tenant_id).with_for_update()
            if self.is_postgres
            else select(TenantRow).where(TenantRow.id == tenant_id)
        )
        if tenant is None:
            raise NotFoundError(f"no tenant with id {tenant_id}")
        active = session.scalar(
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.tenant_id == tenant_id, JobRow.status.in_(ACTIVE_JOB_STATUSES))
        )
        if active is not None and active >= limit:
            raise ConcurrencyLimitError(
                f"tenant {tenant.name!r} already has {active} jobs queued or running; the limit "
                f"(max_concurrent_jobs) is {limit}: wait for one to finish or cancel one",
                field="max_concurrent_jobs",
            )

    def _job_for_key(self, key: str, digest: str, *, tenant_id: int) -> Job | None:
        def work(session: Session) -> tuple[str, int] | None:
            row = session.get(IdempotencyKeyRow, (tenant_id, key))
            return (row.body_sha256, row.job_id) if row is not None else None

        found = self._run(work, write=False)
        if found is None:
            return None
        stored_digest, job_id = found
        if stored_digest != digest:
            raise ConflictError(
                f"Idempotency-Key {key!r} was already used with a different job spec; "
                "use a new key for a new job"
            )
        return self.get_job(job_id, tenant_id=tenant_id)

    def get_job(self, job_id: int, *, tenant_id: int | None = None) -> Job:
        def work(session: Session) -> Job:
            row = _job_row(session, job_id, tenant_id=tenant_id)
            return self._jobs_from_rows(session, [row])[0]

        return self._run(work, write=False)

    def list_jobs(
        self,
        *,
        tenant_id: int | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs, newest first."""
        before = decode_cursor(cursor)

        def work(session: Session) -> JobPage:
            query = select(JobRow).order_by(JobRow.id.desc()).limit(limit + 1)
            if tenant_id is not None:
                query = query.where(JobRow.tenant_id == tenant_id)
            if status is not None:
                query = query.where(JobRow.status == status)
            if before is not None:
                query = query.where(JobRow.id < before)
            rows = list(session.scalars(query))
            more = len(rows) > limit
            rows = rows[:limit]
            return JobPage(
                items=self._jobs_from_rows(session, rows),
                next_cursor=encode_cursor(rows[-1].id) if more else None,
            )

        return self._run(work, write=False)

    def cancel_job(
        self, job_id: int, *, tenant_id: int | None = None, cancelled_by: int | None = None
    ) -> Job:
        """queued -> cancelled now; running -> cancelling (the worker ends it); idempotent.

        `cancelled_by` (a token id; None: auth off) is recorded by the request that cancels: a
        repeated cancel changes nothing, its token included.
        """

        def work(session: Session) -> None:
            row = _job_row(session, job_id, tenant_id=tenant_id, lock=self.is_postgres)
            if row.status == "queued":
                row.status = "cancelled"
                row.finished_at = utcnow()
                row.cancelled_by_token_id = cancelled_by
                _end_open_phases(session, [job_id], row.finished_at)
            elif row.status == "running":
                row.status = "cancelling"
                row.cancelled_by_token_id = cancelled_by
            elif row.status in ("succeeded", "failed"):
                raise ConflictError(f"job {job_id} has already {row.status}; nothing to cancel")

        self._run(work, write=True)
        return self.get_job(job_id, tenant_id=tenant_id)

    def is_cancel_requested(self, job_id: int) -> bool:
        def work(session: Session) -> bool:
            status = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
            if status is None:
                raise NotFoundError(f"no job with id {job_id}")
            return status in ("cancelling", "cancelled")

        return self._run(work, write=False)

    # ---- workers: claiming, leases, outcomes --------------------------------------------------

    def claim_next_job(self, *, worker_id: str, lease_seconds: float) -> Job | None:
        """Take the oldest queued job (or a running one whose lease expired) for `worker_id`.

        The job becomes running with a lease; two workers never get the same job: PostgreSQL
        skips rows another claim has locked, SQLite serialises writers and the update is
        conditional on the state it selected.
        """
        now = utcnow()
        claimable = or_(
            JobRow.status == "queued",
            and_(JobRow.status == "running", JobRow.lease_expires_at < now),
        )
        values = {
            "status": "running",
            "worker_id": worker_id,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "started_at": func.coalesce(JobRow.started_at, now),
        }

        def work(session: Session) -> int | None:
            # A cancelled job whose worker died is claimed by nobody: end it here, or it would
            # stay "cancelling" for ever.
            _finish_expired_cancellations(session, now)
            candidate = select(JobRow.id).where(claimable).order_by(JobRow.id).limit(1)
            claimed: int | None
            if self.is_postgres:
                claimed = session.scalar(candidate.with_for_update(skip_locked=True))
                if claimed is None:
                    return None
                session.execute(update(JobRow).where(JobRow.id == claimed).values(**values))
            else:
                claimed = session.scalar(
                    update(JobRow)
                    .where(JobRow.id == candidate.scalar_subquery(), claimable)
                    .values(**values)
                    .returning(JobRow.id)
                )
            if claimed is not None:
                # Its wait ends here: queued, or the phase a worker that died left open (the
                # claiming worker's first phase starts where this one ends).
                _end_open_phases(session, [claimed], now)
            return claimed

        job_id = self._run(work, write=True)
        return self.get_job(job_id) if job_id is not None else None

    def heartbeat(self, *, job_id: int, worker_id: str, lease_seconds: float) -> bool:
        """Extend the lease; False when `worker_id` no longer holds the job (stop working on it)."""
        expires = utcnow() + timedelta(seconds=lease_seconds)

        def work(session: Session) -> bool:
            result = session.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.worker_id == worker_id,
                    JobRow.status.in_(("running", "cancelling")),
                )
                .values(lease_expires_at=expires)
                .returning(JobRow.id)
            )
            return result.first() is not None

        return self._run(work, write=True)

    def reclaim_expired_jobs(self) -> int:
        """Requeue running jobs whose worker stopped heartbeating; finish expired cancellations.

        Returns how many jobs changed. (claim_next_job also takes expired running jobs directly.)
        """
        now = utcnow()
        expired = and_(JobRow.lease_expires_at.is_not(None), JobRow.lease_expires_at < now)

        def work(session: Session) -> int:
            requeued = _requeue(session, and_(JobRow.status == "running", expired), now)
            return len(requeued) + _finish_expired_cancellations(session, now)

        return self._run(work, write=True)

    def hand_back_job(self, *, job_id: int, worker_id: str) -> bool:
        """A stopping worker gives its running job back to the queue, for the next worker to
        resume at once instead of after the lease; False if it holds the job no more."""
        now = utcnow()
        held = and_(JobRow.id == job_id, JobRow.status == "running", JobRow.worker_id == worker_id)

        def work(session: Session) -> bool:
            return bool(_requeue(session, held, now))

        return self._run(work, write=True)

    def mark_job_running(self, *, job_id: int, worker_id: str) -> bool:
        """Confirm `worker_id` runs the job (claim_next_job already did); False if it lost it."""
        now = utcnow()

        def work(session: Session) -> bool:
            result = session.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.worker_id == worker_id,
                    JobRow.status.in_(("queued", "running")),
                )
                .values(status="running", started_at=func.coalesce(JobRow.started_at, now))
                .returning(JobRow.id)
            )
            return result.first() is not None

        return self._run(work, write=True)

    def mark_job_succeeded(self, *, job_id: int) -> Job:
        return self._finish_job(job_id, "succeeded", error=None, allowed_from=("running",))

    def mark_job_failed(self, *, job_id: int, error: str) -> Job:
        return self._finish_job(job_id, "failed", error=error, allowed_from=ACTIVE_JOB_STATUSES)

    def mark_job_cancelled(self, *, job_id: int) -> Job:
        return self._finish_job(job_id, "cancelled", error=None, allowed_from=ACTIVE_JOB_STATUSES)

    def _finish_job(
        self, job_id: int, status: str, *, error: str | None, allowed_from: tuple[str, ...]
    ) -> Job:
        def work(session: Session) -> None:
            row = session.get(JobRow, job_id, with_for_update=self.is_postgres)
            if row is None:
                raise NotFoundError(f"no job with id {job_id}")
            if row.status == status:
                return
            if row.status not in allowed_from:
                raise ConflictError(f"job {job_id} is {row.status}; it cannot become {status}")
            row.status = status
            row.error = error
            row.finished_at = utcnow()
            row.worker_id = None
            row.lease_expires_at = None
            _end_open_phases(session, [job_id], row.finished_at)
            if status == "succeeded":
                self._publish_best_settings(session, row)

        self._run(work, write=True)
        return self.get_job(job_id)

    # ---- the job's timeline -------------------------------------------------------------------

    def begin_job_phase(self, *, job_id: int, phase: str, worker_id: str) -> bool:
        """The job enters `phase` now: its open phase ends here, and the new one starts where
        the timeline left off (at the claim, for a worker's first phase; at the job's end, for
        its recommendation), so the phases tile the job's wall-clock.

        Only the worker that holds the job records its phases; a succeeded job takes one
        recommendation phase, from the worker whose phase it ended in. False (nothing
        recorded) for anyone else: a worker that lost its lease must leave the timeline alone.
        """
        if phase not in JOB_PHASES or phase == "queued":
            raise InvalidInputError(f"a worker cannot begin phase {phase!r}", field="phase")

        def work(session: Session) -> bool:
            job = _job_row(session, job_id, tenant_id=None, lock=self.is_postgres)
            last = _last_phase(session, job_id)
            if not _may_begin_phase(job, last, phase=phase, worker_id=worker_id):
                return False
            now = utcnow()
            start = now
            if last is not None and last.ended_at is None:
                last.ended_at = now
            elif last is not None:
                start = utc(last.ended_at) or now
            session.add(
                JobPhaseRow(job_id=job_id, phase=phase, started_at=start, worker_id=worker_id)
            )
            return True

        return self._run(work, write=True)

    def end_job_phase(self, *, job_id: int, phase: str, worker_id: str) -> None:
        """End `phase` now if it is the job's open phase and `worker_id` runs it (the last phase,
        which no other follows: the recommendation); otherwise nothing."""

        def work(session: Session) -> None:
            session.execute(
                update(JobPhaseRow)
                .where(
                    JobPhaseRow.job_id == job_id,
                    JobPhaseRow.phase == phase,
                    JobPhaseRow.worker_id == worker_id,
                    JobPhaseRow.ended_at.is_(None),
                )
                .values(ended_at=utcnow())
            )

        self._run(work, write=True)

    def operations_snapshot(self, *, lease_seconds: float) -> OperationsSnapshot:
        """Totals across tenants for `/metrics`; `lease_seconds` (the workers' lease) turns a
        lease's expiry into the time of its last heartbeat."""
        now = utcnow()

        def work(session: Session) -> OperationsSnapshot:
            counted = session.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
            by_status: dict[str, int] = {str(status): int(n) for status, n in counted.all()}
            oldest = session.scalar(
                select(func.min(JobRow.created_at)).where(JobRow.status == "queued")
            )
            expiring = session.scalar(
                select(func.min(JobRow.lease_expires_at)).where(JobRow.status == "running")
            )
            running = session.scalar(
                select(func.count()).select_from(TrialRow).where(TrialRow.status == "running")
            )
            epochs = session.scalar(select(func.count()).select_from(TrialMetricRow))
            since_beat = 0.0
            if expiring is not None:
                beat = utc(expiring) - timedelta(seconds=lease_seconds)
                since_beat = max(0.0, (now - beat).total_seconds())
            return OperationsSnapshot(
                jobs_by_status=by_status,
                oldest_queued_s=(now - utc(oldest)).total_seconds() if oldest else 0.0,
                running_trials=int(running or 0),
                epochs_stored=int(epochs or 0),
                longest_since_heartbeat_s=since_beat,
            )

        return self._run(work, write=False)

    def job_timeline(self, job_id: int, *, tenant_id: int | None = None) -> JobTimeline:
        """Where the job's time went, in one read transaction: its phases in order and, per
        trial, its wall-clock, its own clock up to its last epoch (busy) and the rest (start-up).

        A phase still running counts up to now. Busy time is the largest elapsed_s among the
        trial's epochs, its first epoch's the smallest (the trial's clock only goes forward,
        across resumes too).
        """

        def work(session: Session) -> JobTimeline:
            job = _job_row(session, job_id, tenant_id=tenant_id)
            now = utcnow()
            phases = [
                job_phase_from_row(row, now)
                for row in session.scalars(
                    select(JobPhaseRow).where(JobPhaseRow.job_id == job_id).order_by(JobPhaseRow.id)
                )
            ]
            # (first, last) epoch's elapsed_s per trial.
            clocks: dict[int, tuple[float, float]] = {
                trial_id: (first, last)
                for trial_id, first, last in session.execute(
                    select(
                        TrialMetricRow.trial_id,
                        func.min(TrialMetricRow.elapsed_s),
                        func.max(TrialMetricRow.elapsed_s),
                    )
                    .join(TrialRow, TrialRow.id == TrialMetricRow.trial_id)
                    .where(TrialRow.job_id == job_id)
                    .group_by(TrialMetricRow.trial_id)
                )
            }
            trials = [
                trial_timing_from_row(row, *clocks.get(row.id, (0.0, 0.0)))
                for row in session.scalars(
                    select(TrialRow).where(TrialRow.job_id == job_id).order_by(TrialRow.id)
                )
            ]
            created = utc(job.created_at)
            finished = utc(job.finished_at)
            assert created is not None
            return JobTimeline(
                job_id=job.id,
                status=job.status,
                created_at=created,
                finished_at=finished,
                wall_clock_s=seconds_between(created, finished) if finished else None,
                phases=phases,
                phases_s=sum(p.seconds for p in phases),
                trials=trials,
                trials_start_up_s=sum(t.start_up_s or 0.0 for t in trials),
                trials_busy_s=sum(t.busy_s for t in trials),
            )

        return self._run(work, write=False)

    # ---- trials -------------------------------------------------------------------------------

    def create_trial(
        self,
        *,
        job_id: int,
        policy: str,
        schedule: dict[str, Any],
        search_config: dict[str, Any],
        seed: int,
        ray_trial_id: str | None = None,
        phase: str = "search",
    ) -> Trial:
        """Add a pending trial; the same (job, ray_trial_id) twice gives the first trial back.

        `phase` is "search" (a point of the search space) or "confirm" (a rerun with a new seed).

        Refused (ConflictError) once the job's cancellation was requested or the job finished:
        no trial starts after POST /v1/jobs/{id}/cancel has answered.
        """

        def work(session: Session) -> int:
            # A shared lock on the job row orders this against a concurrent cancel (PostgreSQL).
            status = session.scalar(
                select(JobRow.status)
                .where(JobRow.id == job_id)
                .with_for_update(read=True, skip_locked=False)
                if self.is_postgres
                else select(JobRow.status).where(JobRow.id == job_id)
            )
            if status is None:
                raise NotFoundError(f"no job with id {job_id}")
            if ray_trial_id is not None:
                existing = session.scalar(
                    select(TrialRow.id).where(
                        TrialRow.job_id == job_id, TrialRow.ray_trial_id == ray_trial_id
                    )
                )
                if existing is not None:
                    return existing
            if status not in ("queued", "running"):
                raise ConflictError(f"job {job_id} is {status}; it takes no new trials")
            values = {
                "job_id": job_id,
                "policy": policy,
                "schedule": schedule,
                "search_config": encode_floats(search_config),
                "seed": seed,
                "phase": phase,
                "status": "pending",
                "epochs_done": 0,
                "ray_trial_id": ray_trial_id,
                "created_at": utcnow(),
            }
            statement = self._insert(TrialRow).values(**values)
            if ray_trial_id is not None:
                statement = statement.on_conflict_do_nothing(
                    index_elements=["job_id", "ray_trial_id"]
                )
            trial_id = session.scalar(statement.returning(TrialRow.id))
            if trial_id is None:  # the same Ray trial was created concurrently
                trial_id = session.scalar(
                    select(TrialRow.id).where(
                        TrialRow.job_id == job_id, TrialRow.ray_trial_id == ray_trial_id
                    )
                )
            assert trial_id is not None
            return trial_id

        return self.get_trial(self._run(work, write=True))

    def update_trial_status(
        self,
        *,
        trial_id: int,
        status: str,
        error: str | None = None,
        node_id: str | None = None,
    ) -> Trial:
        if status not in TRIAL_STATUSES:
            raise InvalidInputError(f"unknown trial status {status!r}", field="status")

        def work(session: Session) -> None:
            row = session.get(TrialRow, trial_id, with_for_update=self.is_postgres)
            if row is None:
                raise NotFoundError(f"no trial with id {trial_id}")
            now = utcnow()
            row.status = status
            if error is not None:
                row.error = error
            if node_id is not None:
                row.node_id = node_id
            if status == "running" and row.started_at is None:
                row.started_at = now
            if status in FINISHED_TRIAL_STATUSES and row.finished_at is None:
                row.finished_at = now

        self._run(work, write=True)
        return self.get_trial(trial_id)

    def get_trial(self, trial_id: int, *, tenant_id: int | None = None) -> Trial:
        def work(session: Session) -> Trial:
            return trial_from_row(_trial_row(session, trial_id, tenant_id=tenant_id))

        return self._run(work, write=False)

    def list_trials(
        self,
        *,
        job_id: int,
        tenant_id: int | None = None,
        policy: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TrialPage:
        """A page of a job's trials, newest first."""
        before = decode_cursor(cursor)

        def work(session: Session) -> TrialPage:
            if tenant_id is not None:
                _job_row(session, job_id, tenant_id=tenant_id)  # 404 for another tenant's job
            # Plain rows rather than ORM objects: a page is only read, and skipping the identity
            # map keeps a request's allocations under the garbage collector's threshold (a busy
            # page of trials otherwise set off a collection per request, and the full ones were
            # its p99).
            query = (
                select(TrialRow.__table__)
                .where(TrialRow.job_id == job_id)
                .order_by(TrialRow.id.desc())
                .limit(limit + 1)
            )
            if policy is not None:
                query = query.where(TrialRow.policy == policy)
            if status is not None:
                query = query.where(TrialRow.status == status)
            if before is not None:
                query = query.where(TrialRow.id < before)
            rows = session.execute(query).all()
            # An empty page needs a second look: no such job, or no trials (yet)?
            if not rows and session.get(JobRow, job_id) is None:
                raise NotFoundError(f"no job with id {job_id}")
            more = len(rows) > limit
            rows = rows[:limit]
            return TrialPage(
                items=[trial_from_row(r) for r in rows],
                next_cursor=encode_cursor(rows[-1].id) if more else None,
            )

        return self._run(work, write=False)

    # ---- results ------------------------------------------------------------------------------

    def record_trial_results(self, *, trial_id: int, results: Sequence[TrialMetric]) -> Trial:
        """Store epochs of a trial (insert-or-ignore on (trial, epoch)) and, in the same
        transaction, advance the trial's epochs_done, last metric and best metric."""

        def work(session: Session) -> None:
            query = (
                select(TrialRow, JobRow.metric_name, JobRow.metric_mode)
                .join(JobRow, JobRow.id == TrialRow.job_id)
                .where(TrialRow.id == trial_id)
            )
            if self.is_postgres:
                query = query.with_for_update(of=TrialRow)
            found = session.execute(query).first()
            if found is None:
                raise NotFoundError(f"no trial with id {trial_id}")
            trial, metric_name, mode = found
            stored: set[int] = set()
            for start in range(0, len(results), _METRIC_ROWS_PER_INSERT):
                chunk = results[start : start + _METRIC_ROWS_PER_INSERT]
                statement = (
                    self._insert(TrialMetricRow)
                    .values([metric_row_values(trial_id, r) for r in chunk])
                    .on_conflict_do_nothing(index_elements=["trial_id", "epoch"])
                    .returning(TrialMetricRow.epoch)
                )
                stored.update(session.scalars(statement))
            new = sorted((r for r in results if r.epoch in stored), key=lambda r: r.epoch)
            if not new:
                return
            best = trial.best_metric
            for r in new:
                value = r.value(metric_name)
                if value is not None and is_better(value, best, mode):
                    best = value
            trial.best_metric = best
            latest = new[-1]
            if latest.epoch >= trial.epochs_done:
                trial.epochs_done = latest.epoch
                trial.last_metric, trial.last_metric_kind = split_float(latest.value(metric_name))

        self._run(work, write=True)
        return self.get_trial(trial_id)

    def list_trial_metrics(
        self, *, trial_id: int, tenant_id: int | None = None
    ) -> list[TrialMetric]:
        """One row per epoch, in epoch order."""

        def work(session: Session) -> list[TrialMetric]:
            _trial_row(session, trial_id, tenant_id=tenant_id)
            rows = session.scalars(
                select(TrialMetricRow)
                .where(TrialMetricRow.trial_id == trial_id)
                .order_by(TrialMetricRow.epoch)
            )
            return [trial_metric_from_row(r) for r in rows]

        return self._run(work, write=False)

    def record_trial_probes(self, *, trial_id: int, probes: Sequence[TrialProbe]) -> None:
        """Store cooldown probes of a trial, idempotently on (trial, epoch): a probe already
        stored keeps its values, except that a decision fills one still missing (a probe may
        reach SQL before early stopping has decided at its rung)."""
        merged = _merge_probes(probes)

        def work(session: Session) -> None:
            if session.get(TrialRow, trial_id) is None:
                raise NotFoundError(f"no trial with id {trial_id}")
            for start in range(0, len(merged), _METRIC_ROWS_PER_INSERT):
                chunk = merged[start : start + _METRIC_ROWS_PER_INSERT]
                statement = self._insert(TrialProbeRow).values(
                    [probe_row_values(trial_id, p) for p in chunk]
                )
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=["trial_id", "epoch"],
                        set_={"decision": statement.excluded.decision},
                        where=and_(
                            TrialProbeRow.decision.is_(None),
                            statement.excluded.decision.is_not(None),
                        ),
                    )
                )

        self._run(work, write=True)

    def list_trial_probes(self, trial_id: int, *, tenant_id: int | None = None) -> list[TrialProbe]:
        """The trial's cooldown probes, in epoch order."""

        def work(session: Session) -> list[TrialProbe]:
            _trial_row(session, trial_id, tenant_id=tenant_id)
            rows = session.scalars(
                select(TrialProbeRow)
                .where(TrialProbeRow.trial_id == trial_id)
                .order_by(TrialProbeRow.epoch)
            )
            return [trial_probe_from_row(r) for r in rows]

        return self._run(work, write=False)

    def set_restored_from_epoch(self, *, trial_id: int, epoch: int) -> None:
        """Record that the trial resumed from its checkpoint of `epoch`."""
        if epoch < 0:
            raise InvalidInputError(f"epoch must be >= 0, got {epoch}", field="epoch")

        def work(session: Session) -> None:
            row = session.get(TrialRow, trial_id)
            if row is None:
                raise NotFoundError(f"no trial with id {trial_id}")
            row.restored_from_epoch = epoch

        self._run(work, write=True)

    def job_rungs(self, job_id: int, *, tenant_id: int | None = None) -> list[JobRung]:
        """Every epoch at which the job's trials were probed, ascending, with each probed trial's
        metric at that epoch (`raw`), its probe's (`judged`) and the decision, best judged first.

        One query: the probes joined with their trials and outer-joined with the metric rows of
        the same (trial, epoch), whatever the number of trials. A horizon_halving job's rungs
        are its ladder instead (`_horizon_rungs`, one more query).
        """

        def work(session: Session) -> list[JobRung]:
            job = _job_row(session, job_id, tenant_id=tenant_id)
            rows = session.execute(
                select(TrialProbeRow, TrialRow.policy, TrialMetricRow)
                .join(TrialRow, TrialRow.id == TrialProbeRow.trial_id)
                .outerjoin(
                    TrialMetricRow,
                    and_(
                        TrialMetricRow.trial_id == TrialProbeRow.trial_id,
                        TrialMetricRow.epoch == TrialProbeRow.epoch,
                    ),
                )
                .where(TrialRow.job_id == job_id)
                .order_by(TrialProbeRow.epoch, TrialProbeRow.trial_id)
            )
            rungs: dict[int, list[RungTrial]] = {}
            for probe_row, policy, metric_row in rows:
                probe = trial_probe_from_row(probe_row)
                raw = (
                    trial_metric_from_row(metric_row).value(job.metric_name)
                    if metric_row is not None
                    else None
                )
                rungs.setdefault(probe.epoch, []).append(
                    RungTrial(
                        trial_id=probe_row.trial_id,
                        policy=policy,
                        raw=raw,
                        judged=probe.value(job.metric_name),
                        decision=probe.decision,
                    )
                )
            probed = [
                JobRung(epoch=epoch, trials=_best_judged_first(trials, job.metric_mode))
                for epoch, trials in rungs.items()
            ]
            halving = (job.spec.get("early_stopping") or {}).get("kind") == "horizon_halving"
            return probed + (self._horizon_rungs(session, job) if halving else [])

        return self._run(work, write=False)

    def _horizon_rungs(self, session: Session, job: JobRow) -> list[JobRung]:
        """A horizon_halving job's ladder: its rung trials (their search config names the
        rung) by rung, each judged by its final value, with the rung's decision on it."""
        rows = session.execute(
            select(TrialRow.__table__).where(TrialRow.job_id == job.id, TrialRow.phase == "search")
        )
        ladder: dict[tuple[int, int], list[RungTrial]] = {}
        for row in rows:
            trial = trial_from_row(row)
            config = trial.search_config
            if "rung" not in config:
                continue
            ladder.setdefault((int(config["rung"]), int(config["horizon_epochs"])), []).append(
                RungTrial(
                    trial_id=trial.id,
                    policy=trial.policy,
                    raw=trial.last_metric,
                    judged=rung_value(trial),
                    decision=config.get("decision"),
                )
            )
        return [
            JobRung(epoch=epochs, rung=rung, trials=_best_judged_first(trials, job.metric_mode))
            for (rung, epochs), trials in sorted(ladder.items())
        ]

    def record_rung_decisions(self, *, job_id: int, decisions: Mapping[str, str]) -> None:
        """A horizon_halving rung's decision on each of its trials, by trial key (ray_trial_id):
        "continue" or "stop", recorded in the trial's search_config; a stopped trial that
        completed its horizon ends `pruned`. Deciding again alike (a resumed job) changes
        nothing."""
        for decision in decisions.values():
            if decision not in get_args(RungDecision):
                raise InvalidInputError(f"unknown rung decision {decision!r}", field="decision")

        def work(session: Session) -> None:
            rows = session.scalars(
                select(TrialRow).where(
                    TrialRow.job_id == job_id, TrialRow.ray_trial_id.in_(list(decisions))
                )
            )
            for row in rows:
                decision = decisions[str(row.ray_trial_id)]
                row.search_config = {**row.search_config, "decision": decision}
                if decision == "stop" and row.status == "completed":
                    row.status = "pruned"

        self._run(work, write=True)

    def best_settings(
        self,
        *,
        tenant_id: int | None = None,
        workload: str | None = None,
        policy: str | None = None,
        metric: str | None = None,
    ) -> list[BestSetting]:
        """For each (workload, policy, metric) the best completed trial of a succeeded job of
        `tenant_id` (every tenant's, one row each, when None), with the optimizer it trained
        with (read from its job's spec: its arm's, else the job's)."""
        query = (
            select(BestSettingRow, JobRow.spec)
            .join(JobRow, JobRow.id == BestSettingRow.job_id)
            .order_by(
                BestSettingRow.tenant_id,
                BestSettingRow.workload,
                BestSettingRow.policy,
                BestSettingRow.metric_name,
                BestSettingRow.metric_mode,
            )
        )
        if tenant_id is not None:
            query = query.where(BestSettingRow.tenant_id == tenant_id)
        if workload is not None:
            query = query.where(BestSettingRow.workload == workload)
        if policy is not None:
            query = query.where(BestSettingRow.policy == policy)
        if metric is not None:
            query = query.where(BestSettingRow.metric_name == metric)

        def work(session: Session) -> list[BestSetting]:
            return [
                BestSetting(
                    workload=row.workload,
                    policy=row.policy,
                    metric=row.metric_name,
                    mode=row.metric_mode,
                    value=row.value,
                    job_id=row.job_id,
                    trial_id=row.trial_id,
                    schedule=row.schedule,
                    optimizer=JobSpec.model_validate(spec).optimizer_for(row.policy),
                    epochs=row.epochs,
                )
                for row, spec in session.execute(query)
            ]

        return self._run(work, write=False)

    def _publish_best_settings(self, session: Session, job: JobRow) -> None:
        """Fold a succeeded job's best trial per policy into best_settings (same transaction).

        The upsert only replaces a stored setting that the new one beats, so jobs finishing at
        the same time cannot overwrite a better result with a worse one.
        """
        signed = -TrialRow.best_metric if job.metric_mode == "max" else TrialRow.best_metric
        place = (
            func.row_number()
            .over(partition_by=TrialRow.policy, order_by=(signed, TrialRow.id))
            .label("place")
        )
        ranked = (
            select(TrialRow.id, TrialRow.policy, TrialRow.best_metric, TrialRow.schedule)
            .add_columns(TrialRow.epochs_done, place)
            .where(
                TrialRow.job_id == job.id,
                TrialRow.status == "completed",
                TrialRow.best_metric.is_not(None),
            )
            .subquery()
        )
        now = utcnow()
        for trial in session.execute(select(ranked).where(ranked.c.place == 1)):
            statement = self._insert(BestSettingRow).values(
                tenant_id=job.tenant_id,
                workload=job.workload,
                policy=trial.policy,
                metric_name=job.metric_name,
                metric_mode=job.metric_mode,
                value=trial.best_metric,
                job_id=job.id,
                trial_id=trial.id,
                schedule=trial.schedule,
                epochs=trial.epochs_done,
                updated_at=now,
            )
            beats = (
                statement.excluded.value > BestSettingRow.value
                if job.metric_mode == "max"
                else statement.excluded.value < BestSettingRow.value
            )
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[
                        "tenant_id",
                        "workload",
                        "policy",
                        "metric_name",
                        "metric_mode",
                    ],
                    set_={
                        "value": statement.excluded.value,
                        "job_id": statement.excluded.job_id,
                        "trial_id": statement.excluded.trial_id,
                        "schedule": statement.excluded.schedule,
                        "epochs": statement.excluded.epochs,
                        "updated_at": statement.excluded.updated_at,
                    },
                    where=beats,
                )
            )

    # ---- search plan, range test, recommendation ----------------------------------------------

    def set_search_spaces(self, *, job_id: int, spaces: Mapping[str, Mapping[str, Any]]) -> None:
        """Record the spaces the job's trials sample, per policy (shown on the job)."""

        def work(session: Session) -> None:
            row = _job_row(session, job_id, tenant_id=None)
            row.search_spaces = {policy: encode_floats(dict(s)) for policy, s in spaces.items()}

        self._run(work, write=True)

    def add_job_note(self, *, job_id: int, note: str) -> None:
        """Add `note` to the job's notes (once: a resumed job may say it again)."""

        def work(session: Session) -> None:
            row = _job_row(session, job_id, tenant_id=None, lock=self.is_postgres)
            notes = list(row.notes or [])
            if note not in notes:
                row.notes = [*notes, note]

        self._run(work, write=True)

    def set_planned_trials(self, *, job_id: int, planned: int) -> None:
        """Replace the job's planned trial count with what the worker will actually run."""
        if planned < 0:
            raise InvalidInputError(f"planned trials must be >= 0, got {planned}", field="planned")

        def work(session: Session) -> None:
            _job_row(session, job_id, tenant_id=None).planned_trials = planned

        self._run(work, write=True)

    def save_range_test(self, *, job_id: int, result: RangeTestResult) -> None:
        """Store the job's LR range test (one per job; a second save replaces the first).

        Losses may be NaN or infinite (the ramp's blow-up): the JSON arrays hold them as the
        strings "NaN", "Infinity" and "-Infinity", as metric dicts do.
        """
        values = {
            "status": "completed",
            "lr": [encode_float(v) for v in result.lr],
            "loss": [encode_float(v) for v in result.loss],
            "smoothed_loss": [encode_float(v) for v in result.smoothed_loss],
            # The row has no columns for how the ramp ran; they travel with the suggestion.
            "suggestion": {
                "bounds": result.suggestion.model_dump(mode="json"),
                "ramp": result.ramp,
                "stopped_early": result.stopped_early,
            },
            "error": None,
        }

        def work(session: Session) -> None:
            _job_row(session, job_id, tenant_id=None)
            now = utcnow()
            statement = self._insert(RangeTestRow).values(
                job_id=job_id, created_at=now, updated_at=now, **values
            )
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=["job_id"], set_={**values, "updated_at": now}
                )
            )

        self._run(work, write=True)

    def get_range_test(self, job_id: int, *, tenant_id: int | None = None) -> RangeTestResult:
        """The job's LR range test; NotFoundError when the job has none (yet)."""

        def work(session: Session) -> RangeTestRow:
            job = _job_row(session, job_id, tenant_id=tenant_id)
            row = session.scalar(
                select(RangeTestRow).where(
                    RangeTestRow.job_id == job_id, RangeTestRow.status == "completed"
                )
            )
            if row is None:
                raise NotFoundError(_no_range_test(job))
            return row

        row = self._run(work, write=False)
        assert row.suggestion is not None  # saved with every completed test
        lrs = [decode_float(v) for v in row.lr]
        return RangeTestResult(
            lr=lrs,
            loss=[decode_float(v) for v in row.loss],
            smoothed_loss=[decode_float(v) for v in row.smoothed_loss],
            suggestion=BoundSuggestion.model_validate(row.suggestion["bounds"]),
            ramp=row.suggestion["ramp"],
            iterations=len(lrs),
            stopped_early=bool(row.suggestion["stopped_early"]),
        )

    def recommendation_inputs(
        self, job_id: int, *, tenant_id: int | None = None
    ) -> RecommendationInputs:
        """The job, its trials and each trial's metric epoch by epoch, in one read transaction.

        The trials and their epochs come from one query (trials outer-joined with their metric
        rows), whatever the number of trials. `steps_per_epoch` is the step count after the
        first epoch (the largest over trials: a trial that diverged in epoch 1 stopped early).
        """

        def work(session: Session) -> RecommendationInputs:
            job_row = _job_row(session, job_id, tenant_id=tenant_id)
            job = self._jobs_from_rows(session, [job_row])[0]
            trials: dict[int, Trial] = {}
            values: dict[int, list[float]] = {}
            final_values: dict[int, dict[str, float]] = {}
            steps_per_epoch: int | None = None
            rows = session.execute(
                select(TrialRow, TrialMetricRow)
                .outerjoin(TrialMetricRow, TrialMetricRow.trial_id == TrialRow.id)
                .where(TrialRow.job_id == job_id)
                .order_by(TrialRow.id, TrialMetricRow.epoch)
            )
            for trial_row, metric_row in rows:
                if trial_row.id not in trials:
                    trials[trial_row.id] = trial_from_row(trial_row)
                    values[trial_row.id] = []
                if metric_row is None:
                    continue
                epoch = trial_metric_from_row(metric_row)
                value = epoch.value(job.spec.metric_name)
                values[trial_row.id].append(math.nan if value is None else value)
                # Epochs come in order: the last one's values stay.
                final_values[trial_row.id] = {
                    "train_loss": math.nan if epoch.train_loss is None else epoch.train_loss,
                    "val_loss": math.nan if epoch.val_loss is None else epoch.val_loss,
                    **epoch.metrics,
                }
                if epoch.epoch == 1:
                    steps_per_epoch = max(steps_per_epoch or 0, epoch.step) or None
            return RecommendationInputs(
                job=job,
                trials=list(trials.values()),
                metric_values=values,
                steps_per_epoch=steps_per_epoch,
                final_values=final_values,
            )

        return self._run(work, write=False)

    def save_recommendation(self, *, job_id: int, recommendation: Recommendation) -> None:
        """Store the job's recommendation (one per job, replaced by a later save)."""
        body = recommendation.model_dump(mode="json")
        # mode="json" keeps NaN as float; the row's JSON holds the strings the API writes.
        body = json_safe(body)

        def work(session: Session) -> None:
            _job_row(session, job_id, tenant_id=None)
            now = utcnow()
            values = {"final": recommendation.final, "body": body, "updated_at": now}
            statement = self._insert(RecommendationRow).values(
                job_id=job_id, created_at=now, **values
            )
            session.execute(statement.on_conflict_do_update(index_elements=["job_id"], set_=values))

        self._run(work, write=True)

    def get_saved_recommendation(
        self, job_id: int, *, tenant_id: int | None = None
    ) -> Recommendation | None:
        """The recommendation stored for the job (the worker saves the final one), or None."""

        def work(session: Session) -> dict[str, Any] | None:
            _job_row(session, job_id, tenant_id=tenant_id)
            return session.scalar(
                select(RecommendationRow.body).where(RecommendationRow.job_id == job_id)
            )

        body = self._run(work, write=False)
        return Recommendation.model_validate(body) if body is not None else None

    # ---- the dashboard ------------------------------------------------------------------------

    def job_curves(
        self, job_id: int, *, per_policy: int, max_points: int, tenant_id: int | None = None
    ) -> JobCurves:
        """The dashboard's view of a job in one read transaction, whatever its number of trials.

        Each policy's standing (trials by status, best and mean best metric, best trial id) comes
        from the trials table alone; the curves are those of every policy's `per_policy` best
        trials (by their denormalised best metric; trials with no epoch yet left out), each
        thinned to `max_points` epochs.
        """

        def work(session: Session) -> JobCurves:
            job = _job_row(session, job_id, tenant_id=tenant_id)
            mode = job.metric_mode
            by_status: dict[str, dict[str, int]] = {}
            best: dict[str, float] = {}
            sums: dict[str, float] = {}
            for policy, status, count, low, high, total in session.execute(
                select(
                    TrialRow.policy,
                    TrialRow.status,
                    func.count(),
                    func.min(TrialRow.best_metric),
                    func.max(TrialRow.best_metric),
                    func.sum(TrialRow.best_metric),
                )
                .where(TrialRow.job_id == job_id)
                .group_by(TrialRow.policy, TrialRow.status)
            ):
                by_status.setdefault(policy, {})[status] = count
                value = high if mode == "max" else low
                if value is not None and is_better(value, best.get(policy), mode):
                    best[policy] = value
                if total is not None:
                    sums[policy] = sums.get(policy, 0.0) + total
            with_metric: dict[str, int] = {
                policy: count
                for policy, count in session.execute(
                    select(TrialRow.policy, func.count())
                    .where(TrialRow.job_id == job_id, TrialRow.best_metric.is_not(None))
                    .group_by(TrialRow.policy)
                )
            }
            order = TrialRow.best_metric.desc() if mode == "max" else TrialRow.best_metric.asc()
            rank = (
                func.row_number()
                .over(partition_by=TrialRow.policy, order_by=(order.nulls_last(), TrialRow.id))
                .label("rank")
            )
            ranked = (
                select(TrialRow.id, rank)
                .where(TrialRow.job_id == job_id, TrialRow.epochs_done > 0)
                .subquery()
            )
            rows = list(
                session.scalars(
                    select(TrialRow)
                    .join(ranked, ranked.c.id == TrialRow.id)
                    .where(ranked.c.rank <= per_policy)
                    .order_by(TrialRow.policy, ranked.c.rank)
                )
            )
            epochs: dict[int, list[TrialMetricRow]] = {row.id: [] for row in rows}
            if rows:
                for metric_row in session.scalars(
                    select(TrialMetricRow)
                    .where(TrialMetricRow.trial_id.in_(list(epochs)))
                    .order_by(TrialMetricRow.trial_id, TrialMetricRow.epoch)
                ):
                    epochs[metric_row.trial_id].append(metric_row)
            best_trial: dict[str, int] = {}
            for row in rows:  # best first within a policy
                if row.best_metric is not None:
                    best_trial.setdefault(row.policy, row.id)
            standings = [
                PolicyStanding(
                    policy=policy,
                    trials=sum(counts.values()),
                    by_status=counts,
                    best_metric=best.get(policy),
                    best_trial_id=best_trial.get(policy),
                    mean_best_metric=(
                        sums.get(policy, 0.0) / with_metric[policy]
                        if with_metric.get(policy)
                        else None
                    ),
                )
                for policy, counts in by_status.items()
            ]
            return JobCurves(
                job_id=job.id,
                metric=job.metric_name,
                mode=mode,
                total_trials=sum(s.trials for s in standings),
                per_policy=per_policy,
                policies=sorted(standings, key=lambda s: _rank_key(s.best_metric, mode)),
                trials=[
                    trial_curve(row, epochs[row.id], metric=job.metric_name, max_points=max_points)
                    for row in rows
                ],
            )

        return self._run(work, write=False)

    # ---- helpers ------------------------------------------------------------------------------

    def _insert(self, model: Any) -> Any:
        """A dialect insert, so ON CONFLICT DO NOTHING reads the same on both databases."""
        return postgresql.insert(model) if self.is_postgres else sqlite.insert(model)

    def _jobs_from_rows(self, session: Session, rows: Sequence[JobRow]) -> list[Job]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        # (trials, first trial) per distinct error: the job's error summary.
        errors: dict[int, dict[str, tuple[int, int]]] = {i: {} for i in ids}
        # One query for both: trials by status and by error.
        for job_id, status, error, n, first in session.execute(
            select(
                TrialRow.job_id,
                TrialRow.status,
                TrialRow.error,
                func.count(),
                func.min(TrialRow.id),
            )
            .where(TrialRow.job_id.in_(ids))
            .group_by(TrialRow.job_id, TrialRow.status, TrialRow.error)
        ):
            counts[job_id][status] = counts[job_id].get(status, 0) + n
            if error is not None:
                seen, earliest = errors[job_id].get(error, (0, first))
                errors[job_id][error] = (seen + n, min(earliest, first))
        summaries = {
            job_id: sorted(
                (
                    TrialErrorCount(error=error, trials=n, first_trial_id=first)
                    for error, (n, first) in found.items()
                ),
                key=lambda e: (-e.trials, e.first_trial_id),
            )
            for job_id, found in errors.items()
        }
        tokens = _token_refs(
            session,
            {r.submitted_by_token_id for r in rows} | {r.cancelled_by_token_id for r in rows},
        )
        jobs = [job_from_row(r, counts[r.id], summaries[r.id], tokens) for r in rows]
        return self._with_leaders(session, jobs)

    def _with_leaders(self, session: Session, jobs: list[Job]) -> list[Job]:
        """Each job with its best so far: the recommendation's leader (`leader`), from its
        counted trials' last metric (the only value the ranking reads), in one query of the
        columns it needs (whole ORM rows and `Trial`s cost ten times as much, on every read of
        a job)."""
        trials: dict[int, list[TrialFacts]] = {job.id: [] for job in jobs}
        last: dict[int, list[float]] = {}
        for row in session.execute(
            select(
                TrialRow.id,
                TrialRow.job_id,
                TrialRow.policy,
                TrialRow.schedule,
                # Stored with non-finite floats as strings; the evidence reads its integers only.
                TrialRow.search_config,
                TrialRow.seed,
                TrialRow.phase,
                TrialRow.status,
                TrialRow.last_metric,
                TrialRow.last_metric_kind,
            )
            .where(
                TrialRow.job_id.in_(list(trials)),
                TrialRow.status.in_(COUNTED_TRIAL_STATUSES),
            )
            .order_by(TrialRow.id)
        ):
            trials[row.job_id].append(row)
            value = join_float(row.last_metric, row.last_metric_kind)
            last[row.id] = [math.nan if value is None else value]
        found = []
        for job in jobs:
            inputs = RecommendationInputs(
                job=job, trials=trials[job.id], metric_values=last, steps_per_epoch=None
            )
            found.append(job.model_copy(update={"best": leader(inputs)}))
        return found

    def _run(self, work: Callable[[Session], T], *, write: bool) -> T:
        """Run `work` in one transaction: commit, or roll back and translate the error.

        Lock timeouts (SQLite) and serialization failures or deadlocks (PostgreSQL) are retried
        with a bounded, jittered exponential backoff; everything else fails at once.
        """
        for attempt in range(1, self.retry_attempts + 1):
            try:
                with self.engine.connect() as connection:
                    if write:
                        connection.execution_options(**{WRITE_OPTION: True})
                    with (
                        Session(bind=connection, expire_on_commit=False) as session,
                        session.begin(),
                    ):
                        return work(session)
            except IntegrityError as error:
                raise ConflictError(
                    f"the change conflicts with stored data: {_first_line(error)}"
                ) from error
            except DataError as error:
                # A value the database cannot hold (a NUL character, a number out of range):
                # the client's input, not the server's fault.
                raise InvalidInputError(
                    f"the database cannot store a value of this request: {_first_line(error)}"
                ) from error
            except DBAPIError as error:
                if _retryable(error) and attempt < self.retry_attempts:
                    delay = min(1.0, self.retry_base_s * 2**attempt) * random.uniform(0.5, 1.5)
                    log.info("retrying a transaction in %.3fs: %s", delay, _first_line(error))
                    time.sleep(delay)
                    continue
                raise StorageError(f"the database refused the request: {_first_line(error)}") from (
                    error
                )
            except SQLAlchemyError as error:
                raise StorageError(f"database error: {_first_line(error)}") from error
        raise AssertionError("unreachable: the last attempt returns or raises")


# ---- helpers of the queries above -----------------------------------------------------------


def _no_range_test(job: JobRow) -> str:
    if job.kind == "search" and job.spec.get("lr_bounds") != "auto":
        return (
            f'job {job.id} has no LR range test: it is a search job without lr_bounds "auto" '
            '(submit a range_test job, or a search job with lr_bounds "auto")'
        )
    if job.status in ("failed", "cancelled"):
        return f"job {job.id} has no LR range test: it {job.status} before the test finished"
    return (
        f"job {job.id} has no LR range test yet: it is {job.status}; the worker stores the test "
        "when it has run"
    )


def _token_refs(session: Session, token_ids: set[int | None]) -> dict[int, TokenRef]:
    """The tokens of these ids (None: no token), by id, with their labels."""
    wanted = [i for i in token_ids if i is not None]
    if not wanted:
        return {}
    rows = session.execute(
        select(ApiTokenRow.id, ApiTokenRow.label).where(ApiTokenRow.id.in_(wanted))
    )
    return {row.id: TokenRef(id=row.id, label=row.label) for row in rows}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _merge_probes(probes: Sequence[TrialProbe]) -> list[TrialProbe]:
    """One probe per epoch, as the table keeps them: the first reported, with the first decision
    (PostgreSQL refuses an upsert that touches the same row twice in one statement)."""
    by_epoch: dict[int, TrialProbe] = {}
    for probe in probes:
        first = by_epoch.get(probe.epoch)
        if first is None:
            by_epoch[probe.epoch] = probe
        elif first.decision is None and probe.decision is not None:
            by_epoch[probe.epoch] = first.model_copy(update={"decision": probe.decision})
    return list(by_epoch.values())


def rung_value(trial: Trial) -> float | None:
    """What a horizon_halving rung judges its trial by: the final value of the job's metric,
    once the trial has trained its whole horizon (None when it failed or diverged)."""
    if trial.status not in ("completed", "pruned"):
        return None
    if trial.epochs_done < int(trial.search_config.get("horizon_epochs", 0)):
        return None
    return trial.last_metric


def _best_judged_first(trials: list[RungTrial], mode: str) -> list[RungTrial]:
    """Best `judged` first under `mode`; a missing or non-finite value last; ties by trial id."""
    return sorted(trials, key=lambda trial: (_rank_key(trial.judged, mode), trial.trial_id))


def _requeue(session: Session, where: Any, now: datetime) -> list[int]:
    """Put the running jobs `where` selects back in the queue; their ids. The phase of the
    worker that ran them ends; each waits for a worker again."""
    requeued = list(
        session.scalars(
            update(JobRow)
            .where(where)
            .values(status="queued", worker_id=None, lease_expires_at=None)
            .returning(JobRow.id)
        )
    )
    if requeued:
        _end_open_phases(session, requeued, now)
        session.add_all(
            JobPhaseRow(job_id=job_id, phase="queued", started_at=now) for job_id in requeued
        )
    return requeued


def _end_open_phases(session: Session, job_ids: Sequence[int], at: datetime) -> None:
    """End the jobs' open phases at `at` (the job ended, or a worker claimed it)."""
    session.execute(
        update(JobPhaseRow)
        .where(JobPhaseRow.job_id.in_(list(job_ids)), JobPhaseRow.ended_at.is_(None))
        .values(ended_at=at)
    )


def _last_phase(session: Session, job_id: int) -> JobPhaseRow | None:
    return session.scalar(
        select(JobPhaseRow)
        .where(JobPhaseRow.job_id == job_id)
        .order_by(JobPhaseRow.id.desc())
        .limit(1)
    )


def _may_begin_phase(job: JobRow, last: JobPhaseRow | None, *, phase: str, worker_id: str) -> bool:
    """The worker holding a running job may begin any of its phases; once the job succeeded,
    the worker it ended with may add its recommendation, once."""
    if job.status in ("running", "cancelling"):
        return job.worker_id == worker_id
    return (
        job.status == "succeeded"
        and phase == "recommendation"
        and last is not None
        and last.phase != "recommendation"
        and last.worker_id == worker_id
    )


def _finish_expired_cancellations(session: Session, now: datetime) -> int:
    """cancelling jobs whose worker stopped heartbeating -> cancelled, and their unfinished
    trials -> failed, as the worker records a trial that cancellation stopped."""
    expired = and_(JobRow.lease_expires_at.is_not(None), JobRow.lease_expires_at < now)
    cancelled = list(
        session.scalars(
            update(JobRow)
            .where(JobRow.status == "cancelling", expired)
            .values(status="cancelled", worker_id=None, lease_expires_at=None, finished_at=now)
            .returning(JobRow.id)
        )
    )
    if cancelled:
        _end_open_phases(session, cancelled, now)
        session.execute(
            update(TrialRow)
            .where(TrialRow.job_id.in_(cancelled), TrialRow.status.in_(("pending", "running")))
            .values(status="failed", error=CANCELLED_TRIAL_ERROR, finished_at=now)
        )
    return len(cancelled)


def _job_row(session: Session, job_id: int, *, tenant_id: int | None, lock: bool = False) -> JobRow:
    """The job's row; NotFoundError when there is none or it is another tenant's (same words,
    so a caller cannot tell which ids other tenants own)."""
    row = session.get(JobRow, job_id, with_for_update=lock)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFoundError(f"no job with id {job_id}")
    return row


def _trial_row(session: Session, trial_id: int, *, tenant_id: int | None) -> TrialRow:
    """The trial's row; a trial belongs to its job's tenant."""
    if tenant_id is None:
        row = session.get(TrialRow, trial_id)
    else:
        row = session.scalar(
            select(TrialRow)
            .join(JobRow, JobRow.id == TrialRow.job_id)
            .where(TrialRow.id == trial_id, JobRow.tenant_id == tenant_id)
        )
    if row is None:
        raise NotFoundError(f"no trial with id {trial_id}")
    return row


def _retryable(error: DBAPIError) -> bool:
    if isinstance(error, OperationalError) and any(
        text_ in str(error.orig) for text_ in _SQLITE_BUSY
    ):
        return True
    return getattr(error.orig, "sqlstate", None) in _RETRY_SQLSTATES


def _first_line(error: BaseException) -> str:
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _rank_key(value: float | None, mode: str) -> float:
    """Best first under `mode`; no value (or a non-finite one) last."""
    if value is None or not math.isfinite(value):
        return math.inf
    return -value if mode == "max" else value
