"""cpr-transfer's cpr channel: guest RAM's file descriptor handed to a new
process on the same host (QEMU 10's mode for a local live upgrade).

The new process is started with ``-incoming`` naming a cpr channel (a unix
socket). Before it builds its machine it waits there for the old process's
one message: a :class:`~.codec.CprState` naming the descriptors that come
with it (``SCM_RIGHTS``, see unix(7)). It maps guest RAM from the
descriptor of its memory backend of the same id, binds its main channel,
answers :class:`~.codec.CprAccepted` and closes the cpr channel. Only then
does the old process connect to the main channel and send the rest, as
``x-ignore-shared`` does: a header naming the RAM's identity, no pages, the
device state.

Both functions here are small and blocking: the destination's runs at
start-up, before any monitor exists (as in QEMU, whose new process does not
listen for monitor connections until it has the cpr state); the source's
runs on the migration job's thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Callable

from ..errors import LivemigError, MigrationError, StreamError, StreamTruncated
from .codec import (
    MAX_CPR_FDS,
    BufferedReader,
    CprAccepted,
    CprState,
    Limits,
    read_cpr_state,
    read_return,
)
from .listener import listen_unix
from .uri import Uri

MESSAGE_MAX = 64 << 10   # the cpr message is a few hundred bytes; one recvmsg takes it
POLL_S = 0.1             # how often the source's wait for the answer looks for a cancel

RAM_FD = "memory-backend:"  # + the backend's id: that backend's descriptor


class ReceivedCpr:
    """The destination's side once the message is in: the descriptors by
    name (each owned here until :meth:`take` hands it on)."""

    def __init__(self, conn: socket.socket, fds: dict[str, int], path: str) -> None:
        self._conn = conn
        self.fds = fds
        self.path = path

    def take(self, name: str) -> int | None:
        return self.fds.pop(name, None)

    def accept(self) -> None:
        """Tell the source that the main channel now listens; close the channel."""
        try:
            self._conn.sendall(CprAccepted().encode())
        except OSError as err:
            raise MigrationError(f"cpr channel {self.path}: could not answer the source: "
                                 f"{err.strerror or err}") from err
        finally:
            self.close()

    def close(self) -> None:
        self._conn.close()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _listen(path: str) -> socket.socket:
    try:
        return listen_unix(path, 1)
    except OSError as err:
        raise MigrationError(f"Failed to listen on '{path}': {err.strerror or err}") from err


def receive_state(uri: Uri) -> ReceivedCpr:
    """Destination, at start-up: wait for the source on the cpr channel and
    read its message. Any fault is a MigrationError naming the channel."""
    path = uri.target
    listener = _listen(path)
    try:
        conn, _peer = listener.accept()
    except OSError as err:
        raise MigrationError(f"cpr channel {path}: {err.strerror or err}") from err
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    fds: list[int] = []
    try:
        first, fds, flags, _addr = socket.recv_fds(conn, MESSAGE_MAX, MAX_CPR_FDS,
                                                  socket.MSG_CMSG_CLOEXEC)
        if flags & socket.MSG_CTRUNC:
            raise MigrationError(f"more than {MAX_CPR_FDS} descriptors")
        pending = [first]

        def fill(view: memoryview) -> int:
            # The bytes that came with the descriptors first, then the socket.
            if pending:
                data = pending.pop()
                view[:len(data)] = data  # the reader's buffer (256 KiB) holds MESSAGE_MAX
                return len(data)
            return conn.recv_into(view)

        state = read_cpr_state(BufferedReader(fill), len(fds))
    except (LivemigError, OSError) as err:
        for fd in fds:
            os.close(fd)
        conn.close()
        why = ("the peer closed it before the whole cpr state came"
               if isinstance(err, StreamTruncated) else str(err))
        raise MigrationError(f"cpr channel {path}: {why}") from err
    return ReceivedCpr(conn, dict(zip(state.names, fds, strict=True)), path)


def send_state(uri: Uri, fds: dict[str, int], check_cancel: Callable[[], None]) -> None:
    """Source, on the job thread: hand ``fds`` (name: descriptor, which stay
    ours as well) to the new process and wait until it has mapped them and
    listens on its main channel. ``check_cancel`` raises to end the wait."""
    path = uri.target
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError as err:
            raise MigrationError(f"Failed to connect to '{path}': "
                                 f"{err.strerror or err}") from err
        message = CprState(tuple(fds)).encode()
        try:
            sent = socket.send_fds(sock, [message], list(fds.values()))
            if sent < len(message):
                sock.sendall(message[sent:])
        except OSError as err:
            raise MigrationError(f"cpr-transfer: could not send on the cpr channel: "
                                 f"{err.strerror or err}") from err
        while not select.select([sock], [], [], POLL_S)[0]:
            check_cancel()
        try:
            answer = sock.recv(1)
        except OSError:
            answer = b""  # a reset is a hang-up too
        if not answer:
            raise MigrationError("cpr-transfer: the destination closed the cpr channel "
                                 "without taking the guest's memory (its log says why)")
        record = read_return(BufferedReader.over_bytes(answer), Limits(0))
        if not isinstance(record, CprAccepted):
            raise MigrationError(f"cpr-transfer: the destination answered "
                                 f"{type(record).__name__} on the cpr channel")
    except StreamError as err:
        raise MigrationError(f"cpr-transfer: bad answer on the cpr channel: {err}") from err
    finally:
        sock.close()
