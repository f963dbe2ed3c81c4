"""A userfaultfd: creation, API handshake, registration, and the ioctls on it."""

from __future__ import annotations

import ctypes
import fcntl
import os

from ..errors import UffdError
from . import abi

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _ioctl(fd: int, request: int, arg: ctypes.Structure, what: str) -> int:
    try:
        return fcntl.ioctl(fd, request, arg)  # type: ignore[call-overload]
    except OSError as err:
        raise UffdError(f"{what} failed: {os.strerror(err.errno or 0)}") from err


class Userfaultfd:
    """One userfaultfd file descriptor with the features asked for."""

    def __init__(self, features: int, nonblocking: bool = True) -> None:
        flags = os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0) | abi.UFFD_USER_MODE_ONLY
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
