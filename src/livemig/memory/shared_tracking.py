"""One dirty tracker, many readers.

The accelerator's dirty tracking (the KVM dirty log or ring, userfaultfd
write-protect) can be armed once per VM, but three parts of livemig want
to know which pages the guest wrote: a migration job, ``calc-dirty-rate``
in dirty-bitmap or dirty-ring mode, and the dirty limiter. Each takes a
:class:`DirtyReader` from :class:`SharedTracking`; the first reader arms
the tracker and the last disarms it. A reader's ``sync`` returns every page
written since that reader's own previous sync, whoever synced the tracker
in between: pages harvested for one reader are kept for the others.

No numpy here (the arrays come from the tracker and are only OR-ed), so
importing this module at start-up costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .dirty import DirtyTracker


class SharedTracking:
    """Hands out readers of one tracker made by ``make`` when first needed."""

    def __init__(self, make: Callable[[], DirtyTracker]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._tracker: DirtyTracker | None = None
        # reader -> pages written since its last sync that others harvested
        # (None: none yet)
        self._pending: dict[DirtyReader, np.ndarray | None] = {}

    def reader(self) -> DirtyReader:
        return DirtyReader(self)

    @property
    def name(self) -> str:
        with self._lock:
            return self._tracker.name if self._tracker is not None else ""

    @property
    def readers(self) -> int:
        with self._lock:
            return len(self._pending)

    def _join(self, reader: DirtyReader) -> None:
        with self._lock:
            if reader in self._pending:
                return
            if self._tracker is None:
                tracker = self._make()
                tracker.start()  # raises before anything is recorded
                self._tracker = tracker
            else:
                # What was written up to now belongs to the readers already here.
                self._spread(self._tracker.sync(), skip=None)
            self._pending[reader] = None

    def _sync(self, reader: DirtyReader) -> np.ndarray:
        with self._lock:
            if self._tracker is None or reader not in self._pending:
                raise RuntimeError("sync() of a dirty reader that has not started")
            fresh = self._tracker.sync()
            mine = self._pending[reader]
            self._pending[reader] = None
            self._spread(fresh, skip=reader)
            if mine is None:
                return fresh
            mine |= fresh
            return mine

    def _spread(self, fresh: np.ndarray, skip: DirtyReader | None) -> None:
        for other, pending in self._pending.items():
            if other is skip:
                continue
            if pending is None:
                self._pending[other] = fresh.copy()
            else:
                pending |= fresh

    def _leave(self, reader: DirtyReader) -> None:
        with self._lock:
            if self._pending.pop(reader, False) is False or self._pending:
                return
            tracker, self._tracker = self._tracker, None
            if tracker is not None:
                tracker.stop()


class DirtyReader:
    """One reader's view; the :class:`~livemig.memory.dirty.DirtyTracker`
    protocol, so a job uses it as it would the tracker itself."""

    def __init__(self, hub: SharedTracking) -> None:
        self._hub = hub

    @property
    def name(self) -> str:
        return self._hub.name

    def start(self) -> None:
        self._hub._join(self)

    def sync(self) -> np.ndarray:
        return self._hub._sync(self)

    def stop(self) -> None:
        self._hub._leave(self)
