"""Guest RAM: one mmap, addressed by guest-physical offset: anonymous
private memory, or a memory backend's file descriptor (memory/backing.py).

The same mapping is handed to KVM (``KVM_SET_USER_MEMORY_REGION``), to
Unicorn (``mem_map_ptr``), to the migration code (numpy and memoryview
views) and, on a postcopy destination, to userfaultfd. There is exactly one
copy of guest memory in the process.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from ..errors import BootError

if TYPE_CHECKING:
    import numpy as np

    from .backing import OpenBacking

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# <sys/mman.h>
PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x20, 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value
MADV_DONTNEED = 4
MADV_REMOVE = 9  # frees a shared mapping's pages in its file: they read as zero
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15  # transparent huge pages: ask for them, or not
MADV_POPULATE_WRITE = 23  # Linux 5.14: fault the range in, writable, in one call
EHWPOISON = 133  # <asm-generic/errno.h>; not in Python's errno module

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _wants_huge_pages() -> bool:
    """Anonymous guest RAM asks for transparent huge pages (MADV_HUGEPAGE),
    as QEMU's does: where THP is in ``madvise`` mode (these machines) it is
    otherwise backed by 4 KiB pages only, and a guest that walks its memory
    misses the host's TLB on every page, and a migration destination takes
    a page fault per 4 KiB it receives (docs/benchmarks.md). Dirty tracking
    stays per 4 KiB page: the kernel splits a huge page at its first
    write-protect fault (tests/test_dirty_tracking.py). ``LIVEMIG_THP=0``
    leaves RAM on small pages (for comparisons); a kernel without THP
    refuses the advice, which changes nothing else."""
    return os.environ.get("LIVEMIG_THP", "1") != "0"


class GuestRam:
    """Guest-physical RAM [0, size), page-aligned, zero-filled on creation."""

    def __init__(self, size: int, backing: OpenBacking | None = None) -> None:
        """``backing``: map that descriptor (the RAM then owns and closes it)
        instead of anonymous memory."""
        if size <= 0 or size % PAGE_SIZE:
            raise BootError(f"RAM size {size} is not a positive multiple of {PAGE_SIZE}")
        if backing is None:
            flags, fd = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1
        else:
            flags = (MAP_SHARED if backing.shared else MAP_PRIVATE) | MAP_NORESERVE
            fd = backing.fd
        address = _libc.mmap(None, size, PROT_READ | PROT_WRITE, flags, fd, 0)
        if address in (None, MAP_FAILED):
            code = ctypes.get_errno()
            if backing is not None:
                os.close(backing.fd)
            raise BootError(f"could not map {size} bytes of guest RAM: {os.strerror(code)}")
        self.size = size
        self.address: int = address
        self.huge = backing is None and _wants_huge_pages()
        self.huge_pages(True)
        # The backend, while the RAM is mapped from one (its fd stays open so
        # that it can be handed on); shared: the guest's writes land in it.
        self.backing = backing
        self.shared = backing is not None and backing.shared
        self.pages = size // PAGE_SIZE
        # Safe: [address, address+size) stays mapped until close(), and every
        # view below is dropped before the munmap there.
        self._buffer = (ctypes.c_char * size).from_address(address)
        self.view = memoryview(self._buffer).cast("B")
        # Pages written by the VMM itself (qtest, devices, loads): the
        # accelerator's dirty tracker cannot see these, so they are ORed in.
        # One byte per page; a bytearray keeps numpy out of VMM start-up.
        self._vmm_dirty = bytearray(self.pages)
        self._vmm_lock = threading.Lock()
        # Set on a postcopy destination: called before the VMM itself reads
        # or writes a range, to wait until its pages have arrived. A VMM
        # thread must never fault on a missing page while it holds the GIL:
        # the fault service, also Python, could then never run.
        self.access_guard: Callable[[int, int], None] | None = None

    @cached_property
    def array(self) -> np.ndarray:
        """All of RAM as a numpy uint8 array (imported on first use: numpy
        costs ~70 ms of start-up that a VM which never migrates can skip)."""
        import numpy as np

        return np.frombuffer(self._buffer, dtype=np.uint8)

    # --- bounds -----------------------------------------------------------
    def check_range(self, address: int, length: int) -> None:
        """Raise ValueError unless [address, address+length) is inside RAM."""
        if address < 0 or length < 0 or address + length > self.size:
            raise ValueError(
                f"range {address:#x}+{length:#x} is outside guest RAM (size {self.size:#x})"
            )

    def contains(self, address: int, length: int = 1) -> bool:
        return 0 <= address and 0 <= length and address + length <= self.size

    # --- access from the VMM ----------------------------------------------
    def prepare_access(self, address: int, length: int) -> None:
        """Make sure [address, +length) may be touched by VMM code (see access_guard)."""
        guard = self.access_guard
        if guard is not None and length > 0:
            guard(address, length)

    def read(self, address: int, length: int) -> bytes:
        self.check_range(address, length)
        self.prepare_access(address, length)
        return bytes(self.view[address:address + length])

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Write as the VMM; the pages are marked dirty for migration."""
        length = len(data)
        self.check_range(address, length)
        self.prepare_access(address, length)
        self.view[address:address + length] = data
        self.mark_dirty(address, length)

    def fill(self, address: int, length: int, value: int) -> None:
        self.check_range(address, length)
        self.prepare_access(address, length)
        # Safe: check_range proved [address, +length) lies inside the mapping.
        ctypes.memset(self.address + address, value & 0xFF, length)
        self.mark_dirty(address, length)

    def populate(self) -> None:
        """-mem-prealloc: back every page now (MADV_POPULATE_WRITE; on an
        older kernel, one write per page), so neither the guest nor an
        incoming migration pays a page fault per first touch later (on the
        project's machines that fault costs 5 µs: a fresh destination cannot
        take more than ~0.75 GB/s without it). Called before anything uses
        the RAM, so the writes of the fallback change nothing."""
        if _libc.madvise(self.address, self.size, MADV_POPULATE_WRITE) == 0:
            return
        code = ctypes.get_errno()
        if code in (errno.ENOMEM, errno.EFAULT, EHWPOISON):
            raise BootError("could not preallocate guest RAM: "
                            "insufficient free host memory pages available")
        # EINVAL: no MADV_POPULATE_WRITE here. Write each page's first byte
        # (a zero over a zero: the RAM is fresh) through a strided view.
        import numpy as np

        pages = np.frombuffer(self._buffer, dtype=np.uint8)[::PAGE_SIZE]
        pages[:] = 0

    def huge_pages(self, allowed: bool) -> None:
        """Allow transparent huge pages from now on, or not (a postcopy
        destination, from the switch: migration/postcopy_dest.py). Pages already huge stay
        so until split. Only anonymous RAM that asked for them is touched."""
        if self.huge:
            _libc.madvise(self.address, self.size,
                          MADV_HUGEPAGE if allowed else MADV_NOHUGEPAGE)

    def discard(self, address: int, length: int) -> None:
        """Drop the pages of [address, +length): they read as zero again
        and, under userfaultfd missing mode, fault as missing. Anonymous or
        private RAM: MADV_DONTNEED; shared RAM keeps its pages in the file
        under that, so MADV_REMOVE frees them there."""
        self.check_range(address, length)
        advice, name = (MADV_REMOVE, "MADV_REMOVE") if self.shared else (MADV_DONTNEED,
                                                                          "MADV_DONTNEED")
        if _libc.madvise(self.address + address, length, advice) != 0:
            code = ctypes.get_errno()
            raise BootError(f"madvise({name}) on guest RAM failed: {os.strerror(code)}")

    def zero(self, address: int, length: int, keep_present: bool = False) -> None:
        """Make [address, +length) read as zero, as a migration destination
        loads a zero run. Dropping the pages (MADV_DONTNEED) costs nothing
        for pages never touched, which on a fresh destination is nearly
        all of them, and frees those that were; writing zeros would first
        fault in a page for each. ``keep_present``: keep every page mapped
        instead, for a destination that may switch to postcopy: once RAM is
        registered for missing-page faults, a dropped page would fault and
        nothing would ever send it. A private mapping of a file is kept
        too: dropped, its pages would read the file's contents again. Then
        only pages that are not zero already are written, as QEMU does:
        reading a page never touched maps the kernel's shared zero page
        (present, and no memory spent), where writing zeros would allocate
        and clear a page for each (measured: 4 MiB in 11-21 ms here when
        the allocation is a fresh huge page)."""
        if not (keep_present or (self.backing is not None and not self.shared)):
            self.discard(address, length)
            return
        self.check_range(address, length)
        import numpy as np

        from .page_runs import runs

        if address % PAGE_SIZE or length % PAGE_SIZE:
            # Safe: check_range proved [address, +length) lies inside the mapping.
            ctypes.memset(self.address + address, 0, length)
            return
        first, count = address // PAGE_SIZE, length // PAGE_SIZE
        pages = self.array[address:address + length].view(np.uint64).reshape(count, -1)
        written = np.bitwise_or.reduce(pages, axis=1) != 0
        for start, n in zip(*runs(written), strict=True):
            # Safe: the run lies inside [address, +length), checked above.
            ctypes.memset(self.address + (first + int(start)) * PAGE_SIZE, 0,
                          int(n) * PAGE_SIZE)

    def mark_dirty(self, address: int, length: int) -> None:
        if length <= 0:
            return
        first = address >> PAGE_SHIFT
        last = (address + length - 1) >> PAGE_SHIFT
        with self._vmm_lock:
            self._vmm_dirty[first:last + 1] = b"\x01" * (last + 1 - first)

    def take_vmm_dirty(self) -> np.ndarray:
        """Return (bool per page) and clear the pages the VMM wrote since the last call."""
        import numpy as np

        with self._vmm_lock:
            taken = np.frombuffer(bytes(self._vmm_dirty), dtype=np.uint8).astype(bool)
            self._vmm_dirty[:] = bytes(self.pages)
        return taken

    def close(self) -> None:
        if not self.address:
            return
        self.view.release()
        self.__dict__.pop("array", None)
        self._buffer = None  # type: ignore[assignment]
        _libc.munmap(self.address, self.size)
        self.address = 0
        if self.backing is not None:
            os.close(self.backing.fd)
