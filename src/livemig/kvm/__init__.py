"""Thin Python bindings for /dev/kvm (see ``abi`` for the kernel ABI)."""

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
from .system import KvmSystem, KvmVcpu, KvmVm

__all__ = [
    "DirtyRingFullExit", "FailedExit", "HltExit", "InterruptedExit", "IoExit", "KvmExit",
    "KvmSystem", "KvmVcpu", "KvmVm", "MmioExit", "ShutdownExit",
]
