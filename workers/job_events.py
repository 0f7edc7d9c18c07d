"""One log line per step of a job's life, for the operator reading a server's log: submitted,
claimed, planned, the range test's bounds, each phase's start and end (the search with its trial
counts), the recommendation, failed, cancelled.

Logger `lrtune.jobs`; each record carries `job_id`, which the JSON log format
(LRTUNE_LOG_FORMAT=json) writes as a field of its own.
"""

from __future__ import annotations

import logging

log = logging.getLogger("lrtune.jobs")


def job_event(job_id: int, message: str, *args: object) -> None:
    log.info("job %s " + message, job_id, *args, extra={"job_id": job_id})
