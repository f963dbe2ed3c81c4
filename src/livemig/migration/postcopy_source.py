"""The source side of postcopy, from switchover to completion: a sub-machine.

The guest is stopped here and runs on the destination. This side holds the
pages the destination still lacks (``need``) and sends them: the
return-path reader thread reads the destination's requests and sends those
pages at once; the job thread sends the rest in the background, paced by
``max-postcopy-bandwidth``. With ``postcopy-preempt`` requested pages go on
a channel of their own, so they never queue behind background data.

A page is claimed (taken out of ``need``, under ``_send_lock``) and then
sent with only its channel's lock held, so a background send blocked on a
full socket never holds up a requested page. END goes out once nothing
claimed is still being sent: first on the preempt channel, then on the
main one.

The port is narrow: the job hands a channel in (:meth:`attach`), runs the
recovery handshake on it if it is a recovery channel (:meth:`handshake`),
then :meth:`serve` returns an outcome, :class:`Done` or :class:`Paused`,
and the channel is released. The job alone changes the migration's status.
Every page is kept until the destination has it, so a pause loses nothing:
after recovery the destination says which pages it has and only the rest
are resent.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LivemigError
from ..logs import get_logger
from ..memory import PAGE_SIZE, GuestRam
from . import fault_trace, faults, jobthread
from .channel import Channel
from .codec import (
    POSTCOPY_MAX_RUN,
    End,
    Limits,
    PageRequest,
    PagesHeld,
    Resume,
    read_return,
)
from .codec import (
    Done as DoneRecord,
)
from .pages import ChunkRecords
from .stats import RamStats

log = get_logger(__name__)

# Background pages go out in runs of at most this many pages (2 MiB):
# longer runs stream faster, shorter ones make a page a vCPU waits for queue
# behind less. Since pages go without a copy (splice.py), 512 pages and a
# 1 MiB send buffer halve block time and time to complete against 128 pages
# and 128 KiB, for sequential and random guests alike, at the cost of a
# longer wait per fault (docs/benchmarks.md has the measurements).
BACKGROUND_PAGES = 512
# While postcopy runs, the send buffer holds only this much background data
# ahead of a requested page (the precopy default of 4 MiB adds milliseconds).
POSTCOPY_SEND_BUFFER = 1 << 20
# How long release() waits for the reader after aborting its socket (the
# abort wakes it at once; past this something is badly wrong).
READER_JOIN_S = 30.0


@dataclass(frozen=True)
class Done:
    """Every page is on the destination, which confirmed it."""


@dataclass(frozen=True)
class Paused:
    """The channel broke (or migrate-pause broke it); ``reason`` says how."""

    reason: str


Outcome = Done | Paused


def describe(err: BaseException) -> str:
    if isinstance(err, EOFError):
        return "the destination closed the migration channel"
    if isinstance(err, OSError) and not isinstance(err, LivemigError):
        return f"migration channel error: {err.strerror or err}"
    return str(err)


class PostcopySource:
    def __init__(self, ram: GuestRam, need: np.ndarray, stats: RamStats,
                 params: dict[str, Any]) -> None:
        self.ram = ram
        self.need = need
        self.stats = stats
        self._params = params
        self._limits = Limits(ram.pages)
        self._left = int(need.sum())
        self._channel: Channel | None = None
        self._preempt: Channel | None = None   # postcopy-preempt's page channel
        self._cond = threading.Condition()
        # Held while changing need/_left/_cursor/_in_flight: the background
        # sender and the return-path reader both claim pages.
        self._send_lock = threading.Lock()
        # One writer at a time on each channel (and on the stats they count).
        self._main_lock = threading.Lock()
        self._preempt_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._in_flight = 0  # runs claimed and not yet sent
        self._broken: str | None = None
        self._done = False
        self._resumed = False  # the destination's page bitmap came: need is rebuilt
        self._reader: threading.Thread | None = None
        self._cursor = 0
        self._next_send = time.monotonic()
        self._end_sent = False

    @property
    def left(self) -> int:
        return self._left

    # --- control (QMP thread) ---------------------------------------------------
    def pause(self) -> None:
        """migrate-pause: break the channel; serve() then returns Paused."""
        self._break("paused by migrate-pause")

    def parameters_changed(self) -> None:
        with self._cond:
            self._next_send = time.monotonic()
            self._cond.notify_all()

    def _break(self, reason: str) -> None:
        with self._cond:
            channels = (self._channel, self._preempt)
            if self._broken is None:
                self._broken = reason
            self._cond.notify_all()
        for channel in channels:  # either breaking pauses both
            if channel is not None:
                channel.abort()

    # --- the job thread -----------------------------------------------------------
    def attach(self, channel: Channel, preempt: Channel | None = None) -> None:
        """Use ``channel`` (and ``preempt`` for requested pages, with
        postcopy-preempt) from now on and start reading the return path."""
        channel.shrink_send_buffer(POSTCOPY_SEND_BUFFER)
        with self._cond:
            self._channel = channel
            self._preempt = preempt
            self._in_flight = 0
            self._broken = None
            self._resumed = False
            self._end_sent = False
        self._reader = jobthread.start("mig/src/rp", lambda: self._read_return_path(channel),
                                       self._reader_crashed)

    def handshake(self, header: bytes) -> Outcome | None:
        """On a recovery channel: ask to resume, wait for the destination's
        page bitmap. None when recovered, else Paused."""
        try:
            self._send([header, Resume().encode()])
        except OSError as err:
            return Paused(describe(err))
        with self._cond:
            while not self._resumed and self._broken is None:
                self._cond.wait()
            if self._broken is not None:
                return Paused(self._broken)
        self.stats.remaining = self._left * PAGE_SIZE
        return None

    def serve(self) -> Outcome:
        """Send background pages, then END; return once the destination
        confirms (Done) or the channel breaks (Paused). Requested pages are
        sent by the return-path reader as they come."""
        try:
            while True:
                with self._cond:
                    while True:
                        if self._broken is not None:
                            return Paused(self._broken)
                        if self._done:
                            fault_trace.flush()
                            return Done()
                        if not self._left:
                            if not self._end_sent and not self._in_flight:
                                break
                            self._cond.wait()
                            continue
                        limit = self._params["max-postcopy-bandwidth"]
                        delay = self._next_send - time.monotonic() if limit > 0 else 0.0
                        if delay > 0:
                            self._cond.wait(delay)
                            continue
                        break
                self._wait_writable()
                if self._left:
                    self._send_background(self._params["max-postcopy-bandwidth"])
                elif not self._end_sent:
                    # Marked before sending: the destination's DONE may be
                    # read (on the other thread) before the send returns.
                    with self._cond:
                        self._end_sent = True
                    if self._preempt is not None:
                        self._send([End().encode()], preempt=True)
                    self._send([End().encode()])
        except (LivemigError, OSError, EOFError) as err:
            self._break(describe(err))
            return Paused(self._broken or describe(err))

    def release(self) -> None:
        """End the use of the current channel: stop its reader, close it."""
        with self._cond:
            channel, self._channel = self._channel, None
            preempt, self._preempt = self._preempt, None
        if preempt is not None:  # nothing reads it here: close at once
            preempt.abort()
            preempt.close()
        if channel is None:
            return
        channel.abort()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(READER_JOIN_S)
            if reader.is_alive():  # never close an fd a thread may still use
                log.error("return-path reader did not stop; its channel is left open")
                return
        channel.close()

    # --- the return-path reader ------------------------------------------------------
    def _read_return_path(self, channel: Channel) -> None:
        """Read the destination's messages; serve page requests right here,
        so a waiting vCPU costs one thread hand-off less."""
        try:
            while True:
                msg = read_return(channel.reader, self._limits)
                faults.check("return-path")
                if isinstance(msg, PageRequest):
                    fault_trace.mark("request-read", msg.first)
                    self.stats.postcopy_requests += 1
                    self._send_requested(msg)
                    fault_trace.mark("sent", msg.first)
                    continue
                with self._send_lock, self._cond:
                    if isinstance(msg, PagesHeld):
                        np.logical_not(msg.mask(self.ram.pages), out=self.need)
                        self._left = int(self.need.sum())
                        self._resumed = True
                    else:
                        if self._left or not self._end_sent:
                            raise LivemigError(
                                "return path: the destination reported completion "
                                f"while {self._left} pages were still to be sent")
                        self._done = True
                    self._cond.notify_all()
                if isinstance(msg, DoneRecord):
                    return
        except (LivemigError, OSError, EOFError) as err:
            self._break(describe(err))

    def _reader_crashed(self, err: BaseException) -> None:
        self._break(jobthread.describe_crash(err))

    # --- sending ------------------------------------------------------------------------
    def _wait_writable(self) -> None:
        """Wait for room in the socket before taking the send lock, so a
        background send does not hold it while blocked on a full buffer
        (the return-path thread needs it for requested pages)."""
        channel = self._channel
        if channel is None or channel.sock is None:
            return
        poller = select.poll()
        poller.register(channel.sock.fileno(), select.POLLOUT)
        poller.poll(100)  # at worst the send below blocks, as it would anyway

    def _send(self, buffers: list[bytes | memoryview], preempt: bool = False,
              zero_copy: bool = False) -> None:
        """Send on the main channel (or the preempt one), one writer at a time.
        ``zero_copy``: RAM pages, sent by reference (the guest is stopped)."""
        channel = self._preempt if preempt else self._channel
        if channel is None:
            raise LivemigError("no channel")
        with self._preempt_lock if preempt else self._main_lock:
            sent = channel.send(buffers, zero_copy)
        with self._stats_lock:
            self.stats.transferred += sent
            self.stats.postcopy_bytes += sent

    def _claim(self, first: int, count: int) -> ChunkRecords | None:
        """Take the needed pages of [first, +count) (count <= POSTCOPY_MAX_RUN)
        out of ``need``; the records to send them. The caller holds _send_lock."""
        mask = self.need[first:first + count].copy()
        taken = int(mask.sum())
        if not taken:
            return None
        records = ChunkRecords(self.ram, first, mask)
        self.need[first:first + count] = False
        self._left -= taken
        self._in_flight += 1
        stats = self.stats
        stats.duplicate += records.zero
        stats.normal += records.normal
        stats.remaining = self._left * PAGE_SIZE
        return records

    def _send_claimed(self, records: list[ChunkRecords], preempt: bool = False) -> None:
        """Send runs claimed earlier; END may follow once none is in flight."""
        try:
            for run in records:
                self._send(run.buffers, preempt, zero_copy=True)
        finally:
            with self._cond:
                self._in_flight -= len(records)
                self._cond.notify_all()

    def _send_requested(self, request: PageRequest) -> None:
        end = request.first + request.count
        with self._send_lock:
            claimed = []
            for first in range(request.first, end, POSTCOPY_MAX_RUN):
                run = self._claim(first, min(POSTCOPY_MAX_RUN, end - first))
                if run is not None:
                    claimed.append(run)
            # Carry on in the background right after what was asked for: a
            # guest that faults on page n usually wants n+1 next.
            self._cursor = end % self.ram.pages
        self._send_claimed(claimed, preempt=self._preempt is not None)

    def _send_background(self, limit: int) -> None:
        """One background run from the cursor on."""
        with self._send_lock:
            after = self.need[self._cursor:]
            if after.any():
                first = self._cursor + int(np.argmax(after))
            else:
                first = int(np.argmax(self.need))
            count = min(BACKGROUND_PAGES, self.ram.pages - first)
            run = self._claim(first, count)
            self._cursor = (first + count) % self.ram.pages
        if run is None:
            return
        self._send_claimed([run])
        if limit > 0:
            with self._cond:
                self._next_send = max(self._next_send, time.monotonic()) + run.nbytes / limit
