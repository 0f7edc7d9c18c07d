"""lrtune.client: a typed Python client for the lrtune REST API, and the CLI commands on it."""

from lrtune.client.api import ApiError, LrtuneClient

__all__ = ["ApiError", "LrtuneClient"]
