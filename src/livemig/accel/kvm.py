"""The ``kvm`` accelerator: hardware virtualisation through /dev/kvm.

A vCPU runs ``KVM_RUN`` on its own thread (the ioctl releases the GIL). To
stop it from another thread we set ``kvm_run.immediate_exit`` and send the
vCPU thread ``KICK_SIGNAL``; the ioctl then returns EINTR. The signal's
Python handler does nothing; it only has to exist so that the signal
interrupts the system call instead of killing the process.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from typing import TYPE_CHECKING

from ..devices import IoBus
from ..errors import AccelError, KvmError
from ..kvm import (
    DirtyRingFullExit,
    FailedExit,
    HltExit,
    InterruptedExit,
    IoExit,
    KvmSystem,
    KvmVcpu,
    KvmVm,
    MmioExit,
    ShutdownExit,
    abi,
)
from ..logs import get_logger
from ..memory import GuestRam
from .base import Crashed, Halted, Kicked, RunResult, TripleFault
from .cpustate import GPR_NAMES, SEGMENT_NAMES, CpuState, Segment

if TYPE_CHECKING:
    from ..memory.dirty import DirtyTracker, KvmDirtyRingTracker

log = get_logger(__name__)

KICK_SIGNAL = signal.SIGUSR1
RAM_SLOT = 0


def install_kick_handler() -> None:
    """Install the no-op handler for KICK_SIGNAL (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)


class KvmAccelerator:
    """One vCPU of one KVM VM, with guest RAM as memory slot 0."""

    name = "kvm"

    def __init__(self, ram: GuestRam, bus: IoBus, dirty_ring_size: int = 0) -> None:
        """``dirty_ring_size``: entries per vCPU dirty ring (``-accel
        kvm,dirty-ring-size=N``); 0 keeps the dirty log."""
        self._ram = ram
        self._bus = bus
        self.dirty_ring: KvmDirtyRingTracker | None = None
        try:
            self.system = KvmSystem()
            self.vm: KvmVm = self.system.create_vm()
            ring_bytes = self._dirty_ring_bytes(dirty_ring_size)
            self.vm.set_memory_region(RAM_SLOT, 0, ram.size, ram.address, log_dirty=False)
            self.vcpu: KvmVcpu = self.vm.create_vcpu(0, ring_bytes)
        except KvmError as err:
            raise AccelError(f"kvm: {err}") from err
        if self.vcpu.dirty_ring is not None:
            from ..memory.dirty import KvmDirtyRingTracker
            self.dirty_ring = KvmDirtyRingTracker(self.vm, RAM_SLOT, ram, [self.vcpu.dirty_ring])
        install_kick_handler()
        self._thread_id: int | None = None
        self._kick_lock = threading.Lock()
        self.set_state(CpuState.boot())

    def _dirty_ring_bytes(self, entries: int) -> int:
        """Enable the dirty ring of ``entries`` per vCPU if the kernel has
        one (before any vCPU exists, as KVM requires); its size in bytes,
        or 0 for the dirty log."""
        if not entries:
            return 0
        largest = self.vm.check_extension(abi.KVM_CAP_DIRTY_LOG_RING)
        if not largest:
            log.warning("KVM dirty ring not available on this kernel: dirty tracking uses "
                        "the dirty log instead")
            return 0
        ring_bytes = entries * ctypes.sizeof(abi.KvmDirtyGfn)
        if ring_bytes > largest:
            raise KvmError(f"dirty-ring-size {entries} is too big: this kernel allows at most "
                           f"{largest // ctypes.sizeof(abi.KvmDirtyGfn)} entries")
        self.vm.enable_dirty_ring(ring_bytes)
        return ring_bytes

    # --- running ---------------------------------------------------------------
    def arm(self) -> None:
        with self._kick_lock:
            self._thread_id = threading.get_ident()
            self.vcpu.run_struct.immediate_exit = 0

    def kick(self) -> None:
        with self._kick_lock:
            self.vcpu.run_struct.immediate_exit = 1
            if self._thread_id is not None:
                try:
                    signal.pthread_kill(self._thread_id, KICK_SIGNAL)
                except ProcessLookupError:
                    pass  # the vCPU thread has already ended

    def run(self) -> RunResult:
        while True:
            try:
                result = self.vcpu.run()
            except KvmError as err:
                return Crashed(f"kvm: {err}")
            match result:
                case IoExit():
                    self._port_io(result)
                case MmioExit():
                    self._unassigned_mmio(result)
                case InterruptedExit():
                    return Kicked()
                case HltExit():
                    return Halted()
                case ShutdownExit():
                    return TripleFault()
                case DirtyRingFullExit():
                    # The kernel will not run this vCPU again until its
                    # ring has room: harvest (and reset) it here.
                    if self.dirty_ring is not None:
                        self.dirty_ring.harvest(vcpu_stopped=True)
                case FailedExit(reason=reason):
                    return Crashed(f"kvm: exit {reason}")

    def _port_io(self, exit_: IoExit) -> None:
        page = self.vcpu.run_page
        size = exit_.size
        for i in range(exit_.count):  # count > 1 only for string I/O (rep ins/outs)
            at = exit_.data_offset + i * size
            if exit_.is_write:
                value = int.from_bytes(page[at:at + size], "little")
                self._bus.write(exit_.port, size, value)
            else:
                page[at:at + size] = self._bus.read(exit_.port, size).to_bytes(size, "little")

    def _unassigned_mmio(self, exit_: MmioExit) -> None:
        if not exit_.is_write:
            mmio = self.vcpu.run_struct.exit.mmio
            for i in range(exit_.length):
                mmio.data[i] = 0xFF

    # --- state -----------------------------------------------------------------
    def get_state(self) -> CpuState:
        regs = self.vcpu.get_regs()
        sregs = self.vcpu.get_sregs()
        state = CpuState()
        state.gprs = {name: getattr(regs, name) for name in GPR_NAMES}
        state.rip, state.rflags = regs.rip, regs.rflags
        for name in SEGMENT_NAMES:
            seg = getattr(sregs, name)
            state.segments[name] = Segment(**{
                field: getattr(seg, field) for field in Segment.FIELDS
            })
        state.gdt = (sregs.gdt.base, sregs.gdt.limit)
        state.idt = (sregs.idt.base, sregs.idt.limit)
        state.cr0, state.cr2, state.cr3 = sregs.cr0, sregs.cr2, sregs.cr3
        state.cr4, state.efer = sregs.cr4, sregs.efer
        return state

    def set_state(self, state: CpuState) -> None:
        try:
            sregs = self.vcpu.get_sregs()
            for name in SEGMENT_NAMES:
                seg: abi.KvmSegment = getattr(sregs, name)
                for field, value in vars(state.segments[name]).items():
                    setattr(seg, field, value)
            sregs.gdt.base, sregs.gdt.limit = state.gdt
            sregs.idt.base, sregs.idt.limit = state.idt
            sregs.cr0, sregs.cr2, sregs.cr3 = state.cr0, state.cr2, state.cr3
            sregs.cr4, sregs.efer = state.cr4, state.efer
            self.vcpu.set_sregs(sregs)
            regs = abi.KvmRegs(**state.gprs, rip=state.rip, rflags=state.rflags)
            self.vcpu.set_regs(regs)
        except (KvmError, ctypes.ArgumentError, TypeError) as err:
            raise AccelError(f"kvm: could not load vCPU state: {err}") from err

    def code_changed(self, address: int, length: int) -> None:
        """Hardware fetches straight from guest RAM: nothing is cached."""

    def dirty_tracker(self, ram: GuestRam) -> DirtyTracker:
        """The dirty ring where enabled, else KVM's dirty log of the RAM slot:
        either way the kernel sees the guest's writes."""
        if self.dirty_ring is not None:
            return self.dirty_ring
        from ..memory.dirty import KvmDirtyTracker
        return KvmDirtyTracker(self.vm, RAM_SLOT, ram)

    def preload(self, incoming: bool = False) -> None:
        """The vCPU is made in ``__init__``: nothing is left to build."""

    def wait_ready(self) -> None:
        """Nothing to wait for (see preload)."""

    def dirty_ring_counts(self) -> list[int] | None:
        return list(self.dirty_ring.harvested) if self.dirty_ring is not None else None

    def close(self) -> None:
        if self.dirty_ring is not None:
            self.dirty_ring.close()
        self.vcpu.close()
        self.vm.close()
        self.system.close()
