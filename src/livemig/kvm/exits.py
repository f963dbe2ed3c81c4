"""What ``KVM_RUN`` returned, as small frozen values the accelerator matches on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IoExit:
    """KVM_EXIT_IO: a port access; for ``is_write`` data holds the bytes written."""

    port: int
    size: int
    count: int
    is_write: bool
    data_offset: int


@dataclass(frozen=True, slots=True)
class MmioExit:
    """KVM_EXIT_MMIO: an access to guest-physical memory with no RAM behind it."""

    address: int
    length: int
    is_write: bool


@dataclass(frozen=True, slots=True)
class HltExit:
    """KVM_EXIT_HLT: the guest executed ``hlt`` (no in-kernel irqchip)."""


@dataclass(frozen=True, slots=True)
class InterruptedExit:
    """KVM_RUN returned EINTR or KVM_EXIT_INTR: we kicked the vCPU."""


@dataclass(frozen=True, slots=True)
class ShutdownExit:
    """KVM_EXIT_SHUTDOWN: a triple fault."""


@dataclass(frozen=True, slots=True)
class DirtyRingFullExit:
    """KVM_EXIT_DIRTY_RING_FULL: the vCPU's dirty ring must be harvested
    and reset before it runs again."""


@dataclass(frozen=True, slots=True)
class FailedExit:
    """Any other exit: the vCPU cannot go on (reason says which)."""

    reason: str


KvmExit = (IoExit | MmioExit | HltExit | InterruptedExit | ShutdownExit | DirtyRingFullExit
           | FailedExit)
