"""The destination's postcopy-preempt channel: requested pages, on their own.

With ``postcopy-preempt`` the source opens a second connection at the start
of the migration; after switchover it sends the pages the destination asked
for on it, so a faulting vCPU never waits behind background pages queued on
the main channel. This thread reads that channel and places its pages with
a staging buffer of its own, alongside the main channel's receiving thread.
It ends at the channel's END (which the source sends before the main
channel's END, once every requested page has gone out). A failure here
breaks the main channel too, so postcopy pauses and both are made again at
recovery.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import LivemigError, MigrationReceiveError
from ..memory import PAGE_SIZE
from . import fault_trace, jobthread
from .channel import Channel
from .codec import End, Limits, PageRun, ZeroRun, read_record
from .postcopy_dest import PostcopyDestination, Staging
from .stats import RamStats

# How long the main channel's END waits for this channel's (the source sends
# this one's first; past this the source is broken or hostile).
END_WAIT_S = 30.0


class PreemptReceiver:
    """Reads one preempt channel, from switchover (or recovery) to its END."""

    def __init__(self, channel: Channel, postcopy: PostcopyDestination, limits: Limits,
                 stats: RamStats, stats_lock: threading.Lock,
                 on_break: Callable[[str], None]) -> None:
        self.channel = channel
        self._postcopy = postcopy
        self._limits = limits
        self._stats = stats
        self._stats_lock = stats_lock
        self._on_break = on_break
        self._staging = Staging()
        self._ended = threading.Event()
        self._closing = False  # close() aborts the channel: the error that follows is ours
        self.failure: str | None = None
        self._thread = jobthread.start("mig/dst/preempt", self._run, self._crashed)

    def _run(self) -> None:
        try:
            self._receive()
        except (LivemigError, OSError, EOFError) as err:
            self._fail(f"postcopy-preempt channel: {err or type(err).__name__}")

    def _receive(self) -> None:
        reader = self.channel.reader
        while True:
            offset = reader.offset
            record = read_record(reader, self._limits)
            if isinstance(record, PageRun | ZeroRun):
                fault_trace.mark("received", record.first)
            if isinstance(record, PageRun):
                length = record.count * PAGE_SIZE
                if length > len(self._staging.view):
                    raise MigrationReceiveError(
                        f"postcopy page run of {record.count} pages is larger than allowed")
                reader.readinto(self._staging.view[:length])
                self._postcopy.place(record.first, record.count, self._staging)
                with self._stats_lock:
                    self._stats.normal += record.count
                    self._stats.postcopy_bytes += length
            elif isinstance(record, ZeroRun):
                self._postcopy.place_zero(record.first, record.count)
                with self._stats_lock:
                    self._stats.duplicate += record.count
            elif isinstance(record, End):
                self._ended.set()
                return
            else:
                raise MigrationReceiveError(
                    f"{type(record).__name__} record at byte offset {offset}: "
                    "only pages may come on this channel")

    def _crashed(self, err: BaseException) -> None:
        self._fail(jobthread.describe_crash(err))

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self._ended.set()
        if not self._closing:
            self._on_break(reason)

    @property
    def received(self) -> int:
        return self.channel.reader.offset

    def wait_end(self) -> None:
        """The main channel's END came: wait for this channel's."""
        if not self._ended.wait(END_WAIT_S):
            raise MigrationReceiveError("the postcopy-preempt channel did not end "
                                        f"within {END_WAIT_S:.0f} s of the main channel")
        if self.failure is not None:
            raise MigrationReceiveError(self.failure)

    def close(self) -> None:
        """Stop reading (abort wakes the thread) and close the channel."""
        self._closing = True
        self.channel.abort()
        self._thread.join(END_WAIT_S)
        if not self._thread.is_alive():  # never close an fd a thread may still use
            self.channel.close()
