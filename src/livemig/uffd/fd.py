"""A userfaultfd: creation, API handshake, registration, and the ioctls on it."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import UffdError
from . import abi

if TYPE_CHECKING:
    import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _ioctl(fd: int, request: int, arg: ctypes.Structure, what: str) -> int:
    try:
        return fcntl.ioctl(fd, request, arg)  # type: ignore[call-overload]
    except OSError as err:
        raise UffdError(f"{what} failed: {os.strerror(err.errno or 0)}") from err


class Userfaultfd:
    """One userfaultfd file descriptor with the features asked for."""

    def __init__(self, features: int, nonblocking: bool = True,
                 kernel_faults: bool = False) -> None:
        """``kernel_faults``: also catch faults taken inside the kernel on
        behalf of this process (KVM's guest page faults, read() into RAM).
        That needs root or CAP_SYS_PTRACE unless vm.unprivileged_userfaultfd
        is 1; without it, only faults from user mode are caught."""
        flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
        if not kernel_faults:
            flags |= abi.UFFD_USER_MODE_ONLY
        fd = _libc.syscall(abi.NR_USERFAULTFD, flags)
        if fd < 0:
            code = ctypes.get_errno()
            raise UffdError(f"userfaultfd() failed: {os.strerror(code)}")
        self.fd = int(fd)
        api = abi.UffdioApi(api=abi.UFFD_API, features=features)
        try:
            _ioctl(self.fd, abi.UFFDIO_API, api, "UFFDIO_API")
        except UffdError:
            os.close(self.fd)
            raise
        self.features = api.features
        self.ioctls = api.ioctls

    def register(self, address: int, length: int, mode: int) -> None:
        """UFFDIO_REGISTER [address, +length) in ``mode`` (missing and/or wp)."""
        reg = abi.UffdioRegister(range=abi.UffdioRange(address, length), mode=mode)
        _ioctl(self.fd, abi.UFFDIO_REGISTER, reg, "UFFDIO_REGISTER")

    def unregister(self, address: int, length: int) -> None:
        """UFFDIO_UNREGISTER."""
        _ioctl(self.fd, abi.UFFDIO_UNREGISTER, abi.UffdioRange(address, length),
               "UFFDIO_UNREGISTER")

    def write_protect(self, address: int, length: int, protect: bool = True) -> None:
        """UFFDIO_WRITEPROTECT: (un)protect [address, +length)."""
        wp = abi.UffdioWriteprotect(range=abi.UffdioRange(address, length),
                                    mode=abi.UFFDIO_WRITEPROTECT_MODE_WP if protect else 0)
        _ioctl(self.fd, abi.UFFDIO_WRITEPROTECT, wp, "UFFDIO_WRITEPROTECT")

    def copy(self, dst: int, src: int, length: int) -> None:
        """UFFDIO_COPY: fill the missing pages [dst, +length) from ``src`` and
        wake the threads waiting on them."""
        self._fill(abi.UFFDIO_COPY, "UFFDIO_COPY", dst, length, "copy",
                   lambda done, left: abi.UffdioCopy(dst=dst + done, src=src + done,
                                                     len=left, mode=0))

    def zeropage(self, dst: int, length: int) -> None:
        """UFFDIO_ZEROPAGE: map zero pages at the missing [dst, +length)."""
        self._fill(abi.UFFDIO_ZEROPAGE, "UFFDIO_ZEROPAGE", dst, length, "zeropage",
                   lambda done, left: abi.UffdioZeropage(
                       range=abi.UffdioRange(dst + done, left), mode=0))

    def _fill(self, request: int, what: str, dst: int, length: int, result: str,
              make: Callable[[int, int], ctypes.Structure]) -> None:
        """Issue ``request`` until [dst, +length) is filled. The kernel may
        stop early (EAGAIN) with the bytes done so far in the ``result``
        field; carry on from there."""
        done = 0
        while done < length:
            arg = make(done, length - done)
            try:
                fcntl.ioctl(self.fd, request, arg)  # type: ignore[call-overload]
            except OSError as err:
                progress = int(getattr(arg, result))
                if err.errno == errno.EAGAIN and progress > 0:
                    done += progress
                    continue
                raise UffdError(f"{what} at {dst + done:#x}+{length - done:#x} failed: "
                                f"{os.strerror(err.errno or 0)}") from err
            done += int(getattr(arg, result))

    def read_faults(self, max_events: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Read the pending page-fault messages (non-blocking fd): the
        faulting addresses and thread ids, as arrays. Empty if none."""
        import numpy as np

        try:
            data = os.read(self.fd, abi.UFFD_MSG_SIZE * max_events)
        except BlockingIOError:
            data = b""
        except OSError as err:
            raise UffdError(f"reading userfaultfd events failed: {err.strerror}") from err
        msgs = np.frombuffer(data, dtype=_msg_dtype(), count=len(data) // abi.UFFD_MSG_SIZE)
        faults = msgs[msgs["event"] == abi.UFFD_EVENT_PAGEFAULT]
        return faults["address"], faults["ptid"]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def probe_wp_async() -> str | None:
    """None if asynchronous write-protect works here, else why not."""
    try:
        uffd = Userfaultfd(abi.UFFD_FEATURE_WP_ASYNC | abi.UFFD_FEATURE_WP_UNPOPULATED)
    except UffdError as err:
        return str(err)
    uffd.close()
    return None


@functools.cache
def _msg_dtype() -> np.dtype:
    """struct uffd_msg for a page fault, as a numpy record (see abi)."""
    import numpy as np

    dtype = np.dtype({"names": ["event", "address", "ptid"],
                      "formats": ["u1", "<u8", "<u4"],
                      "offsets": [abi.UFFD_MSG_EVENT_OFFSET, abi.UFFD_MSG_ADDRESS_OFFSET,
                                  abi.UFFD_MSG_PTID_OFFSET],
                      "itemsize": abi.UFFD_MSG_SIZE})
    return dtype


def probe_missing(kernel_faults: bool) -> str | None:
    """None if missing-mode userfaultfd (what postcopy needs) works here,
    else why not."""
    try:
        uffd = Userfaultfd(abi.UFFD_FEATURE_THREAD_ID, kernel_faults=kernel_faults)
    except UffdError as err:
        return str(err)
    uffd.close()
    return None
