"""Migration transports: ``unix:``, ``tcp:``, ``fd:``, ``exec:`` and ``file:`` URIs.

A :class:`Channel` is a byte pipe with gathered writes and a buffered
reader (codec.BufferedReader) whose large reads go straight into guest RAM.
Sockets and pipes both fit. Channels carry records; they never interpret
them.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import MigrationError
from . import splice
from .codec import BufferedReader
from .listener import Listener, TakeFd, incoming_fd, open_stream_file, tcp_host
from .uri import Uri

if TYPE_CHECKING:
    from .splice import PageSplicer
    from .tls import TlsConfig, TlsSession

IOV_MAX = 1024
SOCKET_BUFFER = 4 << 20  # 4 MiB each way: ~1.7x the loopback throughput of the default
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>: root may exceed wmem_max


def _enlarge_buffers(sock: socket.socket) -> None:
    """Bigger kernel socket buffers mean fewer sender/receiver switches per chunk."""
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
            except OSError:
                pass  # keep the kernel's default: slower, still correct


# How long a TCP peer may acknowledge nothing before the kernel fails the
# socket, by phase (docs/migration.md, "Dead peers"). Precopy: no limit of
# our own. The source still has the whole guest, so waiting out a stalled
# destination (SIGSTOP, a busy host) costs nothing, while giving up would
# throw the migration away. Postcopy: 4 s. Each side then lacks part of the
# guest, a pause is cheap and recoverable, and waiting for TCP's own
# retransmission timeout (many minutes) would leave the guest stuck on its
# missing pages. Keepalive probes find a dead peer when nothing is in
# flight, in either phase.
POSTCOPY_DEAD_PEER_MS = 4000
PRECOPY_DEAD_PEER_MS = 0  # 0: the kernel's own retransmission limits
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 1, 1, 3


def watch_tcp_peer(sock: socket.socket, postcopy: bool) -> None:
    """Set keepalive and the phase's dead-peer timeout on a TCP socket."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                    POSTCOPY_DEAD_PEER_MS if postcopy else PRECOPY_DEAD_PEER_MS)


class Channel:
    """One end of a migration stream."""

    def __init__(self, sock: socket.socket | None = None, rfd: int | None = None,
                 wfd: int | None = None, process: subprocess.Popen[bytes] | None = None,
                 label: str = "", tcp: bool = False, tls: TlsSession | None = None) -> None:
        self.sock = sock
        self.tls = tls  # every byte goes through it once the handshake is done
        if sock is not None:
            _enlarge_buffers(sock)
        self._rfd, self._wfd = rfd, wfd
        self._process = process
        self.label = label
        self.tcp = tcp
        self._reader: BufferedReader | None = None
        self._splicer: PageSplicer | None = None

    def send(self, buffers: Sequence[bytes | memoryview], zero_copy: bool = False) -> int:
        """Write every buffer, in order; gathered into few system calls.

        ``zero_copy``: the writable buffers are guest RAM that may be sent
        by reference (splice.py says when that is safe); on a plain socket
        the large ones then go without being copied."""
        if self.tls is not None:
            return self.tls.send(buffers)
        if zero_copy and self.sock is not None:
            splicer = self._page_splicer()
            if splicer is not None:
                return self._send_spliced(buffers, splicer)
        return self._gather(buffers)

    def _page_splicer(self) -> PageSplicer | None:
        if self._splicer is None and self.sock is not None and splice.available():
            self._splicer = splice.PageSplicer(self.sock.fileno())
        return self._splicer

    def _send_spliced(self, buffers: Sequence[bytes | memoryview],
                      splicer: PageSplicer) -> int:
        """Small buffers gathered as usual, each large RAM one spliced."""
        total = 0
        small: list[bytes | memoryview] = []
        for buffer in buffers:
            view = memoryview(buffer).cast("B")
            address = splice.address_of(view) if len(view) >= splice.MIN_SPLICE else None
            if address is None:
                small.append(view)
                continue
            if small:
                total += self._gather(small)
                small = []
            total += splicer.send(address, len(view))
        if small:
            total += self._gather(small)
        return total

    def _gather(self, buffers: Sequence[bytes | memoryview]) -> int:
        total = 0
        pending = [memoryview(b).cast("B") for b in buffers if len(b)]
        first = 0  # pending[:first] has gone out
        while first < len(pending):
            batch = pending[first:first + IOV_MAX]
            if self.sock is not None:
                sent = self.sock.sendmsg(batch)
            else:
                assert self._wfd is not None
                sent = os.writev(self._wfd, batch)
            total += sent
            # Step past what went out; keep the tail of a partly sent buffer.
            while sent:
                head = pending[first]
                if sent >= len(head):
                    sent -= len(head)
                    first += 1
                else:
                    pending[first] = head[sent:]
                    sent = 0
        return total

    def recv_some(self, view: memoryview) -> int:
        """Read what is there into ``view`` (at least one byte; 0 at EOF)."""
        if self.tls is not None:
            return self.tls.recv_into(view)
        if self.sock is not None:
            return self.sock.recv_into(view)
        assert self._rfd is not None
        return os.readv(self._rfd, [view])

    @property
    def file_fd(self) -> int | None:
        """The descriptor of a ``file:`` channel (for reads and writes at
        fixed offsets: mapped-ram); None on any other transport."""
        if not self.label.startswith("file:"):
            return None
        return self._wfd if self._wfd is not None else self._rfd

    def wait_readable(self, timeout: float) -> bool:
        """Whether data (or the end) arrives within ``timeout`` seconds."""
        if self._reader is not None and self._reader.buffered:
            return True
        fd = self.sock.fileno() if self.sock is not None else self._rfd
        if fd is None:
            return False
        import select
        return bool(select.select([fd], [], [], timeout)[0])

    @property
    def reader(self) -> BufferedReader:
        """The one reader of this channel (its read-ahead buffer is the channel's)."""
        if self._reader is None:
            self._reader = BufferedReader(self.recv_some)
        return self._reader

    def enter_postcopy(self) -> None:
        """From switchover on, a silent TCP peer is dead after 4 s (see above)."""
        if self.sock is not None and self.tcp:
            watch_tcp_peer(self.sock, postcopy=True)

    def describe_write_error(self, err: OSError) -> str:
        """error-desc for a failed write, in QEMU's words."""
        what = ("command" if self._process is not None
                else "file" if self.label.startswith("file:") else "socket")
        return f"Unable to write to {what}: {err.strerror or err}"

    def shrink_send_buffer(self, size: int) -> None:
        """Cap how much sent data may queue in the kernel (postcopy: a
        requested page should not wait behind megabytes of background)."""
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            except OSError:
                pass  # keep the larger buffer: slower page requests, still correct

    def abort(self) -> None:
        """Make a transfer blocked on this channel fail, from any thread.

        The descriptor stays open: closing it under a thread that is inside
        sendmsg/recv_into could let an unrelated open() reuse its number.
        The thread that owns the channel closes it. A plain ``fd:`` pipe
        cannot be woken this way; its job sees the cancel between chunks.
        """
        if self.sock is not None:
            try:
                if self.tls is not None:
                    # Shut the socket down under the TLS session through a
                    # duplicate descriptor: ssl.SSLSocket.shutdown would also
                    # drop the session a reader or writer thread is inside.
                    with socket.socket(fileno=os.dup(self.sock.fileno())) as twin:
                        twin.shutdown(socket.SHUT_RDWR)
                else:
                    self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._process is not None:
            self._process.kill()  # the pipe's writer then gets EPIPE

    def close(self) -> None:
        """Release the channel (by the thread that uses it)."""
        if self._splicer is not None:
            self._splicer.close()
            self._splicer = None
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        for fd in (self._rfd, self._wfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()


def connect(uri: Uri, fd: int | None = None, postcopy: bool = False,
            tls: TlsConfig | None = None) -> Channel:
    """The source side: open a channel to ``uri`` (``fd``: the descriptor an
    ``fd:`` URI named, already taken from getfd). ``postcopy``: the channel
    recovers a paused postcopy (TCP's short dead-peer timeout at once).
    ``tls``: the handshake is made before the channel is returned."""
    channel = _connect(uri, fd, postcopy)
    if tls is None:
        return channel
    from .tls import connect_tls

    if channel.sock is None:
        channel.close()
        raise MigrationError("TLS needs a socket channel (unix:, tcp: or fd: of a socket)")
    sock, session = connect_tls(channel.sock, tls, uri.host if uri.scheme == "tcp" else None)
    return Channel(sock, label=channel.label, tcp=channel.tcp, tls=session)


def _connect(uri: Uri, fd: int | None, postcopy: bool) -> Channel:
    label = f"{uri.scheme}:{uri.target}"
    if uri.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(uri.target)
        except OSError as err:
            sock.close()
            raise MigrationError(f"Failed to connect to '{uri.address}': "
                                 f"{err.strerror or err}") from err
        return Channel(sock, label=label)
    if uri.scheme == "tcp":
        host = tcp_host(uri.host) or "0.0.0.0"
        try:
            infos = socket.getaddrinfo(host, uri.port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise MigrationError(f"address resolution failed for {uri.address}: "
                                 f"{err.strerror}") from err
        last: OSError | None = None
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(30)
                sock.connect(address)
                sock.settimeout(None)
            except OSError as err:
                sock.close()
                last = err
                continue
            watch_tcp_peer(sock, postcopy)
            return Channel(sock, label=label, tcp=True)
        assert last is not None
        raise MigrationError(f"Failed to connect to '{uri.address}': "
                             f"{last.strerror or last}") from last
    if uri.scheme == "fd":
        assert fd is not None
        try:
            return Channel(socket.socket(fileno=fd), label=label)
        except OSError:
            return Channel(wfd=fd, label=label)  # a pipe or a file
    if uri.scheme == "file":
        return Channel(wfd=open_stream_file(uri, write=True), label=label)
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", uri.target], stdin=subprocess.PIPE)
    except OSError as err:
        raise MigrationError(f"Unable to start command '{uri.target}': "
                             f"{err.strerror or err}") from err
    assert proc.stdin is not None
    wfd = os.dup(proc.stdin.fileno())
    proc.stdin.close()
    return Channel(wfd=wfd, process=proc, label=label)


__all__ = ["Channel", "Listener", "TakeFd", "connect", "incoming_fd"]
