"""One virtual machine: RAM, devices, accelerator, vCPU thread, run state.

Control happens under ``Machine.lock`` (livemig's "big lock"): QMP commands,
qtest, and the migration job take it for every state change. The vCPU thread
never takes it; it only touches the device bus (which has its own lock) and
guest RAM.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..accel import (
    CpuState,
    Crashed,
    Kicked,
    RunResult,
    TripleFault,
    create_first,
)
from ..devices import IoBus, IsaDebugExit, RegisterState, SystemControlPortA, Uart16550
from ..errors import DeviceError, MachineError
from ..logs import get_logger
from ..memory import GuestRam
from ..memory.shared_tracking import SharedTracking
from .config import MachineConfig
from .dirty_limit import DirtyLimiter
from .runstate import NEEDS_RESET, RunState
from .vcpu import VcpuThread

if TYPE_CHECKING:
    from ..memory.dirty import DirtyTracker
    from ..memory.shared_tracking import DirtyReader

log = get_logger(__name__)

BOOT_ADDRESS = 0x7C00
BOOT_DRIVE = 0x80
COM1 = 0x3F8
PORT_92 = 0x92

EventSink = Callable[[str, dict[str, Any] | None], None]


class Machine:
    """A one-vCPU PC without firmware: the boot sector is loaded at 0x7c00."""

    def __init__(
        self,
        config: MachineConfig,
        serial_output: Callable[[bytes], None],
        emit: EventSink,
        exit_process: Callable[[int], None],
    ) -> None:
        self.config = config
        self.lock = threading.RLock()
        self._emit = emit
        backend = config.ram_backend
        self.ram = GuestRam(config.ram_size, backend.open() if backend is not None else None)
        if config.mem_prealloc or (backend is not None and backend.prealloc):
            try:
                self.ram.populate()
            except BaseException:
                self.ram.close()
                raise
        self.bus = IoBus()
        self.serial = Uart16550(serial_output)
        self.port92 = SystemControlPortA(self.request_reset)
        self.bus.map(COM1, 8, self.serial)
        self.bus.map(PORT_92, 1, self.port92)
        if config.debug_exit is not None:
            self.bus.map(config.debug_exit.iobase, config.debug_exit.iosize,
                         IsaDebugExit(exit_process))
        self._reset_requested = threading.Event()
        self.accel_name, self.accel = create_first(config.accelerators, self.ram, self.bus,
                                                   config.kvm_dirty_ring_size)
        self.vcpu: VcpuThread | None = None
        if self.accel is not None:
            self.vcpu = VcpuThread(self.accel, 0, self._after_run)
        self.dirty_tracking = SharedTracking(self._make_dirty_tracker)
        self._cpu_throttle = 0        # auto-converge's percentage
        self._limit_sleep = 0.0       # the dirty limiter's, percent
        self.dirty_limiter = DirtyLimiter(self.dirty_tracking, 1, self._set_limit_sleep)
        self._load_boot_sector()
        self.runstate = RunState.PRELAUNCH
        self.autostart = not config.start_paused
        self.shutdown_requested = threading.Event()
        self.exit_code = 0

    # --- boot ----------------------------------------------------------------
    def _load_boot_sector(self) -> None:
        sector = self.config.boot_sector
        if sector is None:
            # Nothing to boot: the vCPU sits halted, as a PC with no boot disk.
            if self.vcpu is not None:
                self.vcpu.set_halted(True)
            return
        if not (self.config.incoming and self.ram.shared):
            # (A destination on shared RAM maps a running guest's memory:
            # writing the sector there would overwrite that guest's page.)
            self.ram.write(BOOT_ADDRESS, sector)
        if self.accel is not None:
            self.accel.code_changed(BOOT_ADDRESS, len(sector))
            self.accel.set_state(CpuState.boot(BOOT_ADDRESS, BOOT_DRIVE))

    def start(self, load_engine: bool = True) -> None:
        """Enter the initial run state (after the servers are listening).
        ``load_engine=False``: the caller calls :meth:`load_engine` later."""
        if load_engine:
            self.load_engine()
        with self.lock:
            if self.config.incoming:
                self.runstate = RunState.INMIGRATE
            elif self.autostart:
                self._start_vcpus(emit_resume=False)
            else:
                self.runstate = RunState.PRELAUNCH

    def load_engine(self) -> None:
        """Have the accelerator build its engine in the background (once)."""
        if self.accel is not None:
            self.accel.preload(incoming=self.config.incoming)

    def wait_engine(self) -> None:
        """Wait until load_engine's work is done."""
        if self.accel is not None:
            self.accel.wait_ready()

    # --- run-state control (call with self.lock held) ---------------------------
    @property
    def running(self) -> bool:
        return self.runstate == RunState.RUNNING

    def _start_vcpus(self, emit_resume: bool) -> None:
        self.runstate = RunState.RUNNING
        if self.vcpu is not None:
            self.vcpu.start()
        if emit_resume:
            self._emit("RESUME", None)

    def stop(self, state: RunState = RunState.PAUSED, emit: bool = True) -> bool:
        """Pause the guest into ``state``; True if it was running.

        Not running already: nothing changes and no STOP is sent, as QEMU.
        """
        with self.lock:
            if not self.running:
                return False
            self.pause_vcpus()
            self.runstate = state
            if emit:
                self._emit("STOP", None)
            return True

    def cont(self) -> None:
        """Resume the guest (QMP ``cont``)."""
        with self.lock:
            if self.runstate in NEEDS_RESET:
                raise MachineError("Resetting the Virtual Machine is required")
            if self.runstate == RunState.INMIGRATE:
                self.autostart = True
                return
            if self.runstate == RunState.FINISH_MIGRATE:
                # Switchover, or postcopy: the guest may already run on the
                # destination, so running it here too would split it in two.
                raise MachineError("Migration is not finalized yet")  # QEMU's words
            if self.running:
                return
            self._start_vcpus(emit_resume=True)

    def resume(self) -> None:
        """Start the guest from any stopped state, sending RESUME."""
        with self.lock:
            if not self.running:
                self._start_vcpus(emit_resume=True)

    def set_runstate(self, state: RunState) -> None:
        with self.lock:
            self.runstate = state

    def pause_vcpus(self) -> None:
        """Stop vCPU execution without changing the run state."""
        if self.vcpu is not None:
            self.vcpu.stop()

    def resume_vcpus(self) -> None:
        if self.vcpu is not None and self.running:
            self.vcpu.start()

    def set_cpu_throttle(self, percent: int) -> None:
        """auto-converge: the vCPU sleeps ``percent``% of the time (0: none)."""
        self._cpu_throttle = percent
        self._apply_throttle()

    @property
    def cpu_throttle(self) -> int:
        """auto-converge's percentage (cpu-throttle-percentage)."""
        return self._cpu_throttle if self.vcpu is not None else 0

    def _set_limit_sleep(self, percent: float) -> None:
        self._limit_sleep = percent
        self._apply_throttle()

    def _apply_throttle(self) -> None:
        # Both may be set at once (a manual dirty limit under an auto-converge
        # migration): the vCPU sleeps the larger share.
        if self.vcpu is not None:
            self.vcpu.set_throttle(max(float(self._cpu_throttle), self._limit_sleep))

    # --- reset and shutdown --------------------------------------------------------
    def system_reset(self, reason: str = "host-qmp-system-reset", guest: bool = False) -> None:
        with self.lock:
            was_running = self.vcpu is not None and self.running
            if was_running:
                self.pause_vcpus()
            self._reset_devices_and_cpu()
            self._emit("RESET", {"guest": guest, "reason": reason})
            if was_running:
                self.resume_vcpus()

    def _reset_devices_and_cpu(self) -> None:
        self.bus.reset()
        if self.vcpu is not None:
            self.vcpu.wake()
        self._load_boot_sector()

    def request_reset(self) -> None:
        """A guest-initiated reset (port 0x92): done on the vCPU thread."""
        self._reset_requested.set()
        if self.accel is not None:
            self.accel.kick()

    def _after_run(self, result: RunResult) -> None:
        """Called on the vCPU thread after each return from the accelerator."""
        if isinstance(result, TripleFault) or self._reset_requested.is_set():
            self._reset_requested.clear()
            if self.config.no_reboot:
                self.request_shutdown("guest-reset")
                return
            self._reset_devices_and_cpu()
            self._emit("RESET", {"guest": True, "reason": "guest-reset"})
        elif isinstance(result, Crashed):
            log.error("guest stopped: %s", result.reason)
            if self.vcpu is not None:
                self.vcpu.stop()
            self.runstate = RunState.INTERNAL_ERROR
            self._emit("STOP", None)
        elif not isinstance(result, Kicked):
            pass  # halted: the vCPU thread parks itself

    def request_shutdown(self, reason: str, guest: bool = False) -> None:
        """Ask the main loop to end the process, after a SHUTDOWN event."""
        self._emit("SHUTDOWN", {"guest": guest, "reason": reason})
        self.shutdown_requested.set()

    def request_exit(self, code: int) -> None:
        """End the process with ``code`` and no SHUTDOWN event (a failed load)."""
        self.exit_code = code
        self.shutdown_requested.set()

    def close(self) -> None:
        self.dirty_limiter.stop()
        if self.vcpu is not None:
            self.vcpu.shutdown()
        if self.accel is not None:
            self.accel.close()

    # --- state for migration (vCPUs stopped) -----------------------------------------
    def save_cpu_state(self) -> CpuState:
        if self.accel is None:
            state = CpuState.boot()
            state.halted = True
            return state
        state = self.accel.get_state()
        state.halted = self.vcpu.halted if self.vcpu is not None else False
        return state

    def load_cpu_state(self, state: CpuState) -> None:
        """Adopt a validated vCPU state."""
        if self.accel is None:
            return
        self.accel.set_state(state)
        # After set_state: that may switch engines, and the one that runs next
        # must not keep code translated from the RAM as it was before.
        self.accel.code_changed(0, self.ram.size)
        if self.vcpu is not None:
            self.vcpu.set_halted(state.halted)

    def device_state_types(self) -> dict[str, type[RegisterState]]:
        """Each device's name and the type of its migrated state."""
        return {dev.name: dev.STATE for dev in self.bus.devices}

    def save_device_states(self) -> dict[str, RegisterState]:
        with self.bus.lock:
            return {dev.name: dev.state() for dev in self.bus.devices}

    def load_device_states(self, states: dict[str, RegisterState]) -> None:
        """Adopt validated states: one for every device, of its own type."""
        with self.bus.lock:
            devices = {dev.name: dev for dev in self.bus.devices}
            if set(states) != set(devices):
                raise DeviceError(f"device states for {sorted(states)}, devices {sorted(devices)}")
            for name, state in states.items():
                devices[name].from_state(state)

    def dirty_tracker(self) -> DirtyReader:
        """A reader of the VM's dirty tracking (see memory/shared_tracking.py):
        migration, calc-dirty-rate and the dirty limiter each take one."""
        return self.dirty_tracking.reader()

    def _make_dirty_tracker(self) -> DirtyTracker:
        """The tracker that sees the guest's writes under this accelerator."""
        if self.accel is not None:
            return self.accel.dirty_tracker(self.ram)
        from ..memory.dirty import process_tracker
        return process_tracker(self.ram)

    def dirty_ring_counts(self) -> list[int] | None:
        """Pages taken from each vCPU's KVM dirty ring so far; None without one."""
        return self.accel.dirty_ring_counts() if self.accel is not None else None

    @property
    def vcpu_thread_id(self) -> int:
        return self.vcpu.native_id if self.vcpu is not None else threading.get_native_id()
