"""Migration transports: ``unix:``, ``tcp:``, ``fd:`` and ``exec:`` URIs.

A :class:`Channel` is a byte pipe with gathered writes and reads straight
into a buffer (guest RAM on the destination). Sockets and pipes both fit.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MigrationError

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


# A TCP peer that acknowledges nothing for this long is gone (link down,
# host dead): the kernel then fails the socket instead of retrying for
# many minutes. Keepalive probes find it even when no data is in flight.
TCP_DEAD_PEER_MS = 4000
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 1, 1, 3


def _watch_tcp_peer(sock: socket.socket) -> None:
    """Make a dead TCP peer an error within seconds (see TCP_DEAD_PEER_MS)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_DEAD_PEER_MS)


class Channel:
    """One end of a migration stream."""

    def __init__(self, sock: socket.socket | None = None, rfd: int | None = None,
                 wfd: int | None = None, process: subprocess.Popen[bytes] | None = None,
                 label: str = "") -> None:
        self.sock = sock
        if sock is not None:
            _enlarge_buffers(sock)
        self._rfd, self._wfd = rfd, wfd
        self._process = process
        self.label = label

    def send(self, buffers: Sequence[bytes | memoryview]) -> int:
        """Write every buffer, in order; gathered into few system calls."""
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

    def recv_into(self, buffer: memoryview) -> None:
        """Fill ``buffer`` exactly; EOF before that is an error."""
        view = memoryview(buffer).cast("B")
        while len(view):
            if self.sock is not None:
                got = self.sock.recv_into(view)
            else:
                assert self._rfd is not None
                got = os.readv(self._rfd, [view])
            if got == 0:
                raise EOFError("migration stream ended early")
            view = view[got:]

    def recv(self, size: int) -> bytes:
        buf = bytearray(size)
        self.recv_into(memoryview(buf))
        return bytes(buf)

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
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._process is not None:
            self._process.kill()  # the pipe's writer then gets EPIPE

    def close(self) -> None:
        """Release the channel (by the thread that uses it)."""
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


@dataclass(frozen=True)
class Uri:
    scheme: str            # unix | tcp | fd | exec
    target: str            # path, fd name, command
    host: str = ""
    port: int = 0


def parse_uri(uri: str) -> Uri:
    scheme, sep, rest = uri.partition(":")
    if not sep or not rest:
        raise MigrationError(f"Invalid URI: '{uri}'")
    if scheme == "unix":
        return Uri("unix", rest)
    if scheme in ("fd", "exec"):
        return Uri(scheme, rest)
    if scheme == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise MigrationError(f"error parsing address '{rest}'")
        try:
            number = int(port)
        except ValueError as err:
            raise MigrationError(f"error parsing port in address '{rest}'") from err
        return Uri("tcp", rest, host.strip("[]"), number)
    raise MigrationError(f"unknown migration protocol: {uri}")


def _tcp_host(host: str) -> str | None:
    return None if host in ("", "0") else host


def connect(uri: str, take_fd: Callable[[str], int]) -> Channel:
    """The source side: connect to ``uri``."""
    u = parse_uri(uri)
    try:
        if u.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(u.target)
            except OSError:
                sock.close()
                raise
            return Channel(sock, label=uri)
        if u.scheme == "tcp":
            host = _tcp_host(u.host) or "0.0.0.0"
            sock = socket.create_connection((host, u.port), timeout=30)
            sock.settimeout(None)
            _watch_tcp_peer(sock)
            return Channel(sock, label=uri)
        if u.scheme == "fd":
            fd = take_fd(u.target)
            try:
                sock = socket.socket(fileno=fd)
                return Channel(sock, label=uri)
            except OSError:
                return Channel(wfd=fd, label=uri)  # a pipe
        proc = subprocess.Popen(["/bin/sh", "-c", u.target], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        wfd = os.dup(proc.stdin.fileno())
        proc.stdin.close()
        return Channel(wfd=wfd, process=proc, label=uri)
    except OSError as err:
        raise MigrationError(f"Failed to connect to '{uri}': {err.strerror or err}") from err


class Listener:
    """The destination side: where one incoming connection will arrive."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.parsed = parse_uri(uri)
        self._sock: socket.socket | None = None
        u = self.parsed
        try:
            if u.scheme == "unix":
                if os.path.exists(u.target):
                    os.unlink(u.target)
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.bind(u.target)
                self._sock.listen(1)
            elif u.scheme == "tcp":
                host = _tcp_host(u.host)
                family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
                info = socket.getaddrinfo(host, u.port, family, socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)[0]
                self._sock = socket.socket(info[0], socket.SOCK_STREAM)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._sock.bind(info[4])
                self._sock.listen(1)
        except OSError as err:
            if self._sock is not None:
                self._sock.close()
            raise MigrationError(f"Failed to listen on '{uri}': {err.strerror or err}") from err

    def socket_address(self) -> list[dict[str, Any]]:
        """What query-migrate reports as ``socket-address``."""
        if self._sock is None:
            return []
        if self.parsed.scheme == "unix":
            return [{"type": "unix", "path": self.parsed.target}]
        host, port = self._sock.getsockname()[:2]
        return [{"type": "inet", "host": host, "port": str(port)}]

    def accept(self) -> Channel:
        u = self.parsed
        if self._sock is not None:
            conn, _ = self._sock.accept()
            if u.scheme == "tcp":
                _watch_tcp_peer(conn)
            return Channel(conn, label=self.uri)
        if u.scheme == "fd":
            try:
                fd = int(u.target)
            except ValueError as err:
                raise MigrationError(f"incoming fd:{u.target}: not a file descriptor") from err
            try:
                return Channel(socket.socket(fileno=fd), label=self.uri)
            except OSError:
                return Channel(rfd=fd, label=self.uri)
        proc = subprocess.Popen(["/bin/sh", "-c", u.target], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        rfd = os.dup(proc.stdout.fileno())
        proc.stdout.close()
        return Channel(rfd=rfd, process=proc, label=self.uri)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            if self.parsed.scheme == "unix":
                try:
                    os.unlink(self.parsed.target)
                except OSError:
                    pass
            self._sock = None
