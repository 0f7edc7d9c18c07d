"""lrtune's own errors and the one table that maps them to HTTP statuses."""

from __future__ import annotations


class LrtuneError(Exception):
    """Base of every error the store and the service raise on purpose."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFoundError(LrtuneError):
    code = "not_found"


class ConflictError(LrtuneError):
    """The request contradicts the current state (cancel a finished job, reuse a key)."""

    code = "conflict"


class InvalidInputError(LrtuneError):
    """Input that passed the schema but not a check that needs more context."""

    code = "validation_error"


class LimitExceededError(LrtuneError):
    """A request bigger than this server or tenant allows (epochs, trials, preview steps)."""

    code = "limit_exceeded"


class ConcurrencyLimitError(LimitExceededError):
    """Too many of the tenant's jobs are active; the same request may succeed later (429)."""

    code = "too_many_jobs"


class PayloadTooLargeError(LimitExceededError):
    code = "payload_too_large"


class UnauthorizedError(LrtuneError):
    """No credentials, or ones that are unknown or revoked (401 with WWW-Authenticate)."""

    code = "unauthorized"


class ForbiddenError(LrtuneError):
    """Known caller, refused action."""

    code = "forbidden"


class StorageError(LrtuneError):
    """The database could not be reached or refused the work; retrying later may succeed."""

    code = "storage_unavailable"


class SchemaOutdatedError(StorageError):
    code = "schema_outdated"


HTTP_STATUS: dict[type[LrtuneError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
    InvalidInputError: 422,
    LimitExceededError: 422,
    ConcurrencyLimitError: 429,
    PayloadTooLargeError: 413,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    StorageError: 503,
    SchemaOutdatedError: 503,
}


def http_status(error: LrtuneError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400
