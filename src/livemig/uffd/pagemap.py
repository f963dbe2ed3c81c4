"""PAGEMAP_SCAN on /proc/self/pagemap: which pages of a range were written
since they were last write-protected, re-protecting them in the same call."""

from __future__ import annotations

import ctypes
import fcntl
import os

import numpy as np

from ..errors import UffdError
from . import abi

PAGE_SHIFT = 12
_VEC_LEN = 4096  # regions per call; a call resumes at walk_end if it fills up


class WrittenPageScanner:
    """Scans one address range that is registered for async write-protect."""

    def __init__(self, base: int, length: int) -> None:
        self.base, self.length = base, length
        try:
            self._fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise UffdError(f"cannot open /proc/self/pagemap: {err.strerror}") from err
        self._vec = (abi.PageRegion * _VEC_LEN)()
        # A flat uint64 view of the same memory: columns start, end, categories.
        self._regions = np.frombuffer(self._vec, dtype=np.uint64).reshape(_VEC_LEN, 3)

    def scan(self, into: np.ndarray) -> None:
        """Set ``into[page] = True`` for every written page, and re-protect them."""
        end = self.base + self.length
        start = self.base
        while start < end:
            arg = abi.PmScanArg(
                size=ctypes.sizeof(abi.PmScanArg),
                flags=abi.PM_SCAN_WP_MATCHING | abi.PM_SCAN_CHECK_WPASYNC,
                start=start, end=end, vec=ctypes.addressof(self._vec), vec_len=_VEC_LEN,
                category_mask=abi.PAGE_IS_WRITTEN, return_mask=abi.PAGE_IS_WRITTEN,
            )
            try:
                count = fcntl.ioctl(self._fd, abi.PAGEMAP_SCAN, arg)
            except OSError as err:
                raise UffdError(f"PAGEMAP_SCAN failed: {os.strerror(err.errno or 0)}") from err
            regions = self._regions[:count]
            first = (regions[:, 0] - self.base) >> PAGE_SHIFT
            last = (regions[:, 1] - self.base) >> PAGE_SHIFT
            for lo, hi in zip(first.tolist(), last.tolist(), strict=True):  # one per run
                into[lo:hi] = True
            if arg.walk_end <= start:
                raise UffdError("PAGEMAP_SCAN made no progress")
            start = arg.walk_end

    def close(self) -> None:
        os.close(self._fd)
