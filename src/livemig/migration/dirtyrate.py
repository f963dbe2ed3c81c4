"""calc-dirty-rate / query-dirty-rate: how fast the guest dirties its RAM,
measured over ``calc-time`` seconds, as QEMU 7.2 measures it.

- ``page-sampling`` (the default): ``sample-pages`` pages per GiB of RAM,
  drawn at random (one from each equal slice of RAM), are copied at the
  start and compared at the end; the share that changed, times the RAM size
  in MiB, over calc-time. It counts
  distinct pages changed, as QEMU's does (a page written twice counts once,
  a write of the same bytes not at all). QEMU skips RAM blocks under 128 MiB;
  livemig samples any size.
- ``dirty-bitmap``: the accelerator's own dirty tracking (the KVM dirty log
  or ring, or userfaultfd write-protect under tcg) counts every page written
  during calc-time. It reads the VM's shared dirty tracking, so it runs
  beside a migration or the dirty limiter.
- ``dirty-ring``: KVM's dirty ring (``-accel kvm,dirty-ring-size=N``) counts
  the entries each vCPU added during calc-time, as QEMU's does (a page
  written again after a harvest counts again); the answer gains
  ``vcpu-dirty-rate``. Refused without a ring, with QEMU's words.

The answer is in MiB/s, which QEMU calls MB/s.
"""

from __future__ import annotations

import threading
import time
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


class DirtyRateResult:
    """The last (or current) measurement, as query-dirty-rate reports it."""

    def __init__(self, status: str = "unstarted", mode: str = "page-sampling",
                 sample_pages: int = 0, start_time: int = 0, calc_time: int = 0) -> None:
        self.status = status              # unstarted, measuring, measured
        self.mode = mode
        self.sample_pages = sample_pages
        self.start_time = start_time      # seconds on the monotonic clock, as QEMU's
        self.calc_time = calc_time
        self.rate: int | None = None      # MiB/s
        self.vcpu_rates: list[int] | None = None  # dirty-ring mode: MiB/s per vCPU

    def to_qmp(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "sample-pages": self.sample_pages,
                               "mode": self.mode, "start-time": self.start_time,
                               "calc-time": self.calc_time}
        if self.rate is not None and self.status == "measured":
            out["dirty-rate"] = self.rate
            if self.vcpu_rates is not None:
                out["vcpu-dirty-rate"] = [{"id": index, "dirty-rate": rate}
                                          for index, rate in enumerate(self.vcpu_rates)]
        return out


class DirtyRateMeter:
    """One measurement at a time, on its own thread; the last answer kept."""

    def __init__(self, machine: Machine) -> None:
        self._machine = machine
        self._lock = threading.Lock()
        self.result = DirtyRateResult()
        self._stop = threading.Event()

    @property
    def measuring(self) -> bool:
        return self.result.status == "measuring"

    def start(self, calc_time: int, sample_pages: int | None, mode: str) -> None:
        """calc-dirty-rate."""
        low, high = CALC_TIME_RANGE
        if not low <= calc_time <= high:
            raise MigrationError(f"calc-time is out of range[{low}, {high}].")
        if sample_pages is not None:
            low, high = SAMPLE_PAGES_RANGE
            if mode != "page-sampling":
                raise MigrationError("either sample-pages or dirty-ring can be specified.")
            if not low <= sample_pages <= high:
                raise MigrationError(f"sample-pages is out of range[{low}, {high}].")
        if mode == "dirty-ring" and self._machine.dirty_ring_counts() is None:
            raise MigrationError("mode dirty-ring is not enabled, use other method instead.")
        with self._lock:
            if self.measuring:
                raise MigrationError("the dirty rate is already being measured.")
            self.result = DirtyRateResult(
                "measuring", mode,
                sample_pages if sample_pages is not None else
                (SAMPLE_PAGES_DEFAULT if mode == "page-sampling" else 0),
                int(time.monotonic()), calc_time)
            self._stop.clear()
        jobthread.start("dirtyrate", self._run, self._crashed)

    def stop(self) -> None:
        """End a measurement early (the VM is going away)."""
        self._stop.set()

    def _run(self) -> None:
        result = self.result
        vcpu_rates = None
        if result.mode == "dirty-bitmap":
            pages: float = self._bitmap_pages(result.calc_time)
        elif result.mode == "dirty-ring":
            vcpu_pages = self._ring_pages(result.calc_time)
            vcpu_rates = [self._rate(count, result.calc_time) for count in vcpu_pages]
            pages = sum(vcpu_pages)
        else:
            pages = self._sampled_pages(result.calc_time, result.sample_pages)
        with self._lock:
            result.rate = self._rate(pages, result.calc_time)
            result.vcpu_rates = vcpu_rates
            result.status = "measured"

    @staticmethod
    def _rate(pages: float, calc_time: int) -> int:
        return round(pages * PAGE_SIZE / (1 << 20) / calc_time)  # whole MB/s, as QEMU

    def _crashed(self, err: BaseException) -> None:
        # A failed measurement ends as an answer of 0, status measured, so
        # the next calc-dirty-rate is not refused for ever; the log has why.
        with self._lock:
            self.result.rate = 0
            self.result.status = "measured"

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

        reader = self._machine.dirty_tracker()
        reader.start()
        try:
            self._stop.wait(calc_time)
            return int(np.count_nonzero(reader.sync()))
        finally:
            reader.stop()

    def _ring_pages(self, calc_time: int) -> list[int]:
        """Dirty-ring entries each vCPU added in calc_time."""
        reader = self._machine.dirty_tracker()
        reader.start()  # arms the ring (or harvests it, if already armed)
        try:
            before = self._machine.dirty_ring_counts() or []
            self._stop.wait(calc_time)
            reader.sync()  # harvests every ring
            after = self._machine.dirty_ring_counts() or []
        finally:
            reader.stop()
        return [end - start for start, end in zip(before, after, strict=True)]
