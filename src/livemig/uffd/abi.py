"""userfaultfd and PAGEMAP_SCAN kernel ABI.

Numbers and layouts are from ``include/uapi/linux/userfaultfd.h`` and, for
PAGEMAP_SCAN, ``include/uapi/linux/fs.h`` (Linux 6.7 and later). The ioctl
encoding is ``include/uapi/asm-generic/ioctl.h``.
"""

from __future__ import annotations

import ctypes

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


# x86-64 system call number (arch/x86/entry/syscalls/syscall_64.tbl).
NR_USERFAULTFD = 323
UFFD_USER_MODE_ONLY = 1

UFFD_API = 0xAA
UFFDIO = 0xAA


class UffdioApi(ctypes.Structure):
    """struct uffdio_api."""

    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class UffdioRange(ctypes.Structure):
    """struct uffdio_range."""

    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    """struct uffdio_register."""

    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioWriteprotect(ctypes.Structure):
    """struct uffdio_writeprotect."""

    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64)]


class UffdioCopy(ctypes.Structure):
    """struct uffdio_copy."""

    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class UffdioZeropage(ctypes.Structure):
    """struct uffdio_zeropage."""

    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64)]


UFFDIO_REGISTER = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x00, ctypes.sizeof(UffdioRegister))
UFFDIO_UNREGISTER = _ioc(_IOC_READ, UFFDIO, 0x01, ctypes.sizeof(UffdioRange))
UFFDIO_WAKE = _ioc(_IOC_READ, UFFDIO, 0x02, ctypes.sizeof(UffdioRange))
UFFDIO_COPY = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x03, ctypes.sizeof(UffdioCopy))
UFFDIO_ZEROPAGE = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x04, ctypes.sizeof(UffdioZeropage))
UFFDIO_WRITEPROTECT = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x06,
                           ctypes.sizeof(UffdioWriteprotect))
UFFDIO_API = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x3F, ctypes.sizeof(UffdioApi))

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0

UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15


# struct uffd_msg (32 bytes): u8 event, 7 reserved bytes, then for a page
# fault the union's ``pagefault`` member: u64 flags, u64 address, u32 ptid.
UFFD_MSG_SIZE = 32
UFFD_MSG_EVENT_OFFSET = 0
UFFD_MSG_ADDRESS_OFFSET = 16
UFFD_MSG_PTID_OFFSET = 24
UFFD_EVENT_PAGEFAULT = 0x12


# --- PAGEMAP_SCAN (include/uapi/linux/fs.h) ---------------------------------

class PageRegion(ctypes.Structure):
    """struct page_region: [start, end) with the categories asked for."""

    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


class PmScanArg(ctypes.Structure):
    """struct pm_scan_arg."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask",
    )]


PAGEMAP_SCAN = _ioc(_IOC_READ | _IOC_WRITE, ord("f"), 16, ctypes.sizeof(PmScanArg))
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
PAGE_IS_WRITTEN = 1 << 1

assert ctypes.sizeof(UffdioApi) == 24
assert ctypes.sizeof(UffdioRegister) == 32
assert ctypes.sizeof(PmScanArg) == 96
assert ctypes.sizeof(PageRegion) == 24
