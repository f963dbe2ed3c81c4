"""Character device backends: where serial output goes and where monitors
(QMP, qtest) get their connections from.

Every backend offers ``write`` (output to whoever is attached) and ``serve``
(call ``on_connect`` with a :class:`Stream` for each connection, from a
thread of its own). Which of the two a frontend uses depends on the frontend.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable

from .. import fdsets
from ..errors import ChardevError
from ..logs import get_logger
from .stream import Stream

log = get_logger(__name__)

OnConnect = Callable[[Stream], None]


class Chardev:
    """Base: output is dropped, no connections are ever made."""

    def __init__(self, chardev_id: str) -> None:
        self.id = chardev_id

    def write(self, data: bytes) -> None:
        """Output from a frontend (e.g. bytes the guest sent to its UART)."""

    def serve(self, on_connect: OnConnect) -> None:
        """Deliver connections to ``on_connect`` (none by default)."""

    def filename(self) -> str:
        """What query-chardev shows as its ``filename`` (QEMU's spelling)."""
        return "null"

    def close(self) -> None:
        pass


class NullChardev(Chardev):
    """``null``: swallows output."""


class FileChardev(Chardev):
    """``file:PATH``: output appended, unbuffered, to a file created afresh."""

    def __init__(self, chardev_id: str, path: str, append: bool = False) -> None:
        super().__init__(chardev_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self._fd = fdsets.open_path(path, flags, 0o666)
        except OSError as err:
            raise ChardevError(f"Could not open '{path}': {err.strerror}") from err
        except fdsets.FdsetError as err:
            raise ChardevError(str(err)) from err
        self._lock = threading.Lock()

    def filename(self) -> str:
        return "file"

    def write(self, data: bytes) -> None:
        with self._lock:
            try:
                os.write(self._fd, data)
            except OSError as err:
                log.warning("chardev %s: write failed: %s", self.id, err)

    def close(self) -> None:
        os.close(self._fd)


class StdioChardev(Chardev):
    """``stdio``: output to stdout; a monitor on it reads stdin."""

    def filename(self) -> str:
        return "stdio"

    def write(self, data: bytes) -> None:
        try:
            os.write(sys.stdout.fileno(), data)
        except OSError:
            pass

    def serve(self, on_connect: OnConnect) -> None:
        stream = Stream(rfd=sys.stdin.fileno(), wfd=sys.stdout.fileno(), label="stdio")
        threading.Thread(target=on_connect, args=(stream,), name=f"chardev {self.id}",
                         daemon=True).start()


def _make_socket(
    path: str | None, host: str | None, port: str | None
) -> tuple[socket.socket, object]:
    if path is not None:
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path
    if host is None or port is None:
        raise ChardevError("chardev: socket needs 'path', or 'host' and 'port'")
    try:
        info = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)[0]
    except (OSError, ValueError) as err:
        raise ChardevError(f"chardev: bad address {host}:{port}: {err}") from err
    return socket.socket(info[0], socket.SOCK_STREAM), info[4]


class SocketServerChardev(Chardev):
    """``socket,server=on``: listens; each client becomes a connection.

    With ``wait=on`` startup blocks until the first client connects, as in QEMU.
    """

    def __init__(self, chardev_id: str, path: str | None = None, host: str | None = None,
                 port: str | None = None, wait: bool = False, fd: int | None = None) -> None:
        """``fd``: a listening socket handed over already bound (libvirt's
        ``fd=N``), used as it is."""
        super().__init__(chardev_id)
        self._clients: list[Stream] = []
        self._lock = threading.Lock()
        self._first: socket.socket | None = None
        if fd is not None:
            self._sock = self._adopt(fd)
            self._path = self._sock.getsockname() or None
            if not isinstance(self._path, str):
                self._path = None
            return
        self._sock, address = _make_socket(path, host, port)
        self._path = path
        try:
            if path is not None and os.path.exists(path):
                os.unlink(path)
            if path is None:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)  # type: ignore[arg-type]
            self._sock.listen(8)
        except OSError as err:
            self._sock.close()
            where = path if path is not None else f"{host}:{port}"
            raise ChardevError(f"Failed to bind socket to {where}: {err.strerror}") from err
        if wait:
            print(f"livemig: waiting for connection on: {self.describe()}", file=sys.stderr)
            self._first, _ = self._sock.accept()

    @staticmethod
    def _adopt(fd: int) -> socket.socket:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as err:
            raise ChardevError(f"fd {fd} is not a socket: {err.strerror}") from err
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ChardevError(f"fd {fd} is not a listening socket")
        sock.set_inheritable(False)
        return sock

    def filename(self) -> str:
        return self.describe().removeprefix("disconnected:")

    def describe(self) -> str:
        if self._path is not None:
            return f"disconnected:unix:{self._path},server=on"
        host, port = self._sock.getsockname()[:2]
        return f"disconnected:tcp:{host}:{port},server=on"

    def serve(self, on_connect: OnConnect) -> None:
        threading.Thread(target=self._accept_loop, args=(on_connect,),
                         name=f"chardev {self.id}", daemon=True).start()

    def _accept_loop(self, on_connect: OnConnect) -> None:
        while True:
            if self._first is not None:
                conn, self._first = self._first, None
            else:
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    return
            stream = Stream(conn, label=self.id)
            with self._lock:
                self._clients.append(stream)
            threading.Thread(target=self._run_client, args=(on_connect, stream),
                             name=f"chardev {self.id} client", daemon=True).start()

    def _run_client(self, on_connect: OnConnect, stream: Stream) -> None:
        try:
            on_connect(stream)
        finally:
            with self._lock:
                if stream in self._clients:
                    self._clients.remove(stream)
            stream.close()

    def write(self, data: bytes) -> None:
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.write(data)

    def close(self) -> None:
        self._sock.close()
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass


class SocketClientChardev(Chardev):
    """``socket`` without ``server``: connects once at startup."""

    def __init__(self, chardev_id: str, path: str | None = None, host: str | None = None,
                 port: str | None = None) -> None:
        super().__init__(chardev_id)
        sock, address = _make_socket(path, host, port)
        try:
            sock.connect(address)  # type: ignore[arg-type]
        except OSError as err:
            sock.close()
            where = path if path is not None else f"{host}:{port}"
            raise ChardevError(f"Failed to connect to '{where}': {err.strerror}") from err
        self.stream = Stream(sock, label=chardev_id)

    def serve(self, on_connect: OnConnect) -> None:
        threading.Thread(target=on_connect, args=(self.stream,), name=f"chardev {self.id}",
                         daemon=True).start()

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def close(self) -> None:
        self.stream.close()
