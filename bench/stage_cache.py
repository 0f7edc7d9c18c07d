"""A benchmark stage's cache: one JSON line per finished task, so a stage cut short (a session
ends, a machine goes away) resumes where it stopped, and `--write` reports from whatever is
there. Tasks are keyed by their content (`search_workloads.digest`), so changing a stage's plan
reuses every task that did not change. Lines are appended and flushed one at a time: a line cut
by a kill is skipped on reading."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StageCache:
    """The finished tasks of one stage (e.g. the oracle of mnist1d-mlp) and its sessions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, Any] = {}
        self.session_seconds: list[float] = []
        # A line cut by a kill has no newline: the next entry starts a line of its own.
        self._torn = False
        if path.exists():
            text = path.read_text()
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed session
                if "session_seconds" in entry:
                    self.session_seconds.append(entry["session_seconds"])
                else:
                    self.results[entry["key"]] = entry["result"]

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def get(self, key: str) -> Any:
        return self.results.get(key)

    def add(self, key: str, result: Any) -> None:
        self.results[key] = result
        self._append({"key": key, "result": result})

    @property
    def seconds(self) -> float:
        """Wall-clock over every session that worked on this stage."""
        return sum(self.session_seconds)

    def missing(self, keys: list[str]) -> list[str]:
        return [key for key in keys if key not in self.results]

    @contextmanager
    def session(self) -> Iterator[None]:
        """Time one run of the stage; its seconds are recorded even when it is interrupted."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.session_seconds.append(seconds)
            self._append({"session_seconds": seconds})

    def _append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(("\n" if self._torn else "") + json.dumps(entry) + "\n")
            file.flush()
        self._torn = False
