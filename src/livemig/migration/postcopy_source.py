"""The source side of postcopy, from switchover to completion.

The guest is stopped here and runs on the destination. This side holds the
pages the destination still lacks (``need``) and sends them: the
return-path thread reads the destination's requests and sends those pages
at once; the job thread sends the rest in the background, paced by
``max-postcopy-bandwidth``. If the channel breaks, the job pauses (``postcopy-paused``) and
keeps every page until ``migrate`` with ``resume: true`` brings a new channel;
the destination then says which pages it has and only the rest are resent.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from ..errors import LivemigError, MigrationSendError
from ..memory import PAGE_SIZE
from . import return_path as rp
from .channel import Channel, connect
from .pages import ChunkRecords
from .wire import POSTCOPY_MAX_RUN, TAG_END, TAG_RESUME

if TYPE_CHECKING:
    from .outgoing import OutgoingMigration

log = logging.getLogger(__name__)

# Background pages go out in runs of at most this many pages (512 KiB):
# longer runs stream faster, shorter ones make a page a vCPU waits for queue
# behind less (docs/benchmarks.md has the measurements).
BACKGROUND_PAGES = 128
# While postcopy runs, the send buffer holds only this much background data
# ahead of a requested page (the precopy default of 4 MiB adds milliseconds).
POSTCOPY_SEND_BUFFER = 128 << 10


class Broken(MigrationSendError):
    """The channel failed; the text says how."""


def describe(err: BaseException) -> str:
    if isinstance(err, EOFError):
        return "the destination closed the migration channel"
    if isinstance(err, OSError) and not isinstance(err, LivemigError):
        return f"migration channel error: {err.strerror or err}"
    return str(err)


class PostcopySource:
    def __init__(self, job: OutgoingMigration, channel: Channel, need: np.ndarray) -> None:
        self.job = job
        self.ram = job.machine.ram
        self.need = need
        self._left = int(need.sum())
        self._channel: Channel | None = channel
        self._cond = threading.Condition()
        # Held while sending and while changing need/_left/_cursor: the
        # background sender and the return-path reader both send pages.
        self._send_lock = threading.Lock()
        self._broken: str | None = None
        self._done = False
        self._resumed = False  # the destination's page bitmap came: need is rebuilt
        self._resume_uri: str | None = None
        self._reader: threading.Thread | None = None
        self._cursor = 0
        self._next_send = time.monotonic()
        self._end_sent = False

    # --- control (QMP thread) ---------------------------------------------------
    def pause(self) -> None:
        """migrate-pause: break the channel; the job thread then pauses."""
        with self._cond:
            channel = self._channel
            if self._broken is None:
                self._broken = "paused by migrate-pause"
            self._cond.notify_all()
        if channel is not None:
            channel.abort()

    def resume(self, uri: str) -> None:
        """migrate resume=true: recover over a new channel to ``uri``."""
        with self._cond:
            self._resume_uri = uri
            self._cond.notify_all()

    def parameters_changed(self) -> None:
        with self._cond:
            self._next_send = time.monotonic()
            self._cond.notify_all()

    # --- the job thread -----------------------------------------------------------
    def run(self) -> None:
        """Return once every page is on the destination."""
        assert self._channel is not None
        self._channel.shrink_send_buffer(POSTCOPY_SEND_BUFFER)
        self._start_reader(self._channel)
        while True:
            try:
                if self._channel is None:
                    self._recover()
                self._serve()
                self._release_channel()
                return
            except (LivemigError, OSError, EOFError) as err:
                self._release_channel()
                if self._done:
                    return
                self._paused(err)

    def _start_reader(self, channel: Channel) -> None:
        self._reader = threading.Thread(target=self._read_return_path, args=(channel,),
                                        name="mig/src/rp", daemon=True)
        self._reader.start()

    def _read_return_path(self, channel: Channel) -> None:
        """Read the destination's messages; serve page requests right here,
        so a waiting vCPU costs one thread hand-off less."""
        try:
            while True:
                msg = rp.read_message(channel, self.ram.pages)
                if isinstance(msg, rp.Request):
                    self.job.stats.postcopy_requests += 1
                    self._send_requested(msg)
                    continue
                with self._send_lock, self._cond:
                    if isinstance(msg, rp.Have):
                        np.logical_not(msg.placed, out=self.need)
                        self._left = int(self.need.sum())
                        self._resumed = True
                    else:
                        if self._left or not self._end_sent:
                            raise MigrationSendError(
                                "return path: the destination reported completion "
                                f"while {self._left} pages were still to be sent")
                        self._done = True
                    self._cond.notify_all()
                if isinstance(msg, rp.Done):
                    return
        except (LivemigError, OSError, EOFError) as err:
            with self._cond:
                if self._broken is None:
                    self._broken = describe(err)
                self._cond.notify_all()
            channel.abort()

    def _serve(self) -> None:
        """Send background pages, then END; return on DONE. (Requested pages
        are sent by the return-path reader as they come.)"""
        params = self.job.settings.params
        while True:
            with self._cond:
                while True:
                    if self._broken is not None:
                        raise Broken(self._broken)
                    if self._done:
                        return
                    if not self._left:
                        if not self._end_sent:
                            break
                        self._cond.wait()
                        continue
                    limit = params["max-postcopy-bandwidth"]
                    delay = self._next_send - time.monotonic() if limit > 0 else 0.0
                    if delay > 0:
                        self._cond.wait(delay)
                        continue
                    break
            self._wait_writable()
            with self._send_lock:
                if self._left:
                    self._send_background(params["max-postcopy-bandwidth"])
                elif not self._end_sent:
                    self._send([bytes([TAG_END])])
                    self._end_sent = True

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

    def _send(self, buffers: list[bytes | memoryview]) -> None:
        channel = self._channel
        if channel is None:
            raise Broken("no channel")
        self.job.send(channel, buffers, "postcopy")

    def _send_run(self, first: int, count: int) -> int:
        """Send the needed pages of [first, +count) (count <= POSTCOPY_MAX_RUN).
        The caller holds _send_lock."""
        mask = self.need[first:first + count].copy()
        sent = int(mask.sum())
        if not sent:
            return 0
        records = ChunkRecords(self.ram, first, mask)
        self._send(records.buffers)
        self.need[first:first + count] = False
        self._left -= sent
        stats = self.job.stats
        stats.duplicate += records.zero
        stats.normal += records.normal
        stats.remaining = self._left * PAGE_SIZE
        return records.nbytes

    def _send_requested(self, request: rp.Request) -> None:
        end = request.first + request.count
        with self._send_lock:
            for first in range(request.first, end, POSTCOPY_MAX_RUN):
                self._send_run(first, min(POSTCOPY_MAX_RUN, end - first))
            # Carry on in the background right after what was asked for: a
            # guest that faults on page n usually wants n+1 next.
            self._cursor = end % self.ram.pages
        if not self._left:
            with self._cond:
                self._cond.notify_all()  # the background thread sends END

    def _send_background(self, limit: int) -> None:
        """One background run from the cursor on. The caller holds _send_lock."""
        after = self.need[self._cursor:]
        if after.any():
            first = self._cursor + int(np.argmax(after))
        else:
            first = int(np.argmax(self.need))
        count = min(BACKGROUND_PAGES, self.ram.pages - first)
        nbytes = self._send_run(first, count)
        self._cursor = (first + count) % self.ram.pages
        if limit > 0:
            with self._cond:
                self._next_send = max(self._next_send, time.monotonic()) + nbytes / limit

    def _release_channel(self) -> None:
        with self._cond:
            channel, self._channel = self._channel, None
        if channel is None:
            return
        channel.abort()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        channel.close()

    def _paused(self, err: BaseException) -> None:
        reason = describe(err)
        log.warning("postcopy paused: %s", reason)
        with self._cond:
            self._broken = None
            self._resumed = False
            self._end_sent = False
        self.job.error = reason
        self.job.set_status("postcopy-paused")

    def _recover(self) -> None:
        """Wait for migrate resume=true, then handshake over the new channel."""
        with self._cond:
            while self._resume_uri is None:
                self._cond.wait()
            uri, self._resume_uri = self._resume_uri, None
        self.job.set_status("postcopy-recover")
        channel = connect(uri, self.job.take_fd)
        if channel.sock is None:
            channel.close()
            raise MigrationSendError("postcopy recovery needs a socket (unix:, tcp: or fd:)")
        channel.shrink_send_buffer(POSTCOPY_SEND_BUFFER)
        with self._cond:
            self._channel = channel
        self._send([self.job.header().encode(), bytes([TAG_RESUME])])
        self._start_reader(channel)
        with self._cond:
            while not self._resumed and self._broken is None:
                self._cond.wait()
            if self._broken is not None:
                raise Broken(self._broken)
        self.job.stats.remaining = self._left * PAGE_SIZE
        self.job.error = None
        self.job.set_status("postcopy-active")
