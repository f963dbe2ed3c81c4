"""background-snapshot: save a running guest as it was at one instant.

At the start the guest is paused for as long as it takes to capture its
vCPU and device state and to write-protect all of RAM with userfaultfd
(synchronous mode, unpopulated pages included); then it runs on. Each page
is sent exactly once with the contents it had at that instant:

- a background pass sends the pages in order, a chunk at a time, and
  lifts the protection of each chunk once it is sent;
- a guest write to a page not sent yet faults; the fault service sends that
  page first, then lifts its protection, which lets the write go through;
- the VMM's own writes (devices, qtest) go through ``GuestRam.access_guard``,
  which sends the pages first: a VMM thread must never block on a protected
  page while it holds the GIL the fault service needs.

One lock orders the three, so a page is sent once, before anyone changes it.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable

import numpy as np

from ..errors import MigrationError, UffdError
from ..logs import get_logger
from ..memory import PAGE_SIZE, GuestRam
from ..uffd import Userfaultfd
from ..uffd import abi as uffd_abi
from .pages import CHUNK_PAGES, ChunkRecords

log = get_logger(__name__)

class SnapshotRam:
    """Guest RAM write-protected for one snapshot; ``send`` puts records on
    the stream (called under this object's lock)."""

    def __init__(self, ram: GuestRam, send: Callable[[ChunkRecords], None],
                 kernel_faults: bool) -> None:
        self._ram = ram
        self._send = send
        self._lock = threading.Lock()
        self.saved = np.zeros(ram.pages, dtype=bool)
        self.faults = 0  # guest writes that had to wait for their page to be saved
        self._stop = threading.Event()
        features = uffd_abi.UFFD_FEATURE_WP_UNPOPULATED
        try:
            self._uffd = Userfaultfd(features, kernel_faults=kernel_faults)
            self._uffd.register(ram.address, ram.size, uffd_abi.UFFDIO_REGISTER_MODE_WP)
        except UffdError as err:
            raise MigrationError(f"background-snapshot needs userfaultfd write-protect on "
                                 f"guest RAM: {err}") from err
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def protect(self) -> None:
        """Write-protect all of RAM (the guest is paused) and start serving faults."""
        self._uffd.write_protect(self._ram.address, self._ram.size, True)
        self._ram.access_guard = self.save_range
        self._thread = threading.Thread(target=self._serve, name="snapshot-faults",
                                        daemon=True)
        self._thread.start()

    def _save(self, first: int, count: int) -> None:
        """Send the unsent pages of [first, +count) and unprotect the range
        (caller holds the lock)."""
        mask = ~self.saved[first:first + count]
        if mask.any():
            self._send(ChunkRecords(self._ram, first, mask.copy()))
            self.saved[first:first + count] = True
        # Lifting the protection also wakes a writer waiting on these pages.
        self._uffd.write_protect(self._ram.address + first * PAGE_SIZE, count * PAGE_SIZE,
                                 False)

    def save_range(self, address: int, length: int) -> None:
        """access_guard: the VMM is about to touch [address, +length)."""
        first = address // PAGE_SIZE
        last = (address + length - 1) // PAGE_SIZE
        with self._lock:
            self._save(first, last + 1 - first)

    def background_pass(self, before_chunk: Callable[[], None]) -> None:
        """Every page, in order; ``before_chunk`` (rate limit, cancel) first."""
        for first in range(0, self._ram.pages, CHUNK_PAGES):
            before_chunk()
            if self.failure is not None:
                raise MigrationError(f"background-snapshot fault service failed: "
                                     f"{self.failure}") from self.failure
            with self._lock:
                self._save(first, min(CHUNK_PAGES, self._ram.pages - first))

    def _serve(self) -> None:
        """The fault service: each write fault sends its page first."""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._uffd.fd], [], [], 0.1)
                if not ready:
                    continue
                addresses, _threads = self._uffd.read_faults()
                for address in addresses.tolist():
                    page = (int(address) - self._ram.address) // PAGE_SIZE
                    if not 0 <= page < self._ram.pages:
                        continue
                    with self._lock:
                        self.faults += 1
                        self._save(page, 1)
        except BaseException as err:  # reported by background_pass, never lost
            log.error("background-snapshot fault service failed: %s", err)
            self.failure = err

    def close(self) -> None:
        """Stop serving and lift every protection (also on failure or cancel)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        log.info("background-snapshot: %d guest writes waited for their page to be saved",
                 self.faults)
        self._ram.access_guard = None
        try:
            self._uffd.write_protect(self._ram.address, self._ram.size, False)
            self._uffd.unregister(self._ram.address, self._ram.size)
        except UffdError as err:
            log.warning("background-snapshot: could not unprotect guest RAM: %s", err)
        self._uffd.close()
