"""calc-dirty-rate / query-dirty-rate: how fast the guest dirties its RAM,
measured over ``calc-time`` seconds, as QEMU 7.2 measures it.

- ``page-sampling`` (the default): ``sample-pages`` pages per GiB of RAM,
  drawn at random (one from each equal slice of RAM), are copied at the
  start and compared at the end; the share that changed, times the RAM size
  in MiB, over calc-time. It counts
  distinct pages changed, as QEMU's does (a page written twice counts once,
  a write of the same bytes not at all). QEMU skips RAM blocks under 128 MiB;
  livemig samples any size.
- ``dirty-bitmap``: the accelerator's own dirty tracking (the KVM dirty log,
  or userfaultfd write-protect under tcg) counts every page written during
  calc-time. It shares the tracker with migration, so neither runs while
  the other does.
- ``dirty-ring``: needs KVM's dirty ring, which livemig does not enable:
  refused as QEMU refuses it without one.

The answer is in MiB/s, which QEMU calls MB/s.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MigrationError
from ..memory.ram import PAGE_SIZE
from . import jobthread

if TYPE_CHECKING:
    from ..machine import Machine

CALC_TIME_RANGE = (1, 60)
SAMPLE_PAGES_RANGE = (128, 16384)
SAMPLE_PAGES_DEFAULT = 512
MODES = ("page-sampling", "dirty-ring", "dirty-bitmap")


@dataclass
class DirtyRateResult:
    status: str = "unstarted"     # unstarted, measuring, measured
    mode: str = "page-sampling"
    sample_pages: int = 0
    start_time: int = 0           # seconds on the monotonic clock, as QEMU's
    calc_time: int = 0
    rate: int | None = None       # MiB/s

    def to_qmp(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "sample-pages": self.sample_pages,
                               "mode": self.mode, "start-time": self.start_time,
                               "calc-time": self.calc_time}
        if self.rate is not None and self.status == "measured":
            out["dirty-rate"] = self.rate
        return out


class DirtyRateMeter:
    """One measurement at a time, on its own thread; the last answer kept."""

    def __init__(self, machine: Machine) -> None:
        self._machine = machine
        self._lock = threading.Lock()
        self.result = DirtyRateResult()
        self._stop = threading.Event()
        self.using_tracker = False  # dirty-bitmap mode holds the dirty tracker

    @property
    def measuring(self) -> bool:
        return self.result.status == "measuring"

    def start(self, calc_time: int, sample_pages: int | None, mode: str,
              tracker_busy: bool) -> None:
        """calc-dirty-rate. ``tracker_busy``: a migration holds the dirty tracker."""
        low, high = CALC_TIME_RANGE
        if not low <= calc_time <= high:
            raise MigrationError(f"calc-time is out of range[{low}, {high}].")
        if sample_pages is not None:
            low, high = SAMPLE_PAGES_RANGE
            if mode != "page-sampling":
                raise MigrationError("either sample-pages or dirty-ring can be specified.")
            if not low <= sample_pages <= high:
                raise MigrationError(f"sample-pages is out of range[{low}, {high}].")
        if mode == "dirty-ring":
            raise MigrationError("mode dirty-ring is not enabled, use other method instead.")
        if mode == "dirty-bitmap" and tracker_busy:
            raise MigrationError("calc-dirty-rate in dirty-bitmap mode needs the dirty "
                                 "tracker, which a migration is using")
        with self._lock:
            if self.measuring:
                raise MigrationError("the dirty rate is already being measured.")
            self.result = DirtyRateResult(
                "measuring", mode,
                sample_pages if sample_pages is not None else
                (SAMPLE_PAGES_DEFAULT if mode == "page-sampling" else 0),
                int(time.monotonic()), calc_time)
            self.using_tracker = mode == "dirty-bitmap"
            self._stop.clear()
        jobthread.start("dirtyrate", self._run, self._crashed)

    def stop(self) -> None:
        """End a measurement early (the VM is going away)."""
        self._stop.set()

    def _run(self) -> None:
        result = self.result
        try:
            if result.mode == "dirty-bitmap":
                pages = self._bitmap_pages(result.calc_time)
            else:
                pages = self._sampled_pages(result.calc_time, result.sample_pages)
        finally:
            self.using_tracker = False
        rate = pages * PAGE_SIZE / (1 << 20) / result.calc_time
        with self._lock:
            result.rate = round(rate)  # QEMU answers in whole MB/s
            result.status = "measured"

    def _crashed(self, err: BaseException) -> None:
        # A failed measurement ends as an answer of 0, status measured, so
        # the next calc-dirty-rate is not refused for ever; the log has why.
        with self._lock:
            self.result.rate = 0
            self.result.status = "measured"
        self.using_tracker = False

    def _sampled_pages(self, calc_time: int, per_gib: int) -> float:
        """Estimated pages changed in calc_time, from a random sample."""
        import numpy as np  # not at import: QMP registers this module at start-up

        ram = self._machine.ram
        count = max(1, min(ram.pages, ram.pages * PAGE_SIZE * per_gib >> 30))
        # Stratified: one page drawn at random from each of `count` equal
        # slices of RAM. Unbiased like QEMU's uniform draw, and far steadier
        # for a working set that is one contiguous run.
        width = ram.pages / count
        jitter = np.random.default_rng().random(count)
        chosen = np.minimum(((np.arange(count) + jitter) * width).astype(np.int64),
                            ram.pages - 1)
        pages = ram.array.view(np.uint64).reshape(ram.pages, PAGE_SIZE // 8)
        before = pages[chosen]                       # a copy (fancy indexing)
        self._stop.wait(calc_time)                   # the measuring window
        changed = np.count_nonzero((pages[chosen] != before).any(axis=1))
        return changed / count * ram.pages

    def _bitmap_pages(self, calc_time: int) -> int:
        """Pages written in calc_time, by the accelerator's dirty tracking."""
        import numpy as np

        tracker = self._machine.dirty_tracker()
        tracker.start()
        try:
            self._stop.wait(calc_time)
            return int(np.count_nonzero(tracker.sync()))
        finally:
            tracker.stop()
