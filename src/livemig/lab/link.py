"""A TCP link between a migration source and its destination, made of a
relay in the lab: it counts the bytes that really cross it (whatever the
VMM reports), can be limited to a rate as a slow link is, and can cut one of
its connections as a broken link does. Connections are numbered in the
order they arrive: for a migration, 0 is the main channel, then the multifd
channels."""

from __future__ import annotations

import socket
import threading
import time


class _Bucket:
    """A token bucket shared by every connection in one direction: the
    rate of the link as a whole, not of each connection."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + nbytes / self._rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


class Link:
    """A relay from 127.0.0.1:``port`` to ``target_port``. ``rate``: bytes/s
    allowed from source to destination (None: unlimited)."""

    CHUNK = 1 << 16

    def __init__(self, target_port: int, rate: float | None = None,
                 host: str = "127.0.0.1") -> None:
        self._target = (host, target_port)
        self._server = socket.create_server((host, 0))
        self.port: int = self._server.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self._forward = _Bucket(rate) if rate else None
        self._lock = threading.Lock()
        self._sent = [0, 0]  # [source to destination, destination to source]
        self._pair_forward: list[int] = []  # source to destination, per connection
        threading.Thread(target=self._accept, daemon=True, name="link-accept").start()

    @property
    def uri(self) -> str:
        return f"tcp:{self._target[0]}:{self.port}"

    def bytes_forward(self) -> int:
        """Bytes relayed from the source to the destination so far."""
        with self._lock:
            return self._sent[0]

    def bytes_back(self) -> int:
        """Bytes relayed from the destination back to the source (return path)."""
        with self._lock:
            return self._sent[1]

    def bytes_forward_on(self, index: int) -> int:
        """Bytes relayed from the source on connection ``index`` (in accept order)."""
        with self._lock:
            return self._pair_forward[index]

    def _accept(self) -> None:
        while True:
            try:
                left, _ = self._server.accept()
            except OSError:
                return
            try:
                right = socket.create_connection(self._target)
            except OSError:
                left.close()
                continue
            with self._lock:
                self.pairs.append((left, right))
                self._pair_forward.append(0)
                index = len(self.pairs) - 1
            for a, b, way in ((left, right, 0), (right, left, 1)):
                threading.Thread(target=self._pump, args=(a, b, way, index), daemon=True,
                                 name=f"link-pump-{way}").start()

    def _pump(self, a: socket.socket, b: socket.socket, way: int, index: int) -> None:
        bucket = self._forward if way == 0 else None
        try:
            while data := a.recv(self.CHUNK):
                if bucket is not None:
                    bucket.take(len(data))
                b.sendall(data)
                with self._lock:
                    self._sent[way] += len(data)
                    if way == 0:
                        self._pair_forward[index] += len(data)
        except OSError:
            pass
        for sock in (a, b):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, index: int) -> None:
        """Drop connection ``index`` both ways."""
        with self._lock:
            left, right = self.pairs[index]
        for sock in (left, right):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for pair in self.pairs:
                for sock in pair:
                    sock.close()
