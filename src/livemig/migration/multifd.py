"""multifd: guest pages over several connections beside the main channel.

The source's job thread cuts each pass into chunks of the dirty mask and
queues them; one thread per channel takes a chunk, finds its zero pages,
compresses the rest if asked (zlib or zstd), and sends it. Socket I/O,
compression and numpy's scans all release the GIL, so the channels run in
parallel.

Order. Within one pass a page is sent once, but the next pass may send it
again on another channel, and the destination must never let the older
copy land last. So every pass ends in a barrier: the source waits until
its queue is empty, sends ``ChannelSync(n)`` on every channel and then
``MultifdFlush(n)`` on the main channel; a destination channel that reads
``ChannelSync(n)`` stops until its main thread has read ``MultifdFlush(n)``
and seen every channel reach ``n``. No page of pass n+1 is applied before
every page of pass n. The machine state follows the last barrier, so it is
applied only once every page is in. After switchover to postcopy the
channels end and pages travel on the main channel (as in QEMU 7.2).

Failures. A channel thread that fails records why, aborts every channel,
and then only drains its queue; the job thread sees the
failure at its next submit or barrier. Nothing here changes a status: the
job owns its status machine.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import LivemigError, MigrationError, MigrationReceiveError
from ..logs import get_logger
from ..memory import PAGE_SIZE, GuestRam
from . import jobthread
from .channel import Channel
from .codec import (
    ChannelSync,
    CompressedRun,
    End,
    Limits,
    PageRun,
    ZeroRun,
    read_record,
)
from .compression import compressor, decompressor
from .pages import ChunkRecords
from .phases import CHANNEL_ACCEPTS, Phase, advance
from .stats import RamStats, RateLimiter

log = get_logger(__name__)

_POLL_S = 0.1  # how often a blocked submit looks for a failed channel
END_WAIT_S = 30.0  # how long the destination waits for a channel's end after the main one


@dataclass(frozen=True)
class StreamSettings:
    """How a multifd stream is encoded: channel count and compression."""

    channels: int
    compression: str = "none"
    level: int = 1

    def header(self) -> dict[str, object]:
        return {"channels": self.channels, "compression": self.compression}


def _describe(err: BaseException, channel: Channel) -> str:
    if isinstance(err, LivemigError):
        return str(err)
    if isinstance(err, OSError):
        return f"multifd {channel.label}: " + channel.describe_write_error(err)
    return jobthread.describe_crash(err)


class MultifdSender:
    """The source's channels and their threads."""

    def __init__(self, channels: Sequence[Channel], ram: GuestRam, settings: StreamSettings,
                 limiter: RateLimiter, stats: RamStats, stats_lock: threading.Lock) -> None:
        self.channels = list(channels)
        self._ram = ram
        self._settings = settings
        self._limiter = limiter
        self._stats = stats
        self._lock = stats_lock
        self._work: queue.Queue[tuple[int, np.ndarray, bool] | None] = queue.Queue(
            maxsize=2 * len(self.channels))
        self.failure: str | None = None
        self._failed = threading.Event()
        self._barrier = 0
        self._threads = [jobthread.start(f"multifd_send_{i}", self._body_for(ch), self._crashed)
                         for i, ch in enumerate(self.channels)]

    # --- the job thread's side --------------------------------------------------------
    def submit(self, first: int, mask: np.ndarray, live: bool) -> None:
        """Queue a chunk (``mask`` is the caller's copy); blocks while the queue is full."""
        item = (first, mask, live)
        while True:
            self._check()
            try:
                self._work.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def barrier(self) -> int:
        """Wait for every queued chunk to go out, then send the next barrier on
        each channel; return its number (the main channel's MultifdFlush)."""
        self._work.join()
        self._check()
        self._barrier += 1
        record = ChannelSync(self._barrier).encode()
        for channel in self.channels:
            self._account(channel.send([record]), None)
        return self._barrier

    def end(self) -> None:
        """After the last barrier: tell every channel it is done."""
        record = End().encode()
        for channel in self.channels:
            self._account(channel.send([record]), None)

    def abort(self) -> None:
        """Make every channel's transfer fail (cancel); any thread."""
        for channel in self.channels:
            channel.abort()

    def close(self) -> None:
        """Stop the threads and release the channels (the job thread, at its end)."""
        self.abort()
        for _ in self._threads:
            while True:
                try:
                    self._work.put(None, timeout=_POLL_S)
                    break
                except queue.Full:
                    self._drain()
        for thread in self._threads:
            thread.join(10)
        for channel in self.channels:
            channel.close()

    def _drain(self) -> None:
        try:
            self._work.get_nowait()
            self._work.task_done()
        except queue.Empty:
            pass

    def _check(self) -> None:
        if self.failure is not None:
            raise MigrationError(self.failure)

    # --- channel threads --------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = reason
        self._failed.set()
        self.abort()

    def _crashed(self, err: BaseException) -> None:
        self._fail(jobthread.describe_crash(err))

    def _body_for(self, channel: Channel) -> Callable[[], None]:
        def body() -> None:
            settings = self._settings
            compress = (None if settings.compression == "none"
                        else compressor(settings.compression, settings.level))
            while True:
                item = self._work.get()
                try:
                    if item is None:
                        return
                    if self._failed.is_set():
                        continue  # broken: only drain, so barriers and close never hang
                    first, mask, live = item
                    try:
                        self._send_chunk(channel, first, mask, live, compress)
                    except Exception as err:
                        self._fail(_describe(err, channel))
                finally:
                    self._work.task_done()
        return body

    def _send_chunk(self, channel: Channel, first: int, mask: np.ndarray, live: bool,
                    compress: Callable[[memoryview], bytes] | None) -> None:
        records = ChunkRecords(self._ram, first, mask, compress=compress)
        if live:
            self._limiter.wait(records.nbytes)
        sent = channel.send(records.buffers, zero_copy=compress is None)
        with self._lock:
            self._stats.duplicate += records.zero
            self._stats.normal += records.normal
        self._account(sent, live)

    def _account(self, sent: int, live: bool | None) -> None:
        with self._lock:
            stats = self._stats
            stats.transferred += sent
            stats.multifd_bytes += sent
            if live is False:
                stats.downtime_bytes += sent
            else:
                stats.precopy_bytes += sent


class MultifdReceiver:
    """The destination's channels: one thread each, writing straight into RAM."""

    def __init__(self, ram: GuestRam, limits: Limits, settings: StreamSettings,
                 stats: RamStats, stats_lock: threading.Lock,
                 on_failure: Callable[[], None], keep_zero_present: bool = False) -> None:
        """``keep_zero_present``: postcopy may follow (GuestRam.zero)."""
        self._ram = ram
        self._keep_zero_present = keep_zero_present
        self._limits = limits
        self._settings = settings
        self._stats = stats
        self._lock = stats_lock
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._reached: dict[int, int] = {}
        self._released = 0
        self.failure: str | None = None
        self.channels: list[Channel] = []
        self._threads: list[threading.Thread] = []

    def add(self, index: int, channel: Channel) -> None:
        """Start receiving on channel ``index`` (its hello already read)."""
        if index in self._reached:
            raise MigrationReceiveError(f"multifd channel {index} connected twice")
        self._reached[index] = 0
        self.channels.append(channel)
        self._threads.append(jobthread.start(
            f"multifd_recv_{index}", lambda: self._receive(index, channel), self._crashed))

    # --- the job thread's side -------------------------------------------------------------
    def flush(self, barrier: int) -> None:
        """MultifdFlush(barrier) on the main channel: wait until every channel
        has reached it, then let them all go on."""
        with self._cond:
            if barrier != self._released + 1:
                raise MigrationReceiveError(
                    f"multifd barrier {barrier} out of order (expected {self._released + 1})")
            while self.failure is None and min(self._reached.values()) < barrier:
                self._cond.wait()
            self._check()
            self._released = barrier
            self._cond.notify_all()

    def finish(self) -> None:
        """The main stream ended: every channel must end too (they were sent
        their end before the main channel's last flush)."""
        for thread in self._threads:
            thread.join(END_WAIT_S)
            if thread.is_alive():
                self._fail("multifd: a channel did not end with the main stream")
        self._check()

    def abort(self) -> None:
        for channel in self.channels:
            channel.abort()

    def close(self) -> None:
        self.abort()
        with self._cond:
            self._released = 1 << 62  # release any channel waiting at a barrier
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(10)
        for channel in self.channels:
            channel.close()

    def _check(self) -> None:
        if self.failure is not None:
            raise MigrationReceiveError(self.failure)

    # --- channel threads ---------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        with self._cond:
            if self.failure is None:
                self.failure = reason
            self._cond.notify_all()
        self.abort()
        self._on_failure()

    def _crashed(self, err: BaseException) -> None:
        self._fail(jobthread.describe_crash(err))

    def _receive(self, index: int, channel: Channel) -> None:
        try:
            self._receive_records(index, channel)
        except (LivemigError, OSError, EOFError) as err:
            self._fail(f"multifd channel {index}: {err}")

    def _receive_records(self, index: int, channel: Channel) -> None:
        ram, reader = self._ram, channel.reader
        decompress = (None if self._settings.compression == "none"
                      else decompressor(self._settings.compression))
        phase = Phase.CHANNEL
        while True:
            offset = reader.offset
            record = read_record(reader, self._limits)
            phase = advance(phase, record, offset, CHANNEL_ACCEPTS)
            if isinstance(record, PageRun | CompressedRun | ZeroRun):
                start, length = record.first * PAGE_SIZE, record.count * PAGE_SIZE
                if isinstance(record, PageRun):
                    reader.readinto(ram.view[start:start + length])
                elif isinstance(record, CompressedRun):
                    if decompress is None:
                        raise MigrationReceiveError(
                            "a compressed run on a stream without compression")
                    packed = reader.read(record.length)
                    ram.view[start:start + length] = decompress(packed, length)
                else:
                    ram.zero(start, length, keep_present=self._keep_zero_present)
                with self._lock:
                    if isinstance(record, ZeroRun):
                        self._stats.duplicate += record.count
                    else:
                        self._stats.normal += record.count
                    self._stats.multifd_bytes += reader.offset - offset
            elif isinstance(record, ChannelSync):
                self._wait_at(index, record.barrier, offset)
            else:  # End
                return

    def _wait_at(self, index: int, barrier: int, offset: int) -> None:
        with self._cond:
            if barrier != self._reached[index] + 1:
                raise MigrationReceiveError(
                    f"multifd channel {index}: barrier {barrier} out of order "
                    f"(at byte offset {offset})")
            self._reached[index] = barrier
            self._cond.notify_all()
            while self.failure is None and self._released < barrier:
                self._cond.wait()
