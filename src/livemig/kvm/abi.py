"""KVM's userspace ABI: ioctl numbers and ctypes structs.

Every number and layout here is from ``include/uapi/linux/kvm.h`` (and, for
the x86 register structs, ``arch/x86/include/uapi/asm/kvm.h``) of Linux 6.x.
The ioctl encoding is ``include/uapi/asm-generic/ioctl.h``.
"""

from __future__ import annotations

import ctypes

# asm-generic/ioctl.h: dir(2 bits) | size(14) | type(8) | nr(8)
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


KVMIO = 0xAE


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, KVMIO, nr, 0)


def _iow(nr: int, struct: type[ctypes.Structure] | type[ctypes.c_uint64]) -> int:
    return _ioc(_IOC_WRITE, KVMIO, nr, ctypes.sizeof(struct))


def _ior(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ, KVMIO, nr, ctypes.sizeof(struct))


# --- arch/x86/include/uapi/asm/kvm.h -------------------------------------

class KvmRegs(ctypes.Structure):
    """struct kvm_regs."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
        "rip", "rflags",
    )]


class KvmSegment(ctypes.Structure):
    """struct kvm_segment."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class KvmDtable(ctypes.Structure):
    """struct kvm_dtable."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


KVM_NR_INTERRUPTS = 256


class KvmSregs(ctypes.Structure):
    """struct kvm_sregs."""

    _fields_ = [
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment),
        ("fs", KvmSegment), ("gs", KvmSegment), ("ss", KvmSegment),
        ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64), ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


# --- include/uapi/linux/kvm.h ----------------------------------------------

class KvmUserspaceMemoryRegion(ctypes.Structure):
    """struct kvm_userspace_memory_region."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class KvmDirtyLog(ctypes.Structure):
    """struct kvm_dirty_log (the union holds a user pointer to the bitmap)."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("padding1", ctypes.c_uint32),
        ("dirty_bitmap", ctypes.c_uint64),
    ]


class KvmEnableCap(ctypes.Structure):
    """struct kvm_enable_cap (KVM_ENABLE_CAP)."""

    _fields_ = [
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    ]


class KvmDirtyGfn(ctypes.Structure):
    """struct kvm_dirty_gfn: one entry of a vCPU's dirty ring."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),   # (address space << 16) | slot id
        ("offset", ctypes.c_uint64),  # page number within the slot
    ]


class KvmRunIo(ctypes.Structure):
    """kvm_run.io (KVM_EXIT_IO)."""

    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),
    ]


class KvmRunMmio(ctypes.Structure):
    """kvm_run.mmio (KVM_EXIT_MMIO)."""

    _fields_ = [
        ("phys_addr", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 8),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint8),
    ]


class KvmRunInternal(ctypes.Structure):
    """kvm_run.internal (KVM_EXIT_INTERNAL_ERROR)."""

    _fields_ = [("suberror", ctypes.c_uint32), ("ndata", ctypes.c_uint32)]


class KvmRunFailEntry(ctypes.Structure):
    """kvm_run.fail_entry (KVM_EXIT_FAIL_ENTRY)."""

    _fields_ = [("hardware_entry_failure_reason", ctypes.c_uint64), ("cpu", ctypes.c_uint32)]


class KvmRunExit(ctypes.Union):
    """The exit-reason union of struct kvm_run (256 bytes in the header)."""

    _fields_ = [
        ("io", KvmRunIo),
        ("mmio", KvmRunMmio),
        ("internal", KvmRunInternal),
        ("fail_entry", KvmRunFailEntry),
        ("padding", ctypes.c_char * 256),
    ]


class KvmRun(ctypes.Structure):
    """The head of struct kvm_run, the page shared with the kernel per vCPU."""

    _fields_ = [
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("exit", KvmRunExit),
    ]


KVM_API_VERSION = 12

KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, ctypes.c_uint64)
KVM_ENABLE_CAP = _iow(0xA3, KvmEnableCap)
KVM_RESET_DIRTY_RINGS = _io(0xC7)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, KvmRegs)
KVM_SET_REGS = _iow(0x82, KvmRegs)
KVM_GET_SREGS = _ior(0x83, KvmSregs)
KVM_SET_SREGS = _iow(0x84, KvmSregs)

# Capabilities (KVM_CHECK_EXTENSION / KVM_ENABLE_CAP).
KVM_CAP_DIRTY_LOG_RING = 192  # the check answers the largest ring, in bytes

# The dirty ring: mapped from the vCPU fd at this many pages in (x86).
KVM_DIRTY_LOG_PAGE_OFFSET = 64
KVM_DIRTY_GFN_F_DIRTY = 1 << 0   # set by the kernel: the entry holds a page
KVM_DIRTY_GFN_F_RESET = 1 << 1   # set by us: harvested, the kernel may recycle it

# Memory-slot flags.
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0

# Exit reasons.
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_IO = 2
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_DIRTY_RING_FULL = 31

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

EXIT_NAMES = {
    KVM_EXIT_UNKNOWN: "UNKNOWN", KVM_EXIT_IO: "IO", KVM_EXIT_DEBUG: "DEBUG",
    KVM_EXIT_HLT: "HLT", KVM_EXIT_MMIO: "MMIO", KVM_EXIT_SHUTDOWN: "SHUTDOWN",
    KVM_EXIT_FAIL_ENTRY: "FAIL_ENTRY", KVM_EXIT_INTR: "INTR",
    KVM_EXIT_INTERNAL_ERROR: "INTERNAL_ERROR", KVM_EXIT_DIRTY_RING_FULL: "DIRTY_RING_FULL",
}

# Sanity of the layouts against the kernel's sizes.
assert ctypes.sizeof(KvmRegs) == 144
assert ctypes.sizeof(KvmSegment) == 24
assert ctypes.sizeof(KvmSregs) == 312
assert ctypes.sizeof(KvmUserspaceMemoryRegion) == 32
assert ctypes.sizeof(KvmDirtyLog) == 16
assert ctypes.sizeof(KvmEnableCap) == 104
assert ctypes.sizeof(KvmDirtyGfn) == 16
assert KvmRun.exit.offset == 32
