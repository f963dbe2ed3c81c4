"""The source side of a migration: one job, one thread.

Precopy passes run until the rest fits in ``downtime-limit``, or, with the
``postcopy-ram`` capability, until ``migrate-start-postcopy`` asks for the
switch: then the guest stops here, its state and the list of stale pages go
over, the guest runs on at the destination, and postcopy_source takes over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import LivemigError, MigrationError
from ..machine import Machine, RunState
from ..memory import PAGE_SIZE
from .channel import Channel, connect
from .pages import CHUNK_PAGES, DOWNTIME_CHUNK_PAGES, ChunkRecords, runs
from .params import Settings
from .postcopy_source import PostcopySource
from .stats import JobTimes, RamStats, RateLimiter
from .tracking import tracker_for
from .wire import (
    COUNT,
    RANGE,
    TAG_DISCARD,
    TAG_END,
    TAG_POSTCOPY_ADVISE,
    TAG_POSTCOPY_RUN,
    TAG_STATE,
    TAG_SYNC,
    Header,
    blob_record,
    run_record,
)

log = logging.getLogger(__name__)

ACTIVE_STATES = ("setup", "active", "cancelling", "postcopy-active", "postcopy-paused",
                 "postcopy-recover")
POSTCOPY_STATES = ("postcopy-active", "postcopy-paused", "postcopy-recover")


class Cancelled(Exception):
    """migrate_cancel was asked for."""


class SwitchToPostcopy(Exception):
    """migrate-start-postcopy was asked for and the first pass is done."""


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
                 take_fd: Callable[[str], int], start_postcopy: bool = False) -> None:
        self.machine = machine
        self.settings = settings
        self.uri = uri
        self._emit = emit
        self.take_fd = take_fd
        self._postcopy_asked = threading.Event()
        if start_postcopy:
            self._postcopy_asked.set()
        self.postcopy: PostcopySource | None = None
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
        self.set_status("setup")
        self._thread.start()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES

    @property
    def in_postcopy(self) -> bool:
        return self.status in POSTCOPY_STATES

    def start_postcopy(self) -> None:
        """migrate-start-postcopy: switch at the next chunk once the first pass is done."""
        self._postcopy_asked.set()

    def pause(self) -> None:
        """migrate-pause (postcopy-active or postcopy-recover only)."""
        if self.postcopy is not None:
            self.postcopy.pause()

    def resume(self, uri: str) -> None:
        """migrate resume=true (postcopy-paused only)."""
        assert self.postcopy is not None
        self.uri = uri
        self.postcopy.resume(uri)

    def cancel(self) -> None:
        if not self.active:
            return
        if self.in_postcopy:
            raise MigrationError("Postcopy migration in progress, cannot cancel.")
        self.set_status("cancelling")
        self._cancel.set()
        self.limiter.wake()
        if self._channel is not None:
            self._channel.abort()  # the job thread closes it

    def parameters_changed(self) -> None:
        self.limiter.limit = self.settings.params["max-bandwidth"]
        if self.postcopy is not None:
            self.postcopy.parameters_changed()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def set_status(self, status: str) -> None:
        self.status = status
        if self.settings.caps["events"]:
            self._emit("MIGRATION", {"status": status})

    def header(self) -> Header:
        return Header(PAGE_SIZE, self.machine.ram.size, machine_description(self.machine))

    # --- the job ----------------------------------------------------------------------
    def _run(self) -> None:
        tracker = None
        try:
            self._channel = connect(self.uri, self.take_fd)
            self._check_cancel()
            postcopy = self.settings.caps["postcopy-ram"]
            if postcopy and self._channel.sock is None:
                raise MigrationError("Unable to open return-path for postcopy "
                                     "(postcopy needs a socket: unix:, tcp: or fd:)")
            start = [self.header().encode()]
            if postcopy:
                start.append(bytes([TAG_POSTCOPY_ADVISE]))
            self._send(start, precopy=True)
            tracker = tracker_for(self.machine)
            tracker.start()
            self._synced(first=True)
            self.times.setup_ms = self.times.total_ms()
            self.set_status("active")
            dirty = np.ones(self.machine.ram.pages, dtype=bool)
            try:
                while True:
                    started, sent_before = time.monotonic(), self.stats.transferred
                    self._send_pages(dirty, limited=True)
                    dirty = tracker.sync()
                    self._synced()
                    if postcopy and self._postcopy_asked.is_set():
                        raise SwitchToPostcopy()
                    elapsed = max(time.monotonic() - started, 1e-6)
                    if self._converged(dirty, self.stats.transferred - sent_before, elapsed):
                        break
                self._complete(tracker, dirty)
            except SwitchToPostcopy:
                self._postcopy(tracker, dirty)
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

    def send(self, channel: Channel, buffers: list[bytes | memoryview], kind: str) -> None:
        """Send and count: ``kind`` is precopy, downtime or postcopy."""
        sent = channel.send(buffers)
        self.stats.transferred += sent
        if kind == "precopy":
            self.stats.precopy_bytes += sent
        elif kind == "downtime":
            self.stats.downtime_bytes += sent
        else:
            self.stats.postcopy_bytes += sent

    def _send(self, buffers: list[bytes | memoryview], precopy: bool) -> None:
        assert self._channel is not None
        self.send(self._channel, buffers, "precopy" if precopy else "downtime")

    def _send_pages(self, dirty: np.ndarray, limited: bool) -> None:
        """Send the pages in ``dirty``. ``limited``: a live pass (rate-limited,
        zero pages detected); otherwise the downtime pass, where speed is all:
        pages just written are hardly ever zero, so they go as they are."""
        pages = self.machine.ram.pages
        remaining = int(dirty.sum())
        chunk = CHUNK_PAGES if limited else DOWNTIME_CHUNK_PAGES
        switch = limited and self.settings.caps["postcopy-ram"]
        for first in range(0, pages, chunk):
            self._check_cancel()
            if switch and self._postcopy_asked.is_set() and self.stats.dirty_sync_count > 1:
                raise SwitchToPostcopy()
            mask = dirty[first:first + chunk]
            count = int(mask.sum())
            if not count:
                continue
            records = ChunkRecords(self.machine.ram, first, mask, detect_zero=limited)
            if limited:
                self.limiter.wait(records.nbytes)
            self._send(records.buffers, precopy=limited)
            mask[:] = False  # sent: what is left of ``dirty`` is still to go
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
        was_running = self._stop_guest()
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

    def _stop_guest(self) -> bool:
        """Stop the vCPUs for switchover; return whether the guest was running."""
        machine = self.machine
        with machine.lock:
            was_running = machine.running
            if was_running:
                machine.stop(RunState.FINISH_MIGRATE)
                self._stopped_guest = True
            else:
                machine.pause_vcpus()
        return was_running

    def _postcopy(self, tracker: Any, pending: np.ndarray) -> None:
        """Switch over: stop the guest, tell the destination which pages are
        stale, send the vCPU and device state, let the guest run there."""
        assert self._channel is not None
        machine = self.machine
        was_running = self._stop_guest()
        stopped_at = time.monotonic()
        need = pending | tracker.sync()
        self._synced()
        starts, lengths = runs(need)
        table = np.empty((len(starts), 2), dtype="<u8")
        table[:, 0], table[:, 1] = starts, lengths
        state = {"cpu": machine.save_cpu_state(), "devices": machine.save_device_states(),
                 "running": was_running}
        self._send([COUNT.pack(TAG_DISCARD, len(starts)), memoryview(table).cast("B"),
                    blob_record(TAG_STATE, state), bytes([TAG_POSTCOPY_RUN])], precopy=False)
        assert RANGE.size == table.itemsize * 2
        self.times.downtime_ms = int((time.monotonic() - stopped_at) * 1000)
        self.stats.remaining = int(need.sum()) * PAGE_SIZE
        self.set_status("postcopy-active")
        self.postcopy = PostcopySource(self, self._channel, need)
        self._channel = None  # postcopy owns it now, and any channel after it
        self.postcopy.run()
        self.stats.remaining = 0
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
        self.set_status(status)

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
        if self.error is not None and self.status in ("failed", "postcopy-paused"):
            info["error-desc"] = self.error
        if self.status != "failed" or self.stats.transferred:
            info["ram"] = self.stats.to_qmp()
        return info

