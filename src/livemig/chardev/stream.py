"""A connected byte stream (socket or stdio) as the servers see it."""

from __future__ import annotations

import array
import os
import socket
import threading


class Stream:
    """Blocking reads on one thread, writes from any thread (serialised).

    File descriptors that arrive with SCM_RIGHTS on a unix socket are kept
    in ``received_fds`` for a later ``getfd`` to claim.
    """

    def __init__(self, sock: socket.socket | None = None,
                 rfd: int | None = None, wfd: int | None = None, label: str = "") -> None:
        self._sock = sock
        self._rfd, self._wfd = rfd, wfd
        self._wlock = threading.Lock()
        self.label = label
        self.received_fds: list[int] = []
        self.closed = False

    def read(self, size: int = 65536) -> bytes:
        """Up to ``size`` bytes; b"" at end of stream or after close()."""
        if self.closed:
            return b""
        try:
            if self._sock is None:
                assert self._rfd is not None
                return os.read(self._rfd, size)
            if self._sock.family == socket.AF_UNIX:
                fds = array.array("i")
                data, ancdata, _flags, _addr = self._sock.recvmsg(
                    size, socket.CMSG_SPACE(16 * fds.itemsize))
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(payload) - len(payload) % fds.itemsize
                        fds.frombytes(payload[:usable])
                self.received_fds.extend(fds)
                return data
            return self._sock.recv(size)
        except OSError:
            return b""

    def write(self, data: bytes) -> bool:
        """Write all of ``data``; False if the peer has gone."""
        if self.closed:
            return False
        with self._wlock:
            try:
                if self._sock is not None:
                    self._sock.sendall(data)
                else:
                    assert self._wfd is not None
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._wfd, view):]
                return True
            except OSError:
                return False

    def shutdown(self) -> None:
        """Make blocked reads and writes on this stream end, from any thread.
        The descriptor stays open until close() (by the stream's owner)."""
        if self._sock is not None and not self.closed:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take_fd(self) -> int | None:
        return self.received_fds.pop(0) if self.received_fds else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        for fd in self.received_fds:
            os.close(fd)
        self.received_fds.clear()
