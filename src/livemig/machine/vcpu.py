"""The vCPU thread: runs the accelerator, stops on request within a deadline.

Stopping is a handshake. The controller clears ``want_run`` and kicks; the
vCPU thread, once out of the accelerator, reports ``idle``. Kicks repeat
until the report arrives (a cheap safety net: both accelerators keep a kick
pending until their next entry). The vCPU thread arms the accelerator
(forgets old kicks) while holding the same condition the controller uses, so
a kick made after ``want_run`` was cleared can never be lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..accel import Accelerator, Halted, Kicked, RunResult
from ..errors import MachineError
from ..logs import get_logger

log = get_logger(__name__)

STOP_TIMEOUT = 10.0
THROTTLE_TIMESLICE_S = 0.010  # a throttled vCPU's run slice, QEMU's 10 ms
_KICK_INTERVAL = 0.005


class VcpuThread:
    """Owns the thread that calls ``accel.run``."""

    def __init__(
        self, accel: Accelerator, index: int, after_run: Callable[[RunResult], None]
    ) -> None:
        self.accel = accel
        self.index = index
        self._after_run = after_run
        self._cond = threading.Condition()
        self._want_run = False
        self._idle = True
        self._quit = False
        self.halted = False
        self._throttle = 0.0     # percent of each time slice spent asleep
        self._ticking = False    # a ticker thread runs (set and cleared under _cond)
        self.native_id: int = 0
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"CPU {index}/{accel.name.upper()}", daemon=True
        )
        self._thread.start()
        self._started.wait()

    def _loop(self) -> None:
        self.native_id = threading.get_native_id()
        self._started.set()
        while True:
            with self._cond:
                while self._quit or not self._want_run or self.halted:
                    self._idle = True
                    self._cond.notify_all()
                    if self._quit:
                        return
                    self._cond.wait()
                self._idle = False
                self.accel.arm()
            result = self.accel.run()
            if isinstance(result, Kicked):
                self._throttle_sleep()
            if isinstance(result, Halted):
                with self._cond:
                    self.halted = True
            if not isinstance(result, Kicked | Halted):
                log.info("vCPU %d stopped: %s", self.index, result)
            self._after_run(result)

    # --- CPU throttle (auto-converge) ---------------------------------------------
    def set_throttle(self, percent: float) -> None:
        """Sleep ``percent``% of the time (0 ends it), as QEMU's CPU throttle:
        a ticker kicks the vCPU out once every slice / (1 - percent/100), and
        the vCPU then sleeps percent / (100 - percent) of a slice before it
        runs on."""
        with self._cond:
            self._throttle = max(0.0, min(99.0, float(percent)))
            self._cond.notify_all()
            start = self._throttle > 0 and not self._ticking
            self._ticking = self._ticking or start
        if start:
            threading.Thread(target=self._tick, daemon=True,
                             name=f"CPU {self.index} throttle").start()

    def _tick(self) -> None:
        while True:
            with self._cond:
                # One kick per run slice plus its sleep, as QEMU's throttle
                # timer: kicking every bare slice would land each kick soon
                # after the vCPU woke from the previous sleep, and the run
                # slices would shrink to nothing. A new percentage does not
                # restart the wait (a limiter resets it every period).
                period = THROTTLE_TIMESLICE_S / (1 - self._throttle / 100)
                if not self._wait_unless(period, lambda: not self._throttle or self._quit):
                    self._ticking = False  # a later set_throttle starts a new ticker
                    return
                busy = not self._idle
            if busy:
                self.accel.kick()

    def _throttle_sleep(self) -> None:
        with self._cond:
            percent = self._throttle
            if percent and self._want_run and not self._quit:
                self._wait_unless(THROTTLE_TIMESLICE_S * percent / (100 - percent),
                                  lambda: not self._throttle or not self._want_run
                                  or self._quit)

    def _wait_unless(self, seconds: float, stop: Callable[[], bool]) -> bool:
        """Wait ``seconds`` on the condition (held), or until ``stop()``
        holds when woken; False if it was ``stop()`` that ended the wait.
        Other notifications (a new percentage) do not cut it short."""
        deadline = time.monotonic() + seconds
        while not stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._cond.wait(left)
        return False

    @property
    def running(self) -> bool:
        with self._cond:
            return not self._idle

    def start(self) -> None:
        """Let the vCPU run (returns at once)."""
        with self._cond:
            self._want_run = True
            self._cond.notify_all()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the vCPU and wait until it is out of the accelerator."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._want_run = False
            self._cond.notify_all()  # ends a throttle sleep at once
            if threading.get_ident() == self._thread.ident:
                return  # the vCPU stopping itself: it is not inside run()
            while not self._idle:
                self.accel.kick()
                if self._cond.wait(_KICK_INTERVAL):
                    continue
                if time.monotonic() > deadline:
                    raise MachineError(f"vCPU {self.index} did not stop within {timeout:.0f}s")

    def wake(self) -> None:
        """Leave the halted state (after a reset or a state load)."""
        with self._cond:
            self.halted = False
            self._cond.notify_all()

    def set_halted(self, halted: bool) -> None:
        with self._cond:
            self.halted = halted
            self._cond.notify_all()

    def shutdown(self) -> None:
        try:
            self.stop(timeout=2.0)
        except MachineError:
            log.warning("vCPU %d did not stop at shutdown", self.index)
        with self._cond:
            self._quit = True
            self._cond.notify_all()
        self._thread.join(timeout=2.0)
