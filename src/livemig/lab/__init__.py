"""The lab: demo, scenario helpers and benchmarks, as a client of any
QEMU-compatible VMM over its command line and QMP only."""

from .vmm import (
    LIVEMIG_BINARY,
    QEMU_BINARY,
    LabError,
    QtestClient,
    Vm,
    VmLauncher,
    VmmKind,
    find_binary,
    kvm_usable,
    qtest_listener,
    set_mapped_ram,
    wait_until,
)

__all__ = [
    "LIVEMIG_BINARY", "QEMU_BINARY", "LabError", "QtestClient", "Vm", "VmLauncher", "VmmKind",
    "find_binary", "kvm_usable", "qtest_listener", "set_mapped_ram", "wait_until",
]
