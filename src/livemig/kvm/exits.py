"""What ``KVM_RUN`` returned, as small frozen values the accelerator matches on.

NamedTuples and plain classes rather than dataclasses: a kvm start-up
imports this module, and creating a dataclass costs about a millisecond.
"""

from __future__ import annotations

from typing import NamedTuple


class IoExit(NamedTuple):
    """KVM_EXIT_IO: a port access; for ``is_write`` data holds the bytes written."""

    port: int
    size: int
    count: int
    is_write: bool
    data_offset: int


class MmioExit(NamedTuple):
    """KVM_EXIT_MMIO: an access to guest-physical memory with no RAM behind it."""

    address: int
    length: int
    is_write: bool


class HltExit:
    """KVM_EXIT_HLT: the guest executed ``hlt`` (no in-kernel irqchip)."""

    __slots__ = ()


class InterruptedExit:
    """KVM_RUN returned EINTR or KVM_EXIT_INTR: we kicked the vCPU."""

    __slots__ = ()


class ShutdownExit:
    """KVM_EXIT_SHUTDOWN: a triple fault."""

    __slots__ = ()


class DirtyRingFullExit:
    """KVM_EXIT_DIRTY_RING_FULL: the vCPU's dirty ring must be harvested
    and reset before it runs again."""

    __slots__ = ()


class FailedExit(NamedTuple):
    """Any other exit: the vCPU cannot go on (reason says which)."""

    reason: str


KvmExit = (IoExit | MmioExit | HltExit | InterruptedExit | ShutdownExit | DirtyRingFullExit
           | FailedExit)
