"""The destination's side of a transport: where incoming connections arrive.

Apart from :mod:`channel` so that ``-incoming URI`` can bind at start-up
without loading the codec and the channel machinery (they load with the
first connection): a bad address is still a start-up error.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import MigrationError
from .uri import Uri

if TYPE_CHECKING:
    from .channel import Channel
    from .tls import TlsConfig

BACKLOG = 256  # a main channel and up to 255 multifd channels may queue at once


def tcp_host(host: str) -> str | None:
    """The host to bind or connect to: '' and '0' mean any (None)."""
    return None if host in ("", "0") else host


def open_stream_file(uri: Uri, write: bool) -> int:
    """``file:PATH[,offset=N]``: the descriptor, at the stream's first byte.
    A save truncates the file first (as QEMU): bytes before the offset read
    as zeros unless the caller writes them."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if write else os.O_RDONLY
    try:
        fd = os.open(uri.target, flags | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise MigrationError(f"Could not open '{uri.target}': {err.strerror}") from err
    try:
        os.lseek(fd, uri.offset, os.SEEK_SET)
    except OSError as err:
        os.close(fd)
        raise MigrationError(f"Could not seek to offset {uri.offset} of '{uri.target}': "
                             f"{err.strerror}") from err
    return fd


TakeFd = Callable[[str], int]


def incoming_fd(uri: Uri, take_fd: TakeFd) -> int:
    """``fd:N`` (an inherited descriptor) or ``fd:NAME`` (one handed over
    with getfd), as QEMU's incoming side takes either."""
    if uri.target.isdigit():
        return int(uri.target)
    return take_fd(uri.target)


UNIX_PATH_MAX = 108   # sizeof(sockaddr_un.sun_path), <linux/un.h>
_STAGING = itertools.count()


def listen_unix(path: str, backlog: int) -> socket.socket:
    """A unix socket listening at ``path``, which appears only once it listens.

    bind() makes the file and listen() comes after it: a peer that waits for
    the file and connects in between is refused. So bind a private name in
    the same folder, listen, and rename it into place (rename is atomic and
    the socket stays bound to the inode). Raises OSError."""
    staging = os.path.join(os.path.dirname(path), f".lm{os.getpid()}-{next(_STAGING)}")
    if len(os.fsencode(staging)) >= UNIX_PATH_MAX:
        staging = path   # no room for a private name: bind in place, as before
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        sock.bind(staging)
        bound = True
        sock.listen(backlog)
        if staging != path:
            os.rename(staging, path)   # replaces a stale socket file, as unlink did
    except OSError:
        sock.close()
        if bound:   # remove only the name this call made
            with contextlib.suppress(OSError):
                os.unlink(staging)
        raise
    return sock


class Listener:
    """The destination side: where one incoming connection will arrive."""

    def __init__(self, uri: Uri, take_fd: TakeFd) -> None:
        self.uri = uri
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        try:
            if uri.scheme == "unix":
                self._sock = listen_unix(uri.target, BACKLOG)
            elif uri.scheme == "tcp":
                host = tcp_host(uri.host)
                family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
                info = socket.getaddrinfo(host, uri.port, family, socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)[0]
                self._sock = socket.socket(info[0], socket.SOCK_STREAM)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._sock.bind(info[4])
                self._sock.listen(BACKLOG)
            elif uri.scheme == "fd":
                self._fd = incoming_fd(uri, take_fd)
            elif uri.scheme == "file":
                # Opened now, as QEMU does: a missing file is refused at once.
                self._fd = open_stream_file(uri, write=False)
        except OSError as err:
            if self._sock is not None:
                self._sock.close()
            raise MigrationError(f"Failed to listen on '{uri.address}': "
                                 f"{err.strerror or err}") from err
        self._address = self._where()

    def socket_address(self) -> list[dict[str, Any]]:
        """What query-migrate reports as ``socket-address``: where this
        listener listens (or listened: kept after it closes, as QEMU does)."""
        return list(self._address)

    def _where(self) -> list[dict[str, Any]]:
        if self._sock is None:
            return []
        if self.uri.scheme == "unix":
            return [{"type": "unix", "path": self.uri.target}]
        host, port = self._sock.getsockname()[:2]
        return [{"type": "inet", "host": host, "port": str(port)}]

    @property
    def can_accept_more(self) -> bool:
        """A listening socket takes more connections (multifd); fd: and exec: don't."""
        return self._sock is not None

    def accept(self, postcopy: bool = False, timeout: float | None = None,
               tls: TlsConfig | None = None) -> Channel:
        """Wait for the source (``timeout``: at most so long). ``postcopy``: a
        recovery channel. ``tls``: the handshake (and tls-authz) is made
        before the channel is returned; a failure raises TlsError."""
        channel = self._accept(postcopy, timeout)
        if tls is None:
            return channel
        from .tls import accept_tls

        if channel.sock is None:
            channel.close()
            raise MigrationError("TLS needs a socket channel (unix:, tcp: or fd: of a socket)")
        from .channel import Channel

        sock, session = accept_tls(channel.sock, tls)
        return Channel(sock, label=channel.label, tcp=channel.tcp, tls=session)

    def _accept(self, postcopy: bool, timeout: float | None) -> Channel:
        from .channel import Channel, watch_tcp_peer

        uri = self.uri
        label = f"{uri.scheme}:{uri.target}"
        if self._sock is not None:
            self._sock.settimeout(timeout)
            try:
                conn, _ = self._sock.accept()
            except TimeoutError as err:
                raise MigrationError(f"no connection on {label} within {timeout:.0f} s") from err
            conn.settimeout(None)
            if uri.scheme == "tcp":
                watch_tcp_peer(conn, postcopy)
            return Channel(conn, label=label, tcp=uri.scheme == "tcp")
        if uri.scheme in ("fd", "file"):
            fd, self._fd = self._fd, None
            if fd is None:
                raise MigrationError(f"incoming {label}: the descriptor was used already")
            if uri.scheme == "file":
                return Channel(rfd=fd, label=label)
            try:
                return Channel(socket.socket(fileno=fd), label=label)
            except OSError:
                return Channel(rfd=fd, label=label)
        proc = subprocess.Popen(["/bin/sh", "-c", uri.target], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        rfd = os.dup(proc.stdout.fileno())
        proc.stdout.close()
        return Channel(rfd=rfd, process=proc, label=label)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            if self.uri.scheme == "unix":
                try:
                    os.unlink(self.uri.target)
                except OSError:
                    pass
            self._sock = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
