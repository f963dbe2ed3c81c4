"""The source side of a precopy migration: one job, one thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import LivemigError
from ..machine import Machine, RunState
from ..memory import PAGE_SIZE
from .channel import Channel, connect
from .pages import CHUNK_PAGES, DOWNTIME_CHUNK_PAGES, ChunkRecords
from .params import Settings
from .stats import JobTimes, RamStats, RateLimiter
from .tracking import tracker_for
from .wire import TAG_END, TAG_STATE, TAG_SYNC, Header, blob_record, run_record

log = logging.getLogger(__name__)

ACTIVE_STATES = ("setup", "active", "cancelling")


class Cancelled(Exception):
    """migrate_cancel was asked for."""


def machine_description(machine: Machine) -> dict[str, Any]:
    """What both sides must agree on, independent of the accelerator."""
    return {"machine": "pc", "ram-size": machine.ram.size, "vcpus": 1,
            "devices": sorted(dev.name for dev in machine.bus.devices)}


def _describe(err: Exception) -> str:
    """error-desc for query-migrate, in QEMU's wording for socket errors."""
    if isinstance(err, OSError) and not isinstance(err, LivemigError):
        return f"Unable to write to socket: {err.strerror or err}"
    return str(err)


class OutgoingMigration:
    def __init__(self, machine: Machine, settings: Settings, uri: str,
                 emit: Callable[[str, dict[str, Any] | None], None],
                 take_fd: Callable[[str], int]) -> None:
        self.machine = machine
        self.settings = settings
        self.uri = uri
        self._emit = emit
        self._take_fd = take_fd
        self.status = "none"
        self.error: str | None = None
        self.stats = RamStats(total=machine.ram.size)
        self.times = JobTimes()
        self.limiter = RateLimiter(settings.params["max-bandwidth"])
        self._cancel = threading.Event()
        self._channel: Channel | None = None
        self._stopped_guest = False
        self._thread = threading.Thread(target=self._run, name="live_migration", daemon=True)

    # --- control (any thread) ---------------------------------------------------
    def start(self) -> None:
        self._set_status("setup")
        self._thread.start()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES

    def cancel(self) -> None:
        if not self.active:
            return
        self._set_status("cancelling")
        self._cancel.set()
        self.limiter.wake()
        if self._channel is not None:
            self._channel.abort()  # the job thread closes it

    def parameters_changed(self) -> None:
        self.limiter.limit = self.settings.params["max-bandwidth"]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _set_status(self, status: str) -> None:
        self.status = status
        if self.settings.caps["events"]:
            self._emit("MIGRATION", {"status": status})

    # --- the job ----------------------------------------------------------------------
    def _run(self) -> None:
        tracker = None
        try:
            self._channel = connect(self.uri, self._take_fd)
            self._check_cancel()
            header = Header(PAGE_SIZE, self.machine.ram.size, machine_description(self.machine))
            self._send([header.encode()], precopy=True)
            tracker = tracker_for(self.machine)
            tracker.start()
            self._synced(first=True)
            self.times.setup_ms = self.times.total_ms()
            self._set_status("active")
            dirty = np.ones(self.machine.ram.pages, dtype=bool)
            while True:
                started, sent_before = time.monotonic(), self.stats.transferred
                self._send_pages(dirty, limited=True)
                dirty = tracker.sync()
                self._synced()
                elapsed = max(time.monotonic() - started, 1e-6)
                if self._converged(dirty, self.stats.transferred - sent_before, elapsed):
                    break
            self._complete(tracker, dirty)
        except Cancelled:
            self._finish("cancelled")
        except (LivemigError, OSError, EOFError) as err:
            if self._cancel.is_set():
                self._finish("cancelled")
            else:
                self.error = _describe(err)
                log.warning("migration failed: %s", self.error)
                self._finish("failed")
        finally:
            if tracker is not None:
                try:
                    tracker.stop()
                except LivemigError as err:
                    log.warning("could not stop dirty tracking: %s", err)
            if self._channel is not None:
                self._channel.close()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def _send(self, buffers: list[bytes | memoryview], precopy: bool) -> None:
        assert self._channel is not None
        sent = self._channel.send(buffers)
        self.stats.transferred += sent
        if precopy:
            self.stats.precopy_bytes += sent
        else:
            self.stats.downtime_bytes += sent

    def _send_pages(self, dirty: np.ndarray, limited: bool) -> None:
        """Send the pages in ``dirty``. ``limited``: a live pass (rate-limited,
        zero pages detected); otherwise the downtime pass, where speed is all:
        pages just written are hardly ever zero, so they go as they are."""
        pages = self.machine.ram.pages
        remaining = int(dirty.sum())
        chunk = CHUNK_PAGES if limited else DOWNTIME_CHUNK_PAGES
        for first in range(0, pages, chunk):
            self._check_cancel()
            mask = dirty[first:first + chunk]
            count = int(mask.sum())
            if not count:
                continue
            records = ChunkRecords(self.machine.ram, first, mask, detect_zero=limited)
            if limited:
                self.limiter.wait(records.nbytes)
            self._send(records.buffers, precopy=limited)
            self.stats.duplicate += records.zero
            self.stats.normal += records.normal
            remaining -= count
            self.stats.remaining = remaining * PAGE_SIZE

    def _synced(self, first: bool = False) -> None:
        self.stats.dirty_sync_count += 1
        count = self.stats.dirty_sync_count
        if not first:
            self._send([run_record(TAG_SYNC, count, 0)], precopy=True)
        if self.settings.caps["events"]:
            self._emit("MIGRATION_PASS", {"pass": count})

    def _converged(self, dirty: np.ndarray, sent: int, elapsed: float) -> bool:
        """Switch over once what is left fits in downtime-limit at the measured rate."""
        dirty_pages = int(dirty.sum())
        remaining = dirty_pages * PAGE_SIZE
        bandwidth = sent / elapsed  # bytes/s
        self.stats.remaining = remaining
        self.stats.mbps = bandwidth * 8 / 1e6
        self.stats.dirty_pages_rate = int(dirty_pages / elapsed)
        self.stats.pages_per_second = int(sent / PAGE_SIZE / elapsed)
        expected = remaining / bandwidth * 1000 if bandwidth > 0 else float("inf")
        self.times.expected_downtime_ms = int(min(expected, 2**62))
        return expected <= self.settings.params["downtime-limit"]

    def _complete(self, tracker: Any, pending: np.ndarray) -> None:
        """Stop the guest and send what is left: ``pending`` (found dirty by
        the last sync, not yet sent) plus whatever was written since."""
        machine = self.machine
        with machine.lock:
            was_running = machine.running
            if was_running:
                machine.stop(RunState.FINISH_MIGRATE)
                self._stopped_guest = True
            else:
                machine.pause_vcpus()
        stopped_at = time.monotonic()
        dirty = pending | tracker.sync()
        self._synced()
        self._send_pages(dirty, limited=False)
        state = {"cpu": machine.save_cpu_state(), "devices": machine.save_device_states(),
                 "running": was_running}
        self._send([blob_record(TAG_STATE, state), bytes([TAG_END])], precopy=False)
        self.stats.remaining = 0
        self.times.downtime_ms = int((time.monotonic() - stopped_at) * 1000)
        self._finish("completed")

    def _finish(self, status: str) -> None:
        self.times.end = time.monotonic()
        machine = self.machine
        with machine.lock:
            if status == "completed":
                machine.set_runstate(RunState.POSTMIGRATE)
            elif self._stopped_guest:
                machine.resume()  # the source keeps the guest: it runs on here
                self._stopped_guest = False
        self._set_status(status)

    # --- query-migrate ---------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"status": self.status, "blocked": False}
        if self.status == "setup":
            return info
        info["setup-time"] = self.times.setup_ms
        info["total-time"] = self.times.total_ms()
        if self.status == "completed":
            info["downtime"] = self.times.downtime_ms or 0
        elif self.active:
            info["expected-downtime"] = self.times.expected_downtime_ms
        if self.error is not None and self.status == "failed":
            info["error-desc"] = self.error
        if self.status != "failed" or self.stats.transferred:
            info["ram"] = self.stats.to_qmp()
        return info

