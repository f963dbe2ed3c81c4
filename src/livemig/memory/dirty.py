"""Dirty-page trackers: which guest pages changed since the last sync.

Every tracker returns a numpy bool array, one entry per page, and ORs in the
pages the VMM wrote itself (``GuestRam.take_vmm_dirty``), which no
accelerator-level mechanism sees.

- :class:`KvmDirtyTracker`: the KVM dirty log of the RAM memory slot.
- :class:`UffdWpDirtyTracker`: userfaultfd write-protect in asynchronous
  mode plus PAGEMAP_SCAN (Linux 6.7+). The kernel notes the first write to
  each protected page without stopping the writer; one scan returns the
  written pages and protects them again. Sees every writer in the process
  (Unicorn, the VMM). The tracker for ``tcg``.
- :class:`ShadowDirtyTracker`: compares RAM against a private copy with
  numpy. Works anywhere, costs a second copy of RAM and a full compare per
  sync (~40 ms per 150 MiB here): the fallback where userfaultfd
  write-protect is unavailable.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from ..kvm import KvmVm
from ..uffd import Userfaultfd, probe_wp_async
from ..uffd import abi as uffd_abi
from ..uffd.pagemap import WrittenPageScanner
from .ram import PAGE_SIZE, GuestRam

log = logging.getLogger(__name__)

_WORDS_PER_PAGE = PAGE_SIZE // 8
_COMPARE_BLOCK = 4096  # pages compared per numpy call: bounds temporary memory


class DirtyTracker(Protocol):
    name: str

    def start(self) -> None:
        """Begin: from now on every write is reported by a later sync."""
        ...

    def sync(self) -> np.ndarray:
        """Pages written since start() or the previous sync (bool per page)."""
        ...

    def stop(self) -> None: ...


class KvmDirtyTracker:
    name = "kvm-dirty-log"

    def __init__(self, vm: KvmVm, slot: int, ram: GuestRam) -> None:
        self._vm, self._slot, self._ram = vm, slot, ram
        words = (ram.pages + 63) // 64
        self._bitmap = np.zeros(words, dtype=np.uint64)

    def start(self) -> None:
        self._vm.set_memory_region(self._slot, 0, self._ram.size, self._ram.address,
                                   log_dirty=True)
        self._ram.take_vmm_dirty()

    def sync(self) -> np.ndarray:
        # The bitmap array outlives the ioctl, which writes into it.
        self._vm.get_dirty_log(self._slot, self._bitmap.ctypes.data)
        bits = np.unpackbits(self._bitmap.view(np.uint8), bitorder="little")
        return bits[: self._ram.pages].astype(bool) | self._ram.take_vmm_dirty()

    def stop(self) -> None:
        self._vm.set_memory_region(self._slot, 0, self._ram.size, self._ram.address,
                                   log_dirty=False)


class UffdWpDirtyTracker:
    name = "uffd-wp-async"

    def __init__(self, ram: GuestRam) -> None:
        self._ram = ram
        self._uffd: Userfaultfd | None = None
        self._scanner: WrittenPageScanner | None = None

    def start(self) -> None:
        ram = self._ram
        self._uffd = Userfaultfd(uffd_abi.UFFD_FEATURE_WP_ASYNC
                                 | uffd_abi.UFFD_FEATURE_WP_UNPOPULATED)
        try:
            self._uffd.register(ram.address, ram.size, uffd_abi.UFFDIO_REGISTER_MODE_WP)
            self._uffd.write_protect(ram.address, ram.size)
            self._scanner = WrittenPageScanner(ram.address, ram.size)
        except Exception:
            try:
                self.stop()
            except Exception:  # keep the error that says why start failed
                log.warning("dirty tracking: cleanup after a failed start failed",
                            exc_info=True)
            raise
        ram.take_vmm_dirty()

    def sync(self) -> np.ndarray:
        assert self._scanner is not None, "sync() before start()"
        dirty = np.zeros(self._ram.pages, dtype=bool)
        self._scanner.scan(dirty)
        return dirty | self._ram.take_vmm_dirty()

    def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.close()
            self._scanner = None
        if self._uffd is not None:
            try:
                self._uffd.unregister(self._ram.address, self._ram.size)
            finally:
                self._uffd.close()
                self._uffd = None


class ShadowDirtyTracker:
    name = "shadow-compare"

    def __init__(self, ram: GuestRam) -> None:
        self._ram = ram
        self._shadow: np.ndarray | None = None

    def _pages(self, array: np.ndarray) -> np.ndarray:
        return array.view(np.uint64).reshape(self._ram.pages, _WORDS_PER_PAGE)

    def start(self) -> None:
        self._shadow = self._ram.array.copy()
        self._ram.take_vmm_dirty()

    def sync(self) -> np.ndarray:
        assert self._shadow is not None, "sync() before start()"
        live, shadow = self._pages(self._ram.array), self._pages(self._shadow)
        dirty = np.zeros(self._ram.pages, dtype=bool)
        for first in range(0, self._ram.pages, _COMPARE_BLOCK):
            block = slice(first, first + _COMPARE_BLOCK)
            changed = (live[block] != shadow[block]).any(axis=1)
            dirty[block] = changed
            if changed.any():
                rows = np.flatnonzero(changed) + first
                shadow[rows] = live[rows]
        return dirty | self._ram.take_vmm_dirty()

    def stop(self) -> None:
        self._shadow = None


def process_tracker(ram: GuestRam) -> DirtyTracker:
    """A tracker that sees every writer in this process: userfaultfd
    write-protect, or (slower, memory-hungry) the shadow compare where the
    kernel lacks asynchronous write-protect. Used under tcg and qtest."""
    problem = probe_wp_async()
    if problem is None:
        return UffdWpDirtyTracker(ram)
    log.warning("userfaultfd write-protect unavailable (%s): dirty tracking falls back to "
                "comparing RAM with a copy", problem)
    return ShadowDirtyTracker(ram)
