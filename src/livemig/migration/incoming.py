"""The destination side of a precopy migration.

Every record is checked before it touches memory: page runs must lie inside
guest RAM, lengths are bounded, unknown tags end the load. On any error the
status becomes ``failed`` and, as QEMU does, the process exits non-zero.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import LivemigError, MigrationReceiveError
from ..machine import Machine, RunState
from ..memory import PAGE_SIZE
from .channel import Channel, Listener
from .outgoing import machine_description
from .params import Settings
from .stats import JobTimes, RamStats
from .wire import (
    BLOB,
    HEADER,
    MAX_RUN_PAGES,
    MAX_STATE,
    RUN,
    TAG_END,
    TAG_PAGES,
    TAG_STATE,
    TAG_SYNC,
    TAG_ZERO,
    decode_header,
    decode_json,
)

log = logging.getLogger(__name__)


class IncomingMigration:
    def __init__(self, machine: Machine, settings: Settings, uri: str,
                 emit: Callable[[str, dict[str, Any] | None], None],
                 on_failure: Callable[[str], None]) -> None:
        self.machine = machine
        self.settings = settings
        self._emit = emit
        self._on_failure = on_failure
        self.listener = Listener(uri)
        self.status = "none"
        self.error: str | None = None
        self.stats = RamStats(total=machine.ram.size)
        self.times = JobTimes()
        self._channel: Channel | None = None
        self._thread = threading.Thread(target=self._run, name="migration_incoming", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    @property
    def active(self) -> bool:
        return self.status in ("setup", "active")

    def _set_status(self, status: str) -> None:
        self.status = status
        if self.settings.caps["events"]:
            self._emit("MIGRATION", {"status": status})

    def _run(self) -> None:
        try:
            self._channel = self.listener.accept()
            self.times = JobTimes()
            self._set_status("setup")
            self._read_header()
            self._set_status("active")
            running = self._read_records()
            self.times.end = time.monotonic()
            self._set_status("completed")
            with self.machine.lock:
                if running and self.machine.autostart:
                    self.machine.resume()
                else:
                    self.machine.set_runstate(RunState.PAUSED)
        except (LivemigError, OSError, EOFError) as err:
            self.error = f"load of migration failed: {err}"
            log.error("%s", self.error)
            self._set_status("failed")
            self._on_failure(self.error)
        finally:
            if self._channel is not None:
                self._channel.close()
            self.listener.close()

    def _read_header(self) -> None:
        assert self._channel is not None
        page_size, ram_size, desc_len = decode_header(self._channel.recv(HEADER.size))
        if page_size != PAGE_SIZE:
            raise MigrationReceiveError(f"page size {page_size} differs from ours ({PAGE_SIZE})")
        if ram_size != self.machine.ram.size:
            raise MigrationReceiveError(
                f"RAM size differs: the stream has {ram_size} bytes, this VM "
                f"{self.machine.ram.size} (start the destination with the same -m)")
        desc = decode_json(self._channel.recv(desc_len), "machine description")
        ours = machine_description(self.machine)
        if desc != ours:
            raise MigrationReceiveError(f"machine differs: source {desc}, destination {ours}")

    def _read_records(self) -> bool:
        """Load records until END; return whether the guest ran on the source."""
        assert self._channel is not None
        channel, ram = self._channel, self.machine.ram
        running: bool | None = None
        while True:
            tag = channel.recv(1)[0]
            if tag in (TAG_PAGES, TAG_ZERO, TAG_SYNC):
                _tag, first, count = RUN.unpack(bytes([tag]) + channel.recv(RUN.size - 1))
                self.stats.transferred += RUN.size
                if tag == TAG_SYNC:
                    self.stats.dirty_sync_count = first
                    continue
                if count == 0 or count > MAX_RUN_PAGES or first + count > ram.pages:
                    raise MigrationReceiveError(
                        f"page run {first}+{count} lies outside guest RAM ({ram.pages} pages)")
                start, length = first * PAGE_SIZE, count * PAGE_SIZE
                if tag == TAG_PAGES:
                    channel.recv_into(ram.view[start:start + length])
                    self.stats.normal += count
                    self.stats.transferred += length
                else:
                    # Safe: [start, start+length) was checked to lie inside RAM.
                    ctypes.memset(ram.address + start, 0, length)
                    self.stats.duplicate += count
            elif tag == TAG_STATE:
                _tag, length = BLOB.unpack(bytes([tag]) + channel.recv(BLOB.size - 1))
                if length > MAX_STATE:
                    raise MigrationReceiveError(f"state record of {length} bytes is too large")
                state = decode_json(channel.recv(length), "device state")
                running = self._load_state(state)
            elif tag == TAG_END:
                if running is None:
                    raise MigrationReceiveError("stream ended without vCPU and device state")
                return running
            else:
                raise MigrationReceiveError(f"unknown record type {tag:#04x}")

    def _load_state(self, state: dict[str, Any]) -> bool:
        try:
            cpu, devices, running = state["cpu"], state["devices"], state["running"]
        except KeyError as err:
            raise MigrationReceiveError(f"device state lacks {err}") from err
        if not isinstance(devices, dict) or not isinstance(cpu, dict):
            raise MigrationReceiveError("malformed device state")
        self.machine.load_device_states(devices)
        self.machine.load_cpu_state(cpu)
        return bool(running)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"status": self.status}
        if self.status == "none":
            info["socket-address"] = self.listener.socket_address()
            return info
        if self.status in ("setup", "active"):
            info["socket-address"] = self.listener.socket_address()
        info["total-time"] = self.times.total_ms()
        if self.error is not None and self.status == "failed":
            info["error-desc"] = self.error
        info["ram"] = self.stats.to_qmp()
        return info
