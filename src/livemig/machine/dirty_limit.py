"""set-vcpu-dirty-limit: hold a vCPU's dirty-page rate at or under a quota.

QEMU (8.1) does this only under KVM with a dirty ring: the vCPU sleeps each
time its ring fills. livemig does it under both accelerators from its own
dirty tracking: every period (1 s, or the migration's
``x-vcpu-dirty-limit-period`` while a dirty-limit migration runs) it counts
the pages written, and sets the vCPU's sleep share so that the next period's
rate lands on the quota. The vCPU then runs a 10 ms slice and sleeps its
share of time, as under auto-converge.

The controller assumes a guest dirties in proportion to the time it runs,
so the running share that meets the quota is ``running * quota / rate``;
it moves half-way there (in ratio) each period, which settles within a
few periods without swinging. The machine has one vCPU, so the VM's rate is vCPU 0's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import MachineError
from ..logs import get_logger
from ..memory.ram import PAGE_SIZE

if TYPE_CHECKING:
    from ..memory.shared_tracking import DirtyReader, SharedTracking

log = get_logger(__name__)

DEFAULT_PERIOD_MS = 1000         # QEMU's measuring period for the limit
TIMESLICE_US = 10_000            # the throttled vCPU's run slice (vcpu.THROTTLE_TIMESLICE_S)
MAX_SLEEP_SHARE = 0.99
_STEP = 4.0                      # the running share moves by at most this factor a period


class VcpuLimit:
    """One vCPU's limit (a plain class: start-up imports this module)."""

    __slots__ = ("current", "quota")

    def __init__(self, quota: int, current: int = 0) -> None:
        self.quota = quota        # MB/s (MiB/s, as QEMU counts)
        self.current = current    # measured over the last period, MB/s


class DirtyLimiter:
    """The limits of one VM and the thread that enforces them."""

    def __init__(self, tracking: SharedTracking, vcpus: int,
                 set_sleep: Callable[[float], None]) -> None:
        """``set_sleep(percent)``: the share of time the vCPU sleeps."""
        self._tracking = tracking
        self._vcpus = vcpus
        self._set_sleep = set_sleep
        self._lock = threading.Lock()
        self._limits: dict[int, VcpuLimit] = {}
        self._running = 1.0               # share of time the vCPU runs
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.period_ms = DEFAULT_PERIOD_MS

    # --- the QMP surface (via the migration manager) -----------------------------
    @property
    def in_service(self) -> bool:
        with self._lock:
            return bool(self._limits)

    def valid_index(self, cpu: int) -> bool:
        return 0 <= cpu < self._vcpus

    def set(self, quota: int, cpu: int | None = None) -> None:
        """Limit vCPU ``cpu`` (all when None) to ``quota`` MB/s."""
        if cpu is not None and not self.valid_index(cpu):
            raise MachineError("incorrect cpu index specified")
        with self._lock:
            for index in ([cpu] if cpu is not None else range(self._vcpus)):
                limit = self._limits.get(index)
                if limit is None:
                    self._limits[index] = VcpuLimit(quota)
                else:
                    limit.quota = quota
            # The thread clears _thread, under this lock, when it decides to end.
            thread = None
            if self._thread is None:
                thread = self._thread = threading.Thread(target=self._main,
                                                         name="dirty limit", daemon=True)
        if thread is not None:
            thread.start()

    def cancel(self, cpu: int | None = None) -> None:
        """Lift the limit of ``cpu`` (all when None); the thread ends with the last."""
        if cpu is not None and not self.valid_index(cpu):
            raise MachineError("incorrect cpu index specified")
        with self._lock:
            if cpu is None:
                self._limits.clear()
            else:
                self._limits.pop(cpu, None)
            last = not self._limits
        if last:
            self._wake.set()

    def info(self) -> list[dict[str, int]]:
        """query-vcpu-dirty-limit's list: limited vCPUs only."""
        with self._lock:
            return [{"cpu-index": index, "limit-rate": limit.quota,
                     "current-rate": limit.current}
                    for index, limit in sorted(self._limits.items())]

    def throttle_time_per_round_us(self) -> int:
        """dirty-limit-throttle-time-per-round: the sleep after each run slice."""
        with self._lock:
            if not self._limits or self._running >= 1.0:
                return 0
            return int(TIMESLICE_US * (1 - self._running) / self._running)

    def ring_full_time_us(self) -> int:
        """dirty-limit-ring-full-time: how long the vCPU runs between sleeps
        (QEMU's vCPU runs until its ring fills; livemig's for one slice)."""
        return TIMESLICE_US if self.in_service else 0

    def stop(self) -> None:
        """End every limit (the VM is going away)."""
        thread = self._thread
        self.cancel()
        if thread is not None:
            thread.join(2.0)

    # --- the limiter thread -------------------------------------------------------
    def _main(self) -> None:
        reader = self._tracking.reader()
        try:
            reader.start()
            self._loop(reader)
        except Exception:  # no silent death: logged, and the limit visibly ends
            log.error("dirty limit: stopped by an error", exc_info=True)
            with self._lock:
                self._limits.clear()  # query-vcpu-dirty-limit then lists none
                self._thread = None
        finally:
            try:
                reader.stop()
            finally:
                self._running = 1.0
                self._set_sleep(0.0)

    def _loop(self, reader: DirtyReader) -> None:
        import numpy as np  # not at import: the machine layer loads before the greeting

        last = time.monotonic()
        while True:
            woken = self._wake.wait(self.period_ms / 1000)
            with self._lock:
                if not self._limits:
                    self._thread = None  # a later set() starts a new thread
                    return
            if woken:  # a cancel, then a new limit: measure on
                self._wake.clear()
                continue
            now = time.monotonic()
            pages = int(np.count_nonzero(reader.sync()))
            rate = pages * PAGE_SIZE / (1 << 20) / max(now - last, 1e-3)
            last = now
            with self._lock:
                if not self._limits:
                    continue
                quota = min(limit.quota for limit in self._limits.values())
                for limit in self._limits.values():
                    limit.current = round(rate)
                self._running = self._next_running(self._running, rate, quota)
                running = self._running
            log.debug("dirty limit: %.1f MB/s against %d: the vCPU now runs %.0f%% of the "
                      "time", rate, quota, 100 * running)
            self._set_sleep(100.0 * (1.0 - running))

    @staticmethod
    def _next_running(running: float, rate: float, quota: float) -> float:
        """Half-way (in ratio) from ``running`` to the share that would bring
        ``rate``, seen at ``running``, to ``quota``: a period that straddles
        a change, or a guest that catches up after a sleep, then only slows
        the approach instead of making it swing."""
        ratio = math.sqrt(quota / rate) if rate > 0 else _STEP
        target = running * min(max(ratio, 1 / _STEP), _STEP)
        return min(1.0, max(1.0 - MAX_SLEEP_SHARE, target))


