"""Thin objects over /dev/kvm: the system, one VM, its vCPUs.

Each method is one ``KVM_*`` ioctl (named in its docstring) and raises
:class:`KvmError` with the ioctl's name and the errno on failure.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os

from ..errors import KvmError
from . import abi
from .exits import (
    DirtyRingFullExit,
    FailedExit,
    HltExit,
    InterruptedExit,
    IoExit,
    KvmExit,
    MmioExit,
    ShutdownExit,
)

KVM_DEVICE = "/dev/kvm"

# Guest-physical addresses KVM needs for its real-mode helpers on VMX hosts:
# three pages for the TSS and one for the identity map, below the 4 GiB BIOS
# area where no RAM of ours lives (the same place QEMU puts them).
TSS_ADDRESS = 0xFFFBD000
IDENTITY_MAP_ADDRESS = 0xFFFBC000


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int


def _ioctl_ulong(fd: int, request: int, value: int, what: str) -> int:
    """An ioctl whose argument is an unsigned long by value.

    ``fcntl.ioctl`` passes integers as a C int, too small for addresses such
    as ``KVM_SET_TSS_ADDR``'s, so this one goes through libc directly.
    """
    result = _libc.ioctl(fd, request, value)
    if result < 0:
        code = ctypes.get_errno()
        raise KvmError(f"{what} failed: {os.strerror(code)}") from OSError(code, os.strerror(code))
    return result


def _ioctl(fd: int, request: int, arg: object, what: str) -> int:
    try:
        return fcntl.ioctl(fd, request, arg)  # type: ignore[call-overload]
    except OSError as err:
        raise KvmError(f"{what} failed: {os.strerror(err.errno or 0)}") from err


class KvmSystem:
    """An open /dev/kvm."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise KvmError(f"could not open {path}: {err.strerror}") from err
        version = _ioctl(self.fd, abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != abi.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError(f"unsupported KVM API version {version}")

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes of the per-vCPU kvm_run mapping."""
        return _ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")

    def create_vm(self) -> KvmVm:
        """KVM_CREATE_VM."""
        return KvmVm(self, _ioctl(self.fd, abi.KVM_CREATE_VM, 0, "KVM_CREATE_VM"))

    def close(self) -> None:
        os.close(self.fd)


class KvmVm:
    """One VM file descriptor."""

    def __init__(self, system: KvmSystem, fd: int) -> None:
        self.system = system
        self.fd = fd
        # VMX needs these for real mode; SVM accepts and ignores them.
        _ioctl_ulong(self.fd, abi.KVM_SET_TSS_ADDR, TSS_ADDRESS, "KVM_SET_TSS_ADDR")
        ident = ctypes.c_uint64(IDENTITY_MAP_ADDRESS)
        _ioctl(self.fd, abi.KVM_SET_IDENTITY_MAP_ADDR, ident, "KVM_SET_IDENTITY_MAP_ADDR")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM: 0 if ``cap`` is absent, else its value."""
        return _ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def enable_dirty_ring(self, ring_bytes: int) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING): every vCPU made after this
        gets a ring of ``ring_bytes`` (a power of two) instead of the VM's
        dirty bitmap; KVM_GET_DIRTY_LOG is refused from then on."""
        cap = abi.KvmEnableCap(cap=abi.KVM_CAP_DIRTY_LOG_RING)
        cap.args[0] = ring_bytes
        _ioctl(self.fd, abi.KVM_ENABLE_CAP, cap, "KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING)")

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: write-protect again the pages of every entry
        marked harvested and recycle those entries; returns how many."""
        return _ioctl(self.fd, abi.KVM_RESET_DIRTY_RINGS, 0, "KVM_RESET_DIRTY_RINGS")

    def set_memory_region(
        self, slot: int, guest_phys: int, size: int, host_address: int, log_dirty: bool
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: back [guest_phys, +size) by host memory."""
        region = abi.KvmUserspaceMemoryRegion(
            slot=slot,
            flags=abi.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0,
            guest_phys_addr=guest_phys,
            memory_size=size,
            userspace_addr=host_address,
        )
        _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def get_dirty_log(self, slot: int, bitmap_address: int) -> None:
        """KVM_GET_DIRTY_LOG: copy and clear the slot's dirty bitmap.

        ``bitmap_address`` must point at one bit per page of the slot, rounded
        up to 64 bits; the caller keeps that buffer alive across the call.
        """
        log = abi.KvmDirtyLog(slot=slot, dirty_bitmap=bitmap_address)
        _ioctl(self.fd, abi.KVM_GET_DIRTY_LOG, log, "KVM_GET_DIRTY_LOG")

    def create_vcpu(self, index: int, dirty_ring_bytes: int = 0) -> KvmVcpu:
        """KVM_CREATE_VCPU (``dirty_ring_bytes``: the size enable_dirty_ring set)."""
        fd = _ioctl(self.fd, abi.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")
        return KvmVcpu(self, fd, dirty_ring_bytes)

    def close(self) -> None:
        os.close(self.fd)


class KvmVcpu:
    """One vCPU file descriptor and its shared kvm_run page."""

    def __init__(self, vm: KvmVm, fd: int, dirty_ring_bytes: int = 0) -> None:
        self.vm = vm
        self.fd = fd
        size = vm.system.vcpu_mmap_size()
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The kvm_run struct lives at offset 0 of this mapping for as long as
        # the mapping is open; from_buffer keeps the mmap exported (alive).
        self.run_struct = abi.KvmRun.from_buffer(self._map)
        # The dirty ring: an array of struct kvm_dirty_gfn shared with the
        # kernel, KVM_DIRTY_LOG_PAGE_OFFSET pages into the vCPU fd's mapping
        # space (Documentation/virt/kvm/api.rst, KVM_CAP_DIRTY_LOG_RING).
        self.dirty_ring: mmap.mmap | None = None
        if dirty_ring_bytes:
            try:
                self.dirty_ring = mmap.mmap(fd, dirty_ring_bytes, mmap.MAP_SHARED,
                                            mmap.PROT_READ | mmap.PROT_WRITE,
                                            offset=abi.KVM_DIRTY_LOG_PAGE_OFFSET
                                            * mmap.PAGESIZE)
            except OSError as err:
                raise KvmError(f"could not map the dirty ring: {err.strerror}") from err

    @property
    def run_page(self) -> mmap.mmap:
        """The whole kvm_run mapping (port I/O data lives at data_offset)."""
        return self._map

    def get_regs(self) -> abi.KvmRegs:
        """KVM_GET_REGS."""
        regs = abi.KvmRegs()
        _ioctl(self.fd, abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: abi.KvmRegs) -> None:
        """KVM_SET_REGS."""
        _ioctl(self.fd, abi.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> abi.KvmSregs:
        """KVM_GET_SREGS."""
        sregs = abi.KvmSregs()
        _ioctl(self.fd, abi.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: abi.KvmSregs) -> None:
        """KVM_SET_SREGS."""
        _ioctl(self.fd, abi.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def run(self) -> KvmExit:
        """KVM_RUN until the next exit that userspace must handle.

        The ioctl releases the GIL. A kick (signal plus ``immediate_exit``)
        makes it return EINTR, reported as :class:`InterruptedExit`.
        """
        try:
            fcntl.ioctl(self.fd, abi.KVM_RUN, 0)
        except OSError as err:
            if err.errno in (errno.EINTR, errno.EAGAIN):
                return InterruptedExit()
            raise KvmError(f"KVM_RUN failed: {os.strerror(err.errno or 0)}") from err
        run = self.run_struct
        reason = run.exit_reason
        if reason == abi.KVM_EXIT_IO:
            io = run.exit.io
            return IoExit(io.port, io.size, io.count,
                          io.direction == abi.KVM_EXIT_IO_OUT, io.data_offset)
        if reason == abi.KVM_EXIT_MMIO:
            mmio = run.exit.mmio
            return MmioExit(mmio.phys_addr, mmio.len, bool(mmio.is_write))
        if reason == abi.KVM_EXIT_HLT:
            return HltExit()
        if reason == abi.KVM_EXIT_INTR:
            return InterruptedExit()
        if reason == abi.KVM_EXIT_SHUTDOWN:
            return ShutdownExit()
        if reason == abi.KVM_EXIT_DIRTY_RING_FULL:
            return DirtyRingFullExit()
        name = abi.EXIT_NAMES.get(reason, str(reason))
        if reason == abi.KVM_EXIT_INTERNAL_ERROR:
            name += f" (suberror {run.exit.internal.suberror})"
        elif reason == abi.KVM_EXIT_FAIL_ENTRY:
            name += f" (hardware reason {run.exit.fail_entry.hardware_entry_failure_reason:#x})"
        return FailedExit(name)

    def close(self) -> None:
        self.run_struct = None  # type: ignore[assignment]  # drop the export
        self._map.close()
        if self.dirty_ring is not None:
            self.dirty_ring.close()
        os.close(self.fd)
