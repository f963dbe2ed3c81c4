"""Sending guest pages without copying them: vmsplice(2) into a pipe, then
splice(2) from the pipe into the socket.

``sendmsg`` copies every byte into socket buffers, and on one host that
copy is most of the source's work in a pass (docs/benchmarks.md). vmsplice
puts references to the pages themselves into a pipe; splice moves them on
into the socket (unix and TCP sockets take spliced pages by reference since
Linux 6.5), and the receiver's ``recv`` copies straight out of the guest's
pages.

What that means, and why it is safe where it is used: the receiver reads a
page when it reads it, not when it was sent, so it may see a later version
of the page than the one the sender looked at. In precopy and postcopy that
is harmless: any write after the send is seen by dirty tracking and the page
is sent again, and the stream's last version of every page goes out with the
guest stopped. It is *not* harmless where a page must be what it was at one
instant (background-snapshot) or where the buffer is the VMM's own and is
reused after the send (staging copies, compressed data): those callers send
the ordinary way. A reference also keeps a page alive if the guest's memory
is unmapped meanwhile, so nothing here can read freed memory.

``LIVEMIG_ZERO_COPY=0`` in the environment turns it off (for A/B
measurements); it is also off wherever vmsplice or the pipe cannot be had.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os

from ..logs import get_logger

log = get_logger(__name__)

ENV = "LIVEMIG_ZERO_COPY"
# A buffer shorter than this goes with sendmsg: two system calls per piece
# cost more than copying a few pages.
MIN_SPLICE = 64 << 10
# The pipe's size: the most one vmsplice/splice round moves (fs/pipe.c lets
# anyone set up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1 << 20


class Iovec(ctypes.Structure):
    """struct iovec (<bits/types/struct_iovec.h>)."""

    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_vmsplice = _libc.vmsplice  # ssize_t vmsplice(int, const struct iovec *, size_t, unsigned)
_vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(Iovec), ctypes.c_size_t, ctypes.c_uint]
_vmsplice.restype = ctypes.c_ssize_t


@functools.cache
def available() -> bool:
    """Whether to splice in this process (asked once)."""
    if os.environ.get(ENV, "1") == "0":
        return False
    why = probe()
    if why is not None:
        log.info("guest pages are sent with copies: %s", why)
    return why is None


def address_of(view: memoryview) -> int | None:
    """The address of a writable buffer's first byte; None for read-only
    ones (bytes), which are the VMM's own and never spliced."""
    if view.readonly:
        return None
    # Safe: the ctypes object only reads the exporter's address; the view
    # it came from is kept alive by the caller for the whole send.
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class PageSplicer:
    """A pipe that carries page references from guest RAM to one socket."""

    def __init__(self, sock_fd: int) -> None:
        self._sock_fd = sock_fd
        self._r, self._w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self._w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe: more rounds, same result
        self.size = fcntl.fcntl(self._w, fcntl.F_GETPIPE_SZ)

    def send(self, address: int, length: int) -> int:
        """Send ``length`` bytes of guest memory at ``address``; blocks like
        sendmsg until all of it is in the socket. OSError as sendmsg would."""
        done = 0
        while done < length:
            piece = min(self.size, length - done)
            iov = Iovec(address + done, piece)
            queued = _vmsplice(self._w, ctypes.byref(iov), 1, 0)
            if queued < 0:
                code = ctypes.get_errno()
                raise OSError(code, f"vmsplice: {os.strerror(code)}")
            left = queued
            while left:
                moved = os.splice(self._r, self._sock_fd, left)
                if not moved:  # never for a socket that is still open; no endless loop
                    raise OSError(errno.EPIPE, "splice into the socket moved nothing")
                left -= moved
            done += queued
        return done

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def probe() -> str | None:
    """None if vmsplice and splice into a socket work here, else why not."""
    import socket

    a, b = socket.socketpair()
    splicer = None
    try:
        splicer = PageSplicer(a.fileno())
        data = bytearray(b"livemig" * 10000)
        view = memoryview(data)
        address = address_of(view)
        assert address is not None
        splicer.send(address, len(data))
        got = bytearray()
        while len(got) < len(data):
            got += b.recv(len(data) - len(got))
        return None if got == data else "spliced bytes came out different"
    except OSError as err:
        return f"vmsplice/splice: {err.strerror or err}"
    finally:
        if splicer is not None:
            splicer.close()
        a.close()
        b.close()
