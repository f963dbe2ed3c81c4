"""The destination side of a migration: precopy records, then maybe postcopy.

Every record is checked before it touches memory: page runs must lie inside
guest RAM, lengths are bounded, unknown tags end the load. Before
switchover any error makes the status ``failed`` and, as QEMU does, the
process exits non-zero. After switchover the guest runs here and part of its
memory is still on the source, so an error never fails the migration: it
pauses it (``postcopy-paused``) until ``migrate-recover`` brings a new channel.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import LivemigError, MigrationError, MigrationReceiveError
from ..machine import Machine, RunState
from ..memory import PAGE_SIZE
from ..uffd import probe_missing
from . import return_path as rp
from .channel import Channel, Listener
from .outgoing import machine_description
from .params import Settings
from .postcopy_dest import PostcopyDestination
from .stats import JobTimes, RamStats
from .wire import (
    BLOB,
    COUNT,
    HEADER,
    MAX_RUN_PAGES,
    MAX_STATE,
    RANGE,
    RUN,
    TAG_DISCARD,
    TAG_END,
    TAG_PAGES,
    TAG_POSTCOPY_ADVISE,
    TAG_POSTCOPY_RUN,
    TAG_RESUME,
    TAG_STATE,
    TAG_SYNC,
    TAG_ZERO,
    decode_header,
    decode_json,
)

log = logging.getLogger(__name__)

_ERRORS = (LivemigError, OSError, EOFError)


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
        self._running: bool | None = None      # did the guest run on the source
        self._advised = False
        self._discard: np.ndarray | None = None
        self.postcopy: PostcopyDestination | None = None
        self._cond = threading.Condition()
        self._recover_listener: Listener | None = None
        self._thread = threading.Thread(target=self._run, name="migration_incoming", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    @property
    def active(self) -> bool:
        return self.status in ("setup", "active", "postcopy-active", "postcopy-paused",
                               "postcopy-recover")

    def _set_status(self, status: str) -> None:
        self.status = status
        if self.settings.caps["events"]:
            self._emit("MIGRATION", {"status": status})

    # --- control (QMP thread) ------------------------------------------------------
    def pause(self) -> None:
        """migrate-pause on the destination: drop the channel; postcopy pauses."""
        channel = self._channel
        if channel is not None:
            channel.abort()

    def recover(self, uri: str) -> None:
        """migrate-recover: listen on ``uri`` for the source's new channel."""
        with self._cond:
            if self.status != "postcopy-paused":
                raise MigrationError("Migrate recover can only be run when postcopy is paused.")
            if self._recover_listener is not None:
                raise MigrationError("Migrate recovery is triggered already")
            self._recover_listener = Listener(uri)
            self._cond.notify_all()

    # --- the job ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._channel = self.listener.accept()
            self.listener.close()
            self.times = JobTimes()
            self._set_status("setup")
            self._read_header(self._channel)
            self._set_status("active")
            self._read_records(self._channel)
        except _ERRORS as err:
            if self.postcopy is None:
                self._fail(err)
                return
            self._close_channel()
            self._recover_loop(err)
        else:
            if self.postcopy is None:
                self._complete_precopy()
            else:
                self._complete_postcopy()
        finally:
            self.listener.close()

    def _fail(self, err: BaseException) -> None:
        self.error = f"load of migration failed: {err}"
        log.error("%s", self.error)
        self._close_channel()
        self._set_status("failed")
        self._on_failure(self.error)

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if self.postcopy is not None:
            self.postcopy.attach(None)
        if channel is not None:
            channel.close()

    def _complete_precopy(self) -> None:
        self._close_channel()
        self.times.end = time.monotonic()
        self._set_status("completed")
        self._start_guest()

    def _start_guest(self) -> None:
        """Run the guest here if it ran on the source (and no -S), else pause it."""
        with self.machine.lock:
            if self._running and self.machine.autostart:
                self.machine.resume()
            else:
                self.machine.set_runstate(RunState.PAUSED)

    def _read_header(self, channel: Channel) -> None:
        page_size, ram_size, desc_len = decode_header(channel.recv(HEADER.size))
        if page_size != PAGE_SIZE:
            raise MigrationReceiveError(f"page size {page_size} differs from ours ({PAGE_SIZE})")
        if ram_size != self.machine.ram.size:
            raise MigrationReceiveError(
                f"RAM size differs: the stream has {ram_size} bytes, this VM "
                f"{self.machine.ram.size} (start the destination with the same -m)")
        desc = decode_json(channel.recv(desc_len), "machine description")
        ours = machine_description(self.machine)
        if desc != ours:
            raise MigrationReceiveError(f"machine differs: source {desc}, destination {ours}")

    def _read_records(self, channel: Channel) -> None:
        """Load records until END."""
        ram = self.machine.ram
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
                if self.postcopy is not None:
                    self._place(channel, tag, first, count)
                else:
                    self._load_pages(channel, tag, first, count)
            elif tag == TAG_STATE:
                _tag, length = BLOB.unpack(bytes([tag]) + channel.recv(BLOB.size - 1))
                if length > MAX_STATE:
                    raise MigrationReceiveError(f"state record of {length} bytes is too large")
                self._load_state(decode_json(channel.recv(length), "device state"))
            elif tag == TAG_POSTCOPY_ADVISE:
                self._advise(channel)
            elif tag == TAG_DISCARD:
                self._read_discard(channel)
            elif tag == TAG_POSTCOPY_RUN:
                self._switch_over(channel)
            elif tag == TAG_END:
                if self._running is None:
                    raise MigrationReceiveError("stream ended without vCPU and device state")
                if self.postcopy is not None and self.postcopy.missing:
                    raise MigrationReceiveError(
                        f"stream ended with {self.postcopy.missing} pages still missing")
                return
            else:
                raise MigrationReceiveError(f"unknown record type {tag:#04x}")

    def _load_pages(self, channel: Channel, tag: int, first: int, count: int) -> None:
        """Precopy: straight into RAM (nothing runs on it yet)."""
        ram = self.machine.ram
        start, length = first * PAGE_SIZE, count * PAGE_SIZE
        if tag == TAG_PAGES:
            channel.recv_into(ram.view[start:start + length])
            self.stats.normal += count
            self.stats.transferred += length
        else:
            # Safe: [start, start+length) was checked to lie inside RAM.
            ctypes.memset(ram.address + start, 0, length)
            self.stats.duplicate += count

    def _place(self, channel: Channel, tag: int, first: int, count: int) -> None:
        """Postcopy: through the staging buffer, placed atomically with uffd."""
        assert self.postcopy is not None
        if tag == TAG_PAGES:
            length = count * PAGE_SIZE
            if length > len(self.postcopy.staging):
                raise MigrationReceiveError(
                    f"postcopy page run of {count} pages is larger than allowed")
            channel.recv_into(self.postcopy.staging[:length])
            self.postcopy.place(first, count)
            self.stats.normal += count
            self.stats.transferred += length
            self.stats.postcopy_bytes += length
        else:
            self.postcopy.place_zero(first, count)
            self.stats.duplicate += count

    def _load_state(self, state: dict[str, Any]) -> None:
        try:
            cpu, devices, running = state["cpu"], state["devices"], state["running"]
        except KeyError as err:
            raise MigrationReceiveError(f"device state lacks {err}") from err
        if not isinstance(devices, dict) or not isinstance(cpu, dict):
            raise MigrationReceiveError("malformed device state")
        self.machine.load_device_states(devices)
        self.machine.load_cpu_state(cpu)
        self._running = bool(running)

    # --- postcopy switchover ---------------------------------------------------------------
    def _advise(self, channel: Channel) -> None:
        if not self.settings.caps["postcopy-ram"]:
            raise MigrationReceiveError(
                "the source may switch to postcopy, but the postcopy-ram capability is "
                "not set here (set it on both sides)")
        if channel.sock is None:
            raise MigrationReceiveError("postcopy needs a socket channel for its return path")
        why = probe_missing(kernel_faults=self.machine.accel_name == "kvm")
        if why is not None:
            raise MigrationReceiveError(f"postcopy needs userfaultfd here: {why}")
        self._advised = True

    def _read_discard(self, channel: Channel) -> None:
        if not self._advised:
            raise MigrationReceiveError("page discard list without postcopy advice")
        pages = self.machine.ram.pages
        _tag, count = COUNT.unpack(bytes([TAG_DISCARD]) + channel.recv(COUNT.size - 1))
        if count > pages:
            raise MigrationReceiveError(f"discard list of {count} runs is too long")
        table = np.frombuffer(channel.recv(count * RANGE.size), dtype="<u8").reshape(count, 2)
        starts, lengths = table[:, 0], table[:, 1]
        ends = starts + lengths
        if count and ((lengths == 0).any() or (ends > pages).any() or (ends < starts).any()):
            raise MigrationReceiveError("discard list names pages outside guest RAM")
        edges = np.zeros(pages + 1, dtype=np.int32)
        np.add.at(edges, starts.astype(np.int64), 1)
        np.add.at(edges, ends.astype(np.int64), -1)
        self._discard = np.cumsum(edges[:-1]) > 0

    def _switch_over(self, channel: Channel) -> None:
        """Postcopy from here: register RAM with userfaultfd, run the guest."""
        if self._discard is None or self._running is None:
            raise MigrationReceiveError("postcopy run before the discard list and device state")
        postcopy = PostcopyDestination(self.machine, self._discard, self.machine.accel_name)
        postcopy.start()
        self.postcopy = postcopy
        postcopy.attach(self._return_sender(channel))
        self._set_status("postcopy-active")
        self._start_guest()

    @staticmethod
    def _return_sender(channel: Channel) -> Callable[[Sequence[bytes | memoryview]], bool]:
        """A thread-safe send on the return path; a failure breaks the channel."""
        lock = threading.Lock()

        def send(buffers: Sequence[bytes | memoryview]) -> bool:
            with lock:
                try:
                    channel.send(buffers)
                    return True
                except OSError as err:
                    log.warning("postcopy return path: %s", err.strerror or err)
                    channel.abort()  # the receiving thread sees it and pauses
                    return False

        return send

    def _complete_postcopy(self) -> None:
        assert self.postcopy is not None and self._channel is not None
        self.postcopy.finish()
        send = self._return_sender(self._channel)
        send([rp.done()])
        self._close_channel()
        self.times.end = time.monotonic()
        self._set_status("completed")

    # --- pause and recovery ------------------------------------------------------------------
    def _recover_loop(self, err: BaseException) -> None:
        """Pause; recover each time migrate-recover brings a channel; until END."""
        while True:
            self.error = str(err) if isinstance(err, LivemigError) else (
                "migration channel broken: " + (getattr(err, "strerror", None) or str(err)
                                                or type(err).__name__))
            log.warning("postcopy paused: %s", self.error)
            self._set_status("postcopy-paused")
            try:
                channel = self._accept_recovery()
                self._channel = channel
                self._read_records(channel)
            except _ERRORS as again:
                self._close_channel()
                err = again
                continue
            self._complete_postcopy()
            return

    def _accept_recovery(self) -> Channel:
        with self._cond:
            while self._recover_listener is None:
                self._cond.wait()
            listener = self._recover_listener
        try:
            channel = listener.accept()
        finally:
            listener.close()
            with self._cond:
                self._recover_listener = None
        self._channel = channel
        self._set_status("postcopy-recover")
        self._read_header(channel)
        tag = channel.recv(1)[0]
        if tag != TAG_RESUME:
            raise MigrationReceiveError(f"recovery channel began with record {tag:#04x}, "
                                        "not a resume request")
        assert self.postcopy is not None
        send = self._return_sender(channel)
        if not send(rp.have(self.postcopy.placed)):
            raise MigrationReceiveError("could not tell the source which pages are here")
        self.postcopy.attach(send)
        self.postcopy.rerequest()
        self.error = None
        self._set_status("postcopy-active")
        return channel

    # --- query-migrate ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"status": self.status}
        if self.status == "none":
            info["socket-address"] = self.listener.socket_address()
            return info
        if self.status in ("setup", "active"):
            info["socket-address"] = self.listener.socket_address()
        info["total-time"] = self.times.total_ms()
        if self.error is not None and self.status in ("failed", "postcopy-paused"):
            info["error-desc"] = self.error
        info["ram"] = self.stats.to_qmp()
        if self.postcopy is not None and self.settings.caps["postcopy-blocktime"]:
            total, per_vcpu = self.postcopy.latency.blocktime_ms()
            info["postcopy-blocktime"] = total
            info["postcopy-vcpu-blocktime"] = per_vcpu
        if self.postcopy is not None:
            info["livemig-fault-latency"] = self.postcopy.latency.summary()
        return info
