"""The source side of a migration: one job, one thread, one status machine.

Precopy passes run until the rest fits in ``downtime-limit``, or, with the
``postcopy-ram`` capability, until ``migrate-start-postcopy`` asks for the
switch: then the guest stops here, the list of stale pages and the machine
state go over, the guest runs on at the destination, and the postcopy
sub-machine (postcopy_source) sends the rest. Every status change is a
transition of ``self.status``; the job thread ends in a catch-all
(jobthread) that fails the job, or pauses it after switchover.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import LivemigError, MigrationError, StreamTruncated
from ..logs import get_logger
from ..machine import Machine, RunState
from ..machine.dirty_limit import DEFAULT_PERIOD_MS as DEFAULT_LIMIT_PERIOD_MS
from ..memory import PAGE_SIZE
from ..memory.dirty import DirtyTracker, SharedRamTracker
from . import faults, jobthread, state
from .channel import Channel, connect
from .codec import (
    ChannelHello,
    Discard,
    End,
    Header,
    Limits,
    MultifdFlush,
    PostcopyAdvise,
    PostcopyRun,
    SharedRamAccepted,
    State,
    Sync,
    encode_preempt_hello,
    read_return,
)
from .convergence import Decision, PassLog, PassReport, Policy, PolicyError, load_policy
from .mapped_ram import Layout, MappedRamWriter
from .multifd import MultifdSender, StreamSettings
from .pages import CHUNK_PAGES, DOWNTIME_CHUNK_PAGES, ChunkRecords, runs
from .params import Settings
from .postcopy_source import Done, Outcome, Paused, PostcopySource, describe
from .snapshot import SnapshotRam
from .stats import JobTimes, RamStats, RateLimiter, ms_since
from .status import SOURCE_TRANSITIONS, IllegalTransition, Status, StatusMachine
from .tls import TlsConfig
from .uri import Uri
from .xbzrle import XbzrleEncoder

log = get_logger(__name__)

S = Status
# Live rates (mbps, expected-downtime) are refreshed this often during a
# pass, as QEMU does every 100 ms; the dirty rate is sampled each second.
RATE_UPDATE_S = 0.1
SHARED_RAM_ACCEPT_S = 30.0  # x-ignore-shared: the destination's answer to the header
DIRTY_SAMPLE_S = 1.0

EventSink = Callable[[str, dict[str, Any] | None], None]


class Cancelled(Exception):
    """migrate_cancel was asked for."""


class SwitchToPostcopy(Exception):
    """migrate-start-postcopy was asked for and may be honoured now."""


def describe_failure(err: BaseException, channel: Channel | None) -> str:
    """error-desc for query-migrate, in QEMU's wording for write errors."""
    if isinstance(err, OSError) and not isinstance(err, LivemigError):
        if channel is not None:
            return channel.describe_write_error(err)
        return f"Unable to write to socket: {err.strerror or err}"
    return str(err)


class OutgoingMigration:
    def __init__(self, machine: Machine, settings: Settings, uri: Uri | None, fd: int | None,
                 emit: EventSink, take_fd: Callable[[str], int],
                 tls: TlsConfig | None = None, cpr: Uri | None = None) -> None:
        self.machine = machine
        self.settings = settings
        self.uri = uri
        self.cpr = cpr  # cpr-transfer: the channel that guest RAM's descriptor goes on
        # cpr-reboot and cpr-transfer stop the guest before anything is
        # saved: no live pass, no dirty tracking worth the name (QEMU's CPR).
        self.stop_first = settings.params["mode"] != "normal"
        self._fd = fd
        self._emit = emit
        self._take_fd = take_fd
        self.tls = tls
        self.status = StatusMachine("source", SOURCE_TRANSITIONS, self._announce)
        self.error: str | None = None
        # x-ignore-shared on shared RAM (implied by cpr-transfer): the
        # destination maps these very pages, so none is sent and none counts
        # in ram.total (as QEMU).
        self.ram_shared = ((settings.caps["x-ignore-shared"] or cpr is not None)
                           and machine.ram.shared)
        self.stats = RamStats(total=0 if self.ram_shared else machine.ram.size)
        self.times = JobTimes()
        self.limiter = RateLimiter(settings.params["max-bandwidth"])
        self.policy: Policy | None = None  # made when the job starts (user code may fail)
        self.passes = PassLog()
        self.postcopy: PostcopySource | None = None
        self._postcopy_requested = threading.Event()
        self._cancel = threading.Event()
        self._switchover_go = threading.Event()  # migrate-continue (pause-before-switchover)
        self._channel: Channel | None = None
        self._stopped_guest = False
        self._resume_cond = threading.Condition()
        self._resume_to: tuple[Uri, int | None] | None = None
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()  # stats are counted by multifd threads too
        self.streams = stream_settings(settings)
        self._multifd: MultifdSender | None = None
        self._preempt: Channel | None = None  # postcopy-preempt's channel, until switchover
        self.xbzrle: XbzrleEncoder | None = None  # from the second pass on, with the capability
        self.mapped: MappedRamWriter | None = None  # mapped-ram: pages go to their places
        self._layout: Layout | None = None

    def _announce(self, status: Status) -> None:
        if self.settings.caps["events"]:
            self._emit("MIGRATION", {"status": status.value})

    # --- control (QMP thread) -------------------------------------------------------
    def start(self) -> None:
        self._must(self.status.transition(S.NONE, S.SETUP))
        self._thread = jobthread.start("live_migration", self._run, self._crashed)

    def refuse(self, message: str) -> None:
        """A migrate refused before it began (a bad URI): status failed, as QEMU."""
        self.error = message
        self._must(self.status.transition(S.NONE, S.SETUP))
        self._must(self.status.transition(S.SETUP, S.FAILED))

    @property
    def in_progress(self) -> bool:
        return self.status.in_progress

    def request_postcopy(self) -> None:
        """migrate-start-postcopy: switch at the next chunk once allowed."""
        self._postcopy_requested.set()

    def pause(self) -> None:
        """migrate-pause (the manager checked: postcopy-active or -recover)."""
        if self.postcopy is not None:
            self.postcopy.pause()

    def resume(self, uri: Uri, fd: int | None) -> None:
        """migrate resume=true (the manager checked: postcopy-paused)."""
        with self._resume_cond:
            self._resume_to = (uri, fd)
            self._resume_cond.notify_all()

    def cancel(self) -> None:
        if self.status.in_postcopy:
            raise MigrationError("Postcopy migration in progress, cannot cancel.")
        if not self.status.transition({S.SETUP, S.ACTIVE, S.PRE_SWITCHOVER, S.DEVICE},
                                      S.CANCELLING):
            return  # not running, or too late: it is completing
        self._cancel.set()
        self._switchover_go.set()  # a job waiting in pre-switchover sees the cancel
        self.limiter.wake()
        channel = self._channel
        if channel is not None:
            channel.abort()  # the job thread closes it
        multifd = self._multifd
        if multifd is not None:
            multifd.abort()

    def continue_switchover(self, state: str) -> None:
        """migrate-continue: let a job paused in ``state`` (pre-switchover) go on."""
        current = self.status.status
        if current.value != state:
            raise MigrationError(f"Migration not in expected state: {current.value}")
        self._switchover_go.set()

    def parameters_changed(self) -> None:
        self.limiter.set_limit(self.settings.params["max-bandwidth"])
        if self.postcopy is not None:
            self.postcopy.parameters_changed()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def header(self) -> Header:
        uuid = self.machine.config.uuid if self.settings.caps["validate-uuid"] else None
        backing = self.machine.ram.backing
        shared = backing.identity if self.ram_shared and backing is not None else None
        mapped = self.settings.caps["mapped-ram"]
        # (multifd with mapped-ram: threads writing the one file, no channels)
        multifd = self.streams.header() if self.streams is not None and not mapped else None
        header = Header(PAGE_SIZE, self.machine.ram.size,
                        state.machine_description(self.machine), uuid, multifd,
                        preempt=self._wants_preempt(), shared_ram=shared)
        if not mapped:
            return header
        # The layout follows the header, whose size it changes a little.
        layout = Layout.after_header(len(header.encode()), self.machine.ram.pages)
        self._layout = layout
        header = dataclasses.replace(header, mapped_ram=layout.to_wire())
        assert len(header.encode()) <= layout.bitmap
        return header

    def _start_mapped_ram(self, layout: Layout) -> None:
        """mapped-ram: from now on pages are written at their places in the
        file, and the rest of the stream after them."""
        assert self._channel is not None and self.uri is not None
        fd = self._channel.file_fd
        assert fd is not None  # a file: URI, checked before connecting
        streams = self.streams
        if streams is not None and streams.compression != "none":
            raise MigrationError("Mapped-ram migration is incompatible with multifd "
                                 "compression")
        self.mapped = MappedRamWriter(fd, self.uri.offset, layout, self.machine.ram,
                                      streams.channels if streams is not None else 1)
        self.mapped.start_records()

    def _await_shared_ram_accepted(self) -> None:
        """x-ignore-shared: before the guest may stop here, the destination
        must say that it maps this guest's RAM (a socket's return path; an
        exec: or file: stream has none and is written as it is)."""
        channel = self._channel
        assert channel is not None
        if channel.sock is None:
            return
        if not channel.wait_readable(SHARED_RAM_ACCEPT_S):
            raise MigrationError(f"x-ignore-shared: the destination did not accept the "
                                 f"shared RAM within {SHARED_RAM_ACCEPT_S:.0f} s")
        try:
            answer = read_return(channel.reader, Limits(self.machine.ram.pages))
        except (StreamTruncated, ConnectionError) as err:
            self._check_cancel()
            raise MigrationError("x-ignore-shared: the destination refused the stream (its "
                                 "RAM must map this guest's shared memory backend; its "
                                 "log says why)") from err
        if not isinstance(answer, SharedRamAccepted):
            raise MigrationError(f"x-ignore-shared: the destination answered "
                                 f"{type(answer).__name__}, not SharedRamAccepted")

    def _hand_over_ram(self, cpr: Uri) -> None:
        """cpr-transfer: give the new process guest RAM's descriptor on the
        cpr channel, and wait until it listens on the main one (cpr.py)."""
        from .cpr import RAM_FD, send_state

        backing = self.machine.ram.backing
        spec = self.machine.config.ram_backend
        assert backing is not None and spec is not None  # the manager checked
        send_state(cpr, {RAM_FD + spec.id: backing.fd}, self._check_cancel)

    def _wants_preempt(self) -> bool:
        caps = self.settings.caps
        return caps["postcopy-ram"] and caps["postcopy-preempt"]

    # --- the job ------------------------------------------------------------------------
    @staticmethod
    def _must(moved: bool) -> None:
        if not moved:
            raise IllegalTransition("internal error: the migration status changed under the job")

    def _run(self) -> None:
        tracker: DirtyTracker | None = None
        assert self.uri is not None  # a job without one was refused, never started
        try:
            try:
                self.policy = load_policy(self.settings.params["livemig-convergence-policy"])
            except PolicyError as err:
                raise MigrationError(str(err)) from err
            if self.settings.caps["mapped-ram"] and self.uri.scheme != "file":
                raise MigrationError("mapped-ram needs a file: URI (every page has its "
                                     "place in the file)")
            if self.cpr is not None:
                self._hand_over_ram(self.cpr)
            self._channel = connect(self.uri, self._fd, tls=self.tls)
            self._check_cancel()
            postcopy = self.settings.caps["postcopy-ram"]
            if postcopy and self._channel.sock is None:
                raise MigrationError("Unable to open return-path for postcopy "
                                     "(postcopy needs a socket: unix:, tcp: or fd:)")
            if postcopy and self.ram_shared:
                raise MigrationError("postcopy-ram with x-ignore-shared on shared RAM: no "
                                     "page would be left to fetch after the switch (turn "
                                     "postcopy-ram off)")
            start = [self.header().encode()]
            if postcopy:
                start.append(PostcopyAdvise().encode())
            self._send(start, "precopy")
            if self.ram_shared:
                self._await_shared_ram_accepted()
            if self._layout is not None:
                self._start_mapped_ram(self._layout)
            elif self.streams is not None:
                self._open_multifd(self.streams)
            if self._wants_preempt():
                self._preempt = self._open_preempt(self.uri)
            if self.settings.caps["background-snapshot"]:
                self._background_snapshot()
                return
            tracker = (SharedRamTracker(self.machine.ram) if self.ram_shared
                       else self.machine.dirty_tracker())
            tracker.start()
            self._synced(first=True)
            self.times.setup_ms = self.times.total_ms()
            if not self.status.transition(S.SETUP, S.ACTIVE):
                raise Cancelled()
            try:
                if self.stop_first:
                    pages = self.machine.ram.pages
                    pending = (np.zeros if self.ram_shared else np.ones)(pages, dtype=bool)
                else:
                    pending = self._precopy(tracker)
                self._complete(tracker, pending)
            except SwitchToPostcopy as switch:
                self._postcopy(tracker, switch.args[0])
        except Cancelled:
            self._end(S.CANCELLED)
        except (LivemigError, OSError, EOFError) as err:
            if self._cancel.is_set():
                self._end(S.CANCELLED)
            else:
                multifd = self._multifd
                self.error = (multifd.failure if multifd is not None and multifd.failure
                              else describe_failure(err, self._channel))
                log.warning("migration failed: %s", self.error)
                self._end(S.FAILED)
        finally:
            self.machine.set_cpu_throttle(0)  # the throttle ends with the job, as QEMU's
            if self.passes.limited:  # and so does a dirty limit the job set
                self.machine.dirty_limiter.cancel()
                self.machine.dirty_limiter.period_ms = DEFAULT_LIMIT_PERIOD_MS
            if tracker is not None:
                try:
                    tracker.stop()
                except LivemigError as err:
                    log.warning("could not stop dirty tracking: %s", err)
            self._close_multifd()
            if self.mapped is not None:
                self.mapped.close()
            for channel in (self._channel, self._preempt):
                if channel is not None:
                    channel.close()
            self._channel = self._preempt = None

    def _crashed(self, err: BaseException) -> None:
        """The catch-all: fail (guest resumed here) or, after switchover, pause."""
        reason = jobthread.describe_crash(err)
        self.error = reason
        new = self.status.crash(reason)
        if new == S.FAILED:
            self.times.end = time.monotonic()
            self._end_guest(S.FAILED)
            channel = self._channel
            if channel is not None:
                channel.abort()
            multifd = self._multifd
            if multifd is not None:
                multifd.abort()
            preempt = self._preempt
            if preempt is not None:
                preempt.abort()
        elif new == S.POSTCOPY_PAUSED and self.postcopy is not None:
            # The job thread is gone; a new one waits for the recovery.
            postcopy = self.postcopy
            postcopy.release()
            self._thread = jobthread.start(
                "live_migration", lambda: self._postcopy_loop(postcopy, Paused(reason)),
                self._crashed)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def _send(self, buffers: list[bytes | memoryview], kind: str, zero: int = 0,
              normal: int = 0, zero_copy: bool = False) -> None:
        """Send on the main channel and count: ``kind`` is precopy or downtime;
        ``zero`` and ``normal``: the pages the buffers carry; ``zero_copy``:
        the RAM among them may go by reference (splice.py)."""
        assert self._channel is not None
        self._count(self._channel.send(buffers, zero_copy), kind, zero, normal)

    def _count(self, sent: int, kind: str, zero: int = 0, normal: int = 0) -> None:
        with self._stats_lock:
            self.stats.transferred += sent
            if kind == "precopy":
                self.stats.precopy_bytes += sent
            else:
                self.stats.downtime_bytes += sent
            self.stats.duplicate += zero
            self.stats.normal += normal

    # --- multifd ------------------------------------------------------------------------
    def _open_multifd(self, streams: StreamSettings) -> None:
        """Connect the multifd channels (after the main channel's header)."""
        assert self.uri is not None
        if self.uri.scheme not in ("unix", "tcp"):
            raise MigrationError("multifd is not supported by current protocol "
                                 "(it needs unix: or tcp:)")
        channels = []
        try:
            for index in range(streams.channels):
                self._check_cancel()
                channel = connect(self.uri, tls=self.tls)
                channels.append(channel)
                channel.send([ChannelHello(index, streams.channels).encode()])
        except BaseException:
            for channel in channels:
                channel.close()
            raise
        self._multifd = MultifdSender(channels, self.machine.ram, streams, self.limiter,
                                      self.stats, self._stats_lock)

    def _open_preempt(self, uri: Uri, fd: int | None = None) -> Channel:
        """postcopy-preempt's second connection (after any multifd ones)."""
        if uri.scheme not in ("unix", "tcp") or fd is not None:
            raise MigrationError("postcopy-preempt needs a second connection to the "
                                 "destination: use unix: or tcp:")
        channel = connect(uri, postcopy=True, tls=self.tls)
        try:
            channel.send([encode_preempt_hello()])
        except BaseException:
            channel.close()
            raise
        return channel

    def _barrier(self, kind: str, last: bool = False) -> None:
        """With multifd: every page queued so far lands before anything after
        this (module multifd); ``last``: the channels end here."""
        if self.mapped is not None:
            self.mapped.flush()  # the next pass may write these pages again
        multifd = self._multifd
        if multifd is None:
            return
        barrier = multifd.barrier()
        if last:
            multifd.end()
        self._send([MultifdFlush(barrier).encode()], kind)

    def _close_multifd(self) -> None:
        multifd, self._multifd = self._multifd, None
        if multifd is not None:
            multifd.close()

    # --- precopy ----------------------------------------------------------------------------
    def _may_switch_to_postcopy(self) -> bool:
        """The one rule: asked for and allowed by the capability. As QEMU, at
        any point of any pass: every page not sent yet is in the need set,
        and the destination fetches it after the switch."""
        return self.settings.caps["postcopy-ram"] and self._postcopy_requested.is_set()

    def _precopy(self, tracker: DirtyTracker) -> np.ndarray:
        """Live passes until the rest fits in downtime-limit; return what is
        left to send with the guest stopped."""
        dirty = (np.zeros if self.ram_shared else np.ones)(self.machine.ram.pages, dtype=bool)
        while True:
            started, sent_before = time.monotonic(), self.stats.transferred
            moved_before = self.pages_moved()
            carried = self._send_pages(dirty, tracker)
            self._barrier("precopy")
            dirty = carried | tracker.sync()
            self._synced()
            self._start_xbzrle()
            if self._may_switch_to_postcopy():
                raise SwitchToPostcopy(dirty)
            elapsed = max(time.monotonic() - started, 1e-6)
            moved = (self.pages_moved() - moved_before) * PAGE_SIZE
            if self._decide(dirty, self.stats.transferred - sent_before, moved, elapsed):
                return dirty

    def _send_pages(self, dirty: np.ndarray, tracker: DirtyTracker | None) -> np.ndarray:
        """Send the pages in ``dirty``. With a ``tracker``: a live pass
        (rate-limited, zero pages detected, live rates kept fresh, pages
        dirtied meanwhile returned for the next pass). Without: the
        downtime pass, where speed is all: pages just written are hardly
        ever zero, so they go as they are."""
        pages = self.machine.ram.pages
        live = tracker is not None
        carried = np.zeros(pages, dtype=bool)
        remaining = int(dirty.sum())
        chunk = CHUNK_PAGES if live else DOWNTIME_CHUNK_PAGES
        rates = _LiveRates(self, tracker, carried) if live else None
        for first in range(0, pages, chunk):
            self._check_cancel()
            if live:
                faults.check("source-pass")
                if self._may_switch_to_postcopy():
                    raise SwitchToPostcopy(dirty | carried | tracker.sync())
            mask = dirty[first:first + chunk]
            count = int(mask.sum())
            if not count:
                continue
            self._send_chunk(first, mask, live)
            mask[:] = False  # sent: what is left of ``dirty`` is still to go
            remaining -= count
            self.stats.remaining = remaining * PAGE_SIZE
            if rates is not None:
                rates.update()
        return carried

    def _send_chunk(self, first: int, mask: np.ndarray, live: bool) -> None:
        """One chunk of a pass: queued to multifd, xbzrle-encoded, or sent as it is."""
        if self._multifd is not None:
            self._multifd.submit(first, mask.copy(), live)
            return
        if self.mapped is not None:
            zero, normal, nbytes = self.mapped.write_chunk(first, mask, live)
            self._count(nbytes, "precopy" if live else "downtime", zero, normal)
            if live:
                self.limiter.wait(nbytes)
            return
        if self.xbzrle is not None:
            buffers, zero, normal = self.xbzrle.chunk(first, mask)
            nbytes = sum(len(b) for b in buffers)
        else:
            records = ChunkRecords(self.machine.ram, first, mask, detect_zero=live)
            buffers, zero, normal, nbytes = (records.buffers, records.zero, records.normal,
                                             records.nbytes)
        if live:
            self.limiter.wait(nbytes)
        # Pages straight from RAM may go by reference; xbzrle's buffers are its own.
        self._send(buffers, "precopy" if live else "downtime", zero, normal,
                   zero_copy=self.xbzrle is None)

    def _start_xbzrle(self) -> None:
        """After the first pass (as QEMU), and anew if xbzrle-cache-size changed."""
        if not self.settings.caps["xbzrle"] or self._multifd is not None:
            return
        size = self.settings.params["xbzrle-cache-size"]
        if self.xbzrle is None:
            self.xbzrle = XbzrleEncoder(self.machine.ram, size)
        else:
            self.xbzrle.stats.end_period()
            if self.xbzrle.stats.cache_size != size:
                self.xbzrle.resize(size)

    def _synced(self, first: bool = False) -> None:
        self.stats.dirty_sync_count += 1
        count = self.stats.dirty_sync_count
        if not first:
            self._send([Sync(count).encode()], "precopy")
        if self.settings.caps["events"]:
            self._emit("MIGRATION_PASS", {"pass": count})

    def pages_moved(self) -> int:
        """Pages sent with contents so far (whole, or as xbzrle deltas)."""
        xbzrle = self.xbzrle
        return self.stats.normal + (xbzrle.stats.pages if xbzrle is not None else 0)

    def _decide(self, dirty: np.ndarray, sent: int, moved: int, elapsed: float) -> bool:
        """After a pass: report it to the convergence policy and obey; True
        means switch over now.

        ``sent``: bytes on the wire this pass; ``moved``: RAM bytes they carried.
        What is left is RAM bytes, so with compression or xbzrle (``moved`` far
        above ``sent``) the rate that predicts the downtime is ``moved``'s."""
        dirty_pages = int(dirty.sum())
        report = PassReport(self.stats.dirty_sync_count, elapsed, sent, moved, dirty_pages,
                            PAGE_SIZE, self.machine.cpu_throttle,
                            self.settings.params["downtime-limit"],
                            time.monotonic() - self.times.start)
        self.stats.mbps = sent / elapsed * 8 / 1e6
        self.stats.remaining = report.remaining
        self.stats.dirty_pages_rate = int(dirty_pages / elapsed)
        self.stats.pages_per_second = int(sent / PAGE_SIZE / elapsed)
        self.times.expected_downtime_ms = int(min(report.expected_downtime_ms, 2**62))
        assert self.policy is not None
        try:
            decision = self.policy.decide(report, dict(self.settings.params),
                                          dict(self.settings.caps))
            if not isinstance(decision, Decision):
                raise TypeError(f"decide() returned {decision!r}, not a Decision")
        except Exception as err:
            raise MigrationError(f"convergence policy failed: {type(err).__name__}: "
                                 f"{err}") from err
        self.passes.record(report, decision)
        if decision.action == "throttle":
            self.machine.set_cpu_throttle(decision.throttle)
            log.info("auto-converge: guest throttled to %d%%", decision.throttle)
        elif decision.action == "limit":
            if decision.dirty_limit < 1:
                raise MigrationError("convergence policy asked for a dirty limit under "
                                     "1 MB/s")
            limiter = self.machine.dirty_limiter
            limiter.period_ms = int(self.settings.params["x-vcpu-dirty-limit-period"])
            limiter.set(decision.dirty_limit)
            log.info("dirty-limit: every vCPU limited to %d MB/s", decision.dirty_limit)
        elif decision.action == "postcopy":
            if not self.settings.caps["postcopy-ram"]:
                raise MigrationError("convergence policy asked for postcopy, but the "
                                     "postcopy-ram capability is off")
            log.info("convergence policy: switching to postcopy (%s)", decision.reason)
            raise SwitchToPostcopy(dirty)
        elif decision.action not in ("continue", "switchover"):
            raise MigrationError(f"convergence policy gave an unknown decision: "
                                 f"{decision.action!r}")
        return decision.action == "switchover"

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

    def _complete(self, tracker: DirtyTracker, pending: np.ndarray) -> None:
        """Stop the guest and send what is left: ``pending`` (found dirty by
        the last sync, not yet sent) plus whatever was written since."""
        was_running = self._stop_guest()
        stopped_at = time.monotonic()  # the pause below counts as downtime, as QEMU's
        if self.settings.caps["pause-before-switchover"]:
            self._pause_before_switchover()
        if self.ram_shared:
            self._synced()  # no page to send, nor to look for: the destination maps RAM
        else:
            dirty = pending | tracker.sync()
            self._synced()
            self._send_pages(dirty, None)
        self._barrier("downtime", last=True)
        if self.mapped is not None:
            self._count(self.mapped.finish(), "downtime")
        record = State(state.capture(self.machine, was_running).to_wire())
        if not self.status.commit():
            raise Cancelled()
        self._send([record.encode(), End().encode()], "downtime")
        self.stats.remaining = 0
        self.times.downtime_ms = ms_since(stopped_at)
        self._end(S.COMPLETED)

    def _background_snapshot(self) -> None:
        """background-snapshot (snapshot.py): the guest as it is now, saved
        while it runs on; it is paused only to capture its state and
        write-protect its RAM."""
        machine = self.machine

        def send(records: ChunkRecords) -> None:
            self._send(records.buffers, "precopy", records.zero, records.normal)

        paused_at = time.monotonic()
        with machine.lock:
            was_running = machine.running
            machine.pause_vcpus()
            try:
                record = State(state.capture(machine, was_running).to_wire())
                snap = SnapshotRam(machine.ram, send, machine.accel_name == "kvm")
                try:
                    snap.protect()
                except BaseException:
                    snap.close()
                    raise
            finally:
                machine.resume_vcpus()
        self.times.downtime_ms = ms_since(paused_at)
        self.times.setup_ms = self.times.total_ms()
        try:
            if not self.status.transition(S.SETUP, S.ACTIVE):
                raise Cancelled()

            def before_chunk() -> None:
                self._check_cancel()
                self.limiter.wait(CHUNK_PAGES * PAGE_SIZE)

            snap.background_pass(before_chunk)
        finally:
            snap.close()
        if not self.status.commit():
            raise Cancelled()
        self._send([record.encode(), End().encode()], "downtime")
        self.stats.remaining = 0
        self._end(S.COMPLETED)

    def _pause_before_switchover(self, then: Status = S.DEVICE) -> None:
        """The guest is stopped: wait in pre-switchover for migrate-continue
        (or a cancel), then go on in ``then``: device (the rest of a
        precopy), or postcopy-active (a postcopy switch, as QEMU)."""
        if not self.status.transition(S.ACTIVE, S.PRE_SWITCHOVER):
            raise Cancelled()
        self._switchover_go.wait()
        if not self.status.transition(S.PRE_SWITCHOVER, then):
            raise Cancelled()

    # --- postcopy ---------------------------------------------------------------------------
    def _postcopy(self, tracker: DirtyTracker, pending: np.ndarray) -> None:
        """Switch over: stop the guest, tell the destination which pages are
        stale, send the machine state, let the guest run there; then the
        postcopy sub-machine sends the rest."""
        channel = self._channel
        assert channel is not None
        # QEMU's order: the status first, then STOP; with the pause, STOP,
        # pre-switchover, and postcopy-active once migrate-continue comes
        # (a cancel before then resumes the guest here).
        pause = self.settings.caps["pause-before-switchover"]
        if not pause and not self.status.transition(S.ACTIVE, S.POSTCOPY_ACTIVE):
            raise Cancelled()
        was_running = self._stop_guest()
        stopped_at = time.monotonic()
        if pause:
            self._pause_before_switchover(then=S.POSTCOPY_ACTIVE)
        self._barrier("downtime", last=True)  # postcopy pages go on the main channel
        self._close_multifd()
        need = pending | tracker.sync()
        self._synced()
        package = [Discard.from_runs(*runs(need)).encode(),
                   State(state.capture(self.machine, was_running).to_wire()).encode(),
                   PostcopyRun().encode()]
        postcopy = PostcopySource(self.machine.ram, need, self.stats, self.settings.params)
        self.postcopy = postcopy
        self.stats.remaining = postcopy.left * PAGE_SIZE
        self._channel = None  # the postcopy sub-machine owns it from here
        preempt, self._preempt = self._preempt, None  # and this one
        outcome: Outcome
        try:
            sent = channel.send(package)
            self.stats.transferred += sent
            self.stats.downtime_bytes += sent
            channel.enter_postcopy()
        except OSError as err:
            channel.close()
            if preempt is not None:
                preempt.close()
            outcome = Paused(describe(err))
        else:
            self.times.downtime_ms = ms_since(stopped_at)
            postcopy.attach(channel, preempt)
            try:
                outcome = postcopy.serve()
            finally:
                postcopy.release()
        self._postcopy_loop(postcopy, outcome)

    def _postcopy_loop(self, postcopy: PostcopySource, outcome: Outcome) -> None:
        """Pause and recover until the postcopy sub-machine is done."""
        while isinstance(outcome, Paused):
            self.error = outcome.reason
            log.warning("postcopy paused: %s", outcome.reason)
            self.status.transition({S.POSTCOPY_ACTIVE, S.POSTCOPY_RECOVER}, S.POSTCOPY_PAUSED)
            uri, fd = self._wait_for_resume()
            self._must(self.status.transition(S.POSTCOPY_PAUSED, S.POSTCOPY_RECOVER))
            try:
                channel = connect(uri, fd, postcopy=True, tls=self.tls)
            except (LivemigError, OSError) as err:
                outcome = Paused(describe(err))
                continue
            if channel.sock is None:
                channel.close()
                outcome = Paused("postcopy recovery needs a socket (unix:, tcp: or fd:)")
                continue
            preempt = None
            if self._wants_preempt():  # both channels are made again
                try:
                    preempt = self._open_preempt(uri, fd)
                except (LivemigError, OSError) as err:
                    channel.close()
                    outcome = Paused(describe(err))
                    continue
            postcopy.attach(channel, preempt)
            try:
                recovered = postcopy.handshake(self.header().encode())
                if recovered is not None:
                    outcome = recovered
                    continue
                self.error = None
                self._must(self.status.transition(S.POSTCOPY_RECOVER, S.POSTCOPY_ACTIVE))
                outcome = postcopy.serve()
            finally:
                postcopy.release()
        assert isinstance(outcome, Done)
        self.stats.remaining = 0
        self._end(S.COMPLETED)

    def _wait_for_resume(self) -> tuple[Uri, int | None]:
        with self._resume_cond:
            while self._resume_to is None:
                self._resume_cond.wait()
            target, self._resume_to = self._resume_to, None
        return target

    # --- the end ----------------------------------------------------------------------------
    def _end_guest(self, status: Status) -> None:
        """The guest's run state at the end: postmigrate once it has gone,
        running again here if the job stopped it and it stays here."""
        machine = self.machine
        with machine.lock:
            if status == S.COMPLETED and self.settings.caps["background-snapshot"]:
                pass  # a snapshot: the guest never left, and runs on here
            elif status == S.COMPLETED:
                machine.set_runstate(RunState.POSTMIGRATE)
            elif self._stopped_guest:
                machine.resume()
                self._stopped_guest = False

    def _end(self, status: Status) -> None:
        self.times.end = time.monotonic()
        self._end_guest(status)
        if status == S.COMPLETED:
            # A completed job's mbps is the whole migration's, as QEMU's is:
            # every byte over the time after set-up (a pass's rate before, and
            # none at all after postcopy, which has no passes to measure).
            moving_ms = self.times.total_ms() - self.times.setup_ms
            if moving_ms > 0:
                self.stats.mbps = self.stats.transferred * 8 / moving_ms / 1000
            self._must(self.status.transition({S.ACTIVE, S.DEVICE, S.POSTCOPY_ACTIVE},
                                              S.COMPLETED))
            return
        if status == S.FAILED and self.status.transition(
                {S.SETUP, S.ACTIVE, S.PRE_SWITCHOVER, S.DEVICE}, S.FAILED):
            return
        # Cancelled, or failed while a cancel was under way: the cancel wins.
        self._must(self.status.transition(S.CANCELLING, S.CANCELLED))

    # --- query-migrate ---------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        status = self.status.status
        info: dict[str, Any] = {"status": status.value, "blocked": False}
        if status == S.SETUP:
            return info
        info["setup-time"] = self.times.setup_ms
        info["total-time"] = self.times.total_ms()
        if status == S.COMPLETED:
            info["downtime"] = self.times.downtime_ms or 0
        elif self.status.in_progress:
            info["expected-downtime"] = self.times.expected_downtime_ms
        if self.error is not None and status in (S.FAILED, S.POSTCOPY_PAUSED):
            info["error-desc"] = self.error
        if status != S.FAILED or self.stats.transferred:
            info["ram"] = self.stats.to_qmp()
        throttle = self.machine.cpu_throttle
        if throttle and self.status.in_progress:
            info["cpu-throttle-percentage"] = throttle
        limiter = self.machine.dirty_limiter
        if self.settings.caps["dirty-limit"] and limiter.in_service and self.status.in_progress:
            info["dirty-limit-throttle-time-per-round"] = limiter.throttle_time_per_round_us()
            info["dirty-limit-ring-full-time"] = limiter.ring_full_time_us()
        if self.passes.entries:
            info["livemig-passes"] = self.passes.to_qmp()
        if self.settings.caps["xbzrle"]:
            xbzrle = self.xbzrle
            info["xbzrle-cache"] = (xbzrle.stats.to_qmp() if xbzrle is not None else
                                    {"cache-size": self.settings.params["xbzrle-cache-size"],
                                     "bytes": 0, "pages": 0, "cache-miss": 0,
                                     "cache-miss-rate": 0.0, "encoding-rate": 0.0,
                                     "overflow": 0})
        return info


def stream_settings(settings: Settings) -> StreamSettings | None:
    """The multifd stream the parameters ask for, or None (one channel)."""
    if not settings.caps["multifd"]:
        return None
    params = settings.params
    method = params["multifd-compression"]
    level = {"zlib": params["multifd-zlib-level"], "zstd": params["multifd-zstd-level"]}
    return StreamSettings(params["multifd-channels"], method, level.get(method, 0))


class _LiveRates:
    """Keeps mbps, expected-downtime and dirty-pages-rate fresh during a
    live pass (QEMU shows them within about a second), and samples the
    dirty log each second into ``carried`` (the next pass's pages)."""

    def __init__(self, job: OutgoingMigration, tracker: DirtyTracker,
                 carried: np.ndarray) -> None:
        self._job, self._tracker, self._carried = job, tracker, carried
        now = time.monotonic()
        self._at, self._bytes = now, job.stats.transferred
        self._moved = job.pages_moved()
        self._sampled_at = now

    def update(self) -> None:
        now = time.monotonic()
        elapsed = now - self._at
        if elapsed < RATE_UPDATE_S:
            return
        stats, times = self._job.stats, self._job.times
        bandwidth = (stats.transferred - self._bytes) / elapsed
        moved = self._job.pages_moved()
        ram_rate = max(bandwidth, (moved - self._moved) * PAGE_SIZE / elapsed)
        self._at, self._bytes, self._moved = now, stats.transferred, moved
        stats.mbps = bandwidth * 8 / 1e6
        stats.pages_per_second = int(bandwidth / PAGE_SIZE)
        if ram_rate > 0:
            times.expected_downtime_ms = int(min(stats.remaining / ram_rate * 1000, 2**62))
        if now - self._sampled_at >= DIRTY_SAMPLE_S:
            if self._job.machine.running:
                fresh = self._tracker.sync()
                self._carried |= fresh
                stats.dirty_pages_rate = int(fresh.sum() / (now - self._sampled_at))
            else:
                # A stopped guest dirties nothing (what the VMM writes, the
                # pass's last sync finds): no scan of its whole RAM each second
                # (a few hundred ms at 2 GiB under the write-protect tracker).
                stats.dirty_pages_rate = 0
            self._sampled_at = now
