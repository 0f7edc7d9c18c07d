"""How the server's processes log: lrtune's own lines (one per step of each job, logger
`lrtune.jobs`), the libraries' warnings, the API's access log without its successful GETs; as
text, or with LRTUNE_LOG_FORMAT=json as one JSON object per line, job and trial ids as fields."""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
from typing import Any

TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"
# Fields a record may carry (`extra=`), written as fields of their own in the JSON format.
ID_FIELDS = ("job_id", "trial_id")


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the ids it carries."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({f: getattr(record, f) for f in ID_FIELDS if hasattr(record, f)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class SkipSuccessfulGets:
    """uvicorn's access log without the GETs that succeeded: a dashboard or `lrtune watch`
    polls every second or two, and those lines would bury what happens."""

    def filter(self, record: Any) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # client, method, path, version, status
            _, method, _, _, status = args
            return not (method == "GET" and int(status) < 400)
        return True


def configure_worker(log_format: str) -> None:
    """`lrtune worker`: lrtune's lines at INFO, the libraries' from WARNING; no Ray Tune
    experiment table or "View detailed results" (its new output engine prints them whatever
    the verbosity), no Alembic plugin and context lines, no Ray Tune file-writing notes."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name in ("alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def api_log_config(log_format: str, *, access_log: bool) -> dict[str, Any]:
    """uvicorn's logging configuration for the API, with lrtune's own loggers added."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["lrtune"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    if log_format == "json":
        config["formatters"] = {"default": {"()": JsonLines}, "access": {"()": JsonLines}}
    if not access_log:
        config["filters"] = {"skip_successful_gets": {"()": SkipSuccessfulGets}}
        config["handlers"]["access"]["filters"] = ["skip_successful_gets"]
    return config
