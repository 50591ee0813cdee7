"""Throttled progress reporting of long transfers into the Dagster run log."""
from __future__ import annotations

import threading
import time

from dagster import DagsterLogManager

MIB = 1 << 20


class LoggedProgress:
    """A transfer progress callback that logs bytes done every `interval` seconds (thread-safe)."""

    def __init__(self, log: DagsterLogManager, label: str, total_bytes: int, interval: float = 2.0) -> None:
        self._log = log
        self._label = label
        self._total = total_bytes
        self._interval = interval
        self._done = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, delta: int) -> None:
        with self._lock:
            self._done += delta
            now = time.monotonic()
            if now - self._last < self._interval:
                return
            self._last = now
            done = self._done
        self._log.info(f"{self._label}: {done / MIB:.1f} of {self._total / MIB:.1f} MiB fetched")
