"""The job's statistics, in QEMU's ``query-migrate`` shape and units."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..memory import PAGE_SIZE


@dataclass
class RamStats:
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    duplicate: int = 0
    normal: int = 0
    dirty_pages_rate: int = 0
    mbps: float = 0.0
    dirty_sync_count: int = 0
    pages_per_second: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    postcopy_bytes: int = 0
    postcopy_requests: int = 0

    def to_qmp(self) -> dict[str, Any]:
        return {
            "transferred": self.transferred,
            "remaining": self.remaining,
            "total": self.total,
            "duplicate": self.duplicate,
            "skipped": 0,
            "normal": self.normal,
            "normal-bytes": self.normal * PAGE_SIZE,
            "dirty-pages-rate": self.dirty_pages_rate,
            "mbps": round(self.mbps, 3),
            "dirty-sync-count": self.dirty_sync_count,
            "postcopy-requests": self.postcopy_requests,
            "page-size": PAGE_SIZE,
            "multifd-bytes": 0,
            "pages-per-second": self.pages_per_second,
            "precopy-bytes": self.precopy_bytes,
            "downtime-bytes": self.downtime_bytes,
            "postcopy-bytes": self.postcopy_bytes,
            "dirty-sync-missed-zero-copy": 0,
        }


@dataclass
class JobTimes:
    start: float = field(default_factory=time.monotonic)
    setup_ms: int = 0
    end: float | None = None
    downtime_ms: int | None = None
    expected_downtime_ms: int = 0

    def total_ms(self) -> int:
        end = self.end if self.end is not None else time.monotonic()
        return int((end - self.start) * 1000)


class RateLimiter:
    """max-bandwidth as QEMU applies it: a byte budget per 100 ms window.

    ``limit`` may change while a migration runs; 0 means unlimited.
    """

    WINDOW = 0.1

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window_start = time.monotonic()
        self._used = 0
        self._cancel = threading.Event()

    def wait(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be sent; sleep while over budget."""
        if self.limit <= 0:
            return
        now = time.monotonic()
        if now - self._window_start >= self.WINDOW:
            self._window_start, self._used = now, 0
        budget = self.limit * self.WINDOW
        if self._used >= budget:
            self._cancel.wait(self._window_start + self.WINDOW - now)
            self._window_start, self._used = time.monotonic(), 0
        self._used += nbytes

    def wake(self) -> None:
        self._cancel.set()
