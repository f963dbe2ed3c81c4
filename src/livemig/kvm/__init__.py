"""Thin Python bindings for /dev/kvm (see ``abi`` for the kernel ABI)."""

from .exits import FailedExit, HltExit, InterruptedExit, IoExit, KvmExit, MmioExit, ShutdownExit
from .system import KvmSystem, KvmVcpu, KvmVm

__all__ = [
    "FailedExit", "HltExit", "InterruptedExit", "IoExit", "KvmExit", "KvmSystem",
    "KvmVcpu", "KvmVm", "MmioExit", "ShutdownExit",
]
