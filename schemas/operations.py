"""What an operator's metrics read from the database: totals across tenants, no job's data."""

from __future__ import annotations

from pydantic import BaseModel, Field


class OperationsSnapshot(BaseModel):
    """The service's state now, as `/metrics` reports it."""

    jobs_by_status: dict[str, int] = Field(description="Jobs in each status, every tenant's.")
    oldest_queued_s: float = Field(
        description="How long the oldest queued job has waited (0: none)."
    )
    running_trials: int
    epochs_stored: int = Field(description="Every epoch ever stored: a counter.")
    longest_since_heartbeat_s: float = Field(
        description="The running job whose worker was heard from longest ago: seconds since its "
        "last heartbeat (0: no running job)."
    )
