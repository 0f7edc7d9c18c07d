"""How values the database or JSON cannot hold as they are get stored: non-finite floats (a value
column plus its `FloatKind`, or the API's "NaN"/"Infinity" strings inside JSON), page cursors and
timestamps read back from SQLite."""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime
from typing import Any

from lrtune.service.errors import InvalidInputError
from lrtune.service.models import FloatKind

_CURSOR_PREFIX = "id:"
# Ids are 32-bit integers in SQL; anything larger names no row (and PostgreSQL would refuse it).
MAX_ID = 2**31 - 1


def split_float(value: float | None) -> tuple[float | None, int]:
    """A float as (SQL value, kind): NaN and +-inf become NULL plus their kind."""
    if value is None:
        return None, FloatKind.FINITE
    if math.isnan(value):
        return None, FloatKind.NAN
    if math.isinf(value):
        return None, FloatKind.POS_INF if value > 0 else FloatKind.NEG_INF
    return value, FloatKind.FINITE


def join_float(value: float | None, kind: int) -> float | None:
    """The float `split_float` split: NaN and +-inf back from their kind."""
    if kind == FloatKind.NAN:
        return math.nan
    if kind == FloatKind.POS_INF:
        return math.inf
    if kind == FloatKind.NEG_INF:
        return -math.inf
    return value


_NON_FINITE_TEXT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_floats(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: non-finite floats become "NaN", "Infinity", "-Infinity"."""
    return {k: encode_float(v) for k, v in values.items()}


def encode_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def decode_float(value: Any) -> float:
    return _NON_FINITE_TEXT[value] if isinstance(value, str) else float(value)


def json_safe(value: Any) -> Any:
    """A JSON document with every non-finite float spelled as the API spells it."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return encode_float(value)


def decode_floats(values: dict[str, Any]) -> dict[str, Any]:
    # Only the three spellings encode_floats writes are numbers; other strings (a sampled
    # "triangular") stay strings.
    return {k: _NON_FINITE_TEXT.get(v, v) if isinstance(v, str) else v for k, v in values.items()}


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(raw)
        value = int(raw.removeprefix(_CURSOR_PREFIX))
        if not 0 < value <= MAX_ID:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInputError(
            "cursor is not one this API gave out; pass the next_cursor of the previous page",
            field="cursor",
        ) from None
    return value


def utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every timestamp lrtune stores is UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
