"""Dirty-page trackers: which guest pages changed since the last sync.

Every tracker returns a numpy bool array, one entry per page, and ORs in the
pages the VMM wrote itself (``GuestRam.take_vmm_dirty``), which no
accelerator-level mechanism sees.

- :class:`KvmDirtyTracker`: the KVM dirty log of the RAM memory slot.
- :class:`KvmDirtyRingTracker`: KVM's per-vCPU dirty rings
  (``-accel kvm,dirty-ring-size=N``): the kernel appends each page a vCPU
  writes to that vCPU's ring, which we harvest; counts per vCPU come free.
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

import mmap
import threading
import time
from typing import Protocol

import numpy as np

from ..kvm import KvmVm
from ..kvm import abi as kvm_abi
from ..logs import get_logger
from ..uffd import Userfaultfd, probe_wp_async
from ..uffd import abi as uffd_abi
from ..uffd.pagemap import WrittenPageScanner
from .ram import PAGE_SIZE, GuestRam

log = get_logger(__name__)

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


# struct kvm_dirty_gfn (include/uapi/linux/kvm.h), as numpy sees it.
_GFN = np.dtype([("flags", "<u4"), ("slot", "<u4"), ("offset", "<u8")])
assert _GFN.itemsize == 16


class KvmDirtyRingTracker:
    """Harvests the vCPUs' dirty rings into one bitmap.

    The kernel fills an entry (slot, page) and then sets its DIRTY flag; we
    take entries in ring order from where we stopped, up to the first one
    not yet dirty, mark them RESET, and ask KVM_RESET_DIRTY_RINGS to recycle
    them (and write-protect their pages again). Reading every flag before
    any offset is enough on x86, where loads are not reordered with older
    loads. Harvesting may run on any thread while the vCPU runs, as the
    kernel's API allows.

    The kernel is meant to stop a vCPU (KVM_EXIT_DIRTY_RING_FULL) a
    reserve of 64 entries before its ring is full. On this project's nested
    hosts it was seen to write on past the reserve and overrun the ring
    (the kernel's own warning in kvm_dirty_ring_push, and harvests of a
    whole ring), so a lost entry would be a page migration never resends.
    Hence: a reaper thread harvests every REAP_INTERVAL_S while tracking
    runs, so a ring never gets near full; a harvest that finds the whole
    ring dirty reports every page dirty (the safe answer when entries may
    be lost); and after an overrun, the vCPU thread (its vCPU out of
    KVM_RUN, so nothing is being written) steps the fetch index over the
    entries the kernel skipped, which it otherwise would wait for forever.
    """

    name = "kvm-dirty-ring"
    REAP_INTERVAL_S = 0.02

    def __init__(self, vm: KvmVm, slot: int, ram: GuestRam, rings: list[mmap.mmap],
                 reap: bool = True) -> None:
        """``reap``: run the reaper thread while tracking (tests turn it off)."""
        self._vm, self._slot, self._ram = vm, slot, ram
        self._reap_enabled = reap
        # Views into the rings the vCPUs mapped; close() drops them before
        # the vCPUs unmap (an exported mmap cannot be closed).
        self._rings = [np.frombuffer(ring, dtype=_GFN) for ring in rings]
        self._fetch = [0] * len(rings)
        self._lock = threading.Lock()
        self._collected = np.zeros(ram.pages, dtype=bool)
        self.harvested = [0] * len(rings)  # entries taken from each vCPU's ring, ever
        self.overruns = 0                  # harvests that found a whole ring dirty
        self._reaping = threading.Event()
        self._reaper: threading.Thread | None = None

    def start(self) -> None:
        self.harvest()
        self._vm.set_memory_region(self._slot, 0, self._ram.size, self._ram.address,
                                   log_dirty=True)
        with self._lock:
            self._collected[:] = False
        self._ram.take_vmm_dirty()
        if not self._reap_enabled:
            return
        self._reaping.set()
        self._reaper = threading.Thread(target=self._reap, name="dirty ring reaper",
                                        daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        try:
            while self._reaping.is_set():
                self.harvest()
                time.sleep(self.REAP_INTERVAL_S)
        except Exception:  # no silent death: the next sync says every page is dirty
            log.error("dirty ring reaper stopped by an error", exc_info=True)
            with self._lock:
                self._collected[:] = True

    def harvest(self, vcpu_stopped: bool = False) -> int:
        """Move every dirty entry of every ring into the bitmap; how many.
        ``vcpu_stopped``: called by the vCPU thread after a ring-full exit."""
        taken = 0
        with self._lock:
            for index, ring in enumerate(self._rings):
                count = self._harvest_ring(index, ring)
                if not count and vcpu_stopped:
                    count = self._step_over_overrun(index, ring)
                if count == len(ring):
                    self._overrun(index)
                self.harvested[index] += count
                taken += count
            if taken or vcpu_stopped:
                self._vm.reset_dirty_rings()
        return taken

    def _harvest_ring(self, index: int, ring: np.ndarray) -> int:
        fetch, size = self._fetch[index], len(ring)
        taken = 0
        # The ring from the fetch index to its end, then from its start.
        for part in (ring[fetch:], ring[:fetch]):
            ready = part["flags"] == kvm_abi.KVM_DIRTY_GFN_F_DIRTY
            count = len(part) if ready.all() else int(np.argmin(ready))
            if count:
                entries = part[:count]
                pages = entries["offset"]
                ours = (entries["slot"] == self._slot) & (pages < self._ram.pages)
                self._collected[pages[ours]] = True
                entries["flags"] = kvm_abi.KVM_DIRTY_GFN_F_RESET
                taken += count
            if count < len(part):
                break
        self._fetch[index] = (fetch + taken) % size
        return taken

    def _step_over_overrun(self, index: int, ring: np.ndarray) -> int:
        """A full ring with nothing at the fetch index: the kernel overran
        and now writes further on. Hand the skipped entries back (RESET, so
        the kernel's reset can pass them) and harvest from its first one."""
        fetch = self._fetch[index]
        order = np.roll(np.arange(len(ring)), -fetch)
        dirty = ring["flags"][order] == kvm_abi.KVM_DIRTY_GFN_F_DIRTY
        if not dirty.any():
            return 0
        skipped = order[: int(np.argmax(dirty))]
        ring["flags"][skipped] = kvm_abi.KVM_DIRTY_GFN_F_RESET
        self._fetch[index] = (fetch + len(skipped)) % len(ring)
        self._overrun(index)
        return len(skipped) + self._harvest_ring(index, ring)

    def _overrun(self, index: int) -> None:
        self.overruns += 1
        self._collected[:] = True  # entries may be lost: every page counts as dirty
        log.warning("vCPU %d's dirty ring overran (the kernel wrote past its reserve): "
                    "every page is reported dirty once", index)

    def sync(self) -> np.ndarray:
        self.harvest()
        with self._lock:
            dirty, self._collected = self._collected, np.zeros(self._ram.pages, dtype=bool)
        return dirty | self._ram.take_vmm_dirty()

    def stop(self) -> None:
        self._reaping.clear()
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.join(2.0)
        self._vm.set_memory_region(self._slot, 0, self._ram.size, self._ram.address,
                                   log_dirty=False)
        self.harvest()

    def close(self) -> None:
        self._reaping.clear()
        self._rings = []


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


class SharedRamTracker:
    """For RAM that is not sent (``x-ignore-shared`` on a shared backend:
    the destination maps the same pages): nothing is ever dirty, and no
    tracking is armed, so the guest pays nothing for it."""

    name = "none (shared RAM is not sent)"

    def __init__(self, ram: GuestRam) -> None:
        self._pages = ram.pages

    def start(self) -> None:
        pass

    def sync(self) -> np.ndarray:
        return np.zeros(self._pages, dtype=bool)

    def stop(self) -> None:
        pass


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
