"""vCPU backends behind one protocol, and accelerator selection.

``create("kvm:tcg", ...)`` tries each name in order and returns the first
that initialises, as QEMU's ``-machine accel=`` does. ``qtest`` is not a
backend: with it the guest does not execute (``None`` is returned).
"""

from __future__ import annotations

from ..devices import IoBus
from ..errors import AccelError
from ..logs import get_logger
from ..memory import GuestRam
from .base import Accelerator, Crashed, Halted, Kicked, RunResult, TripleFault
from .cpustate import CpuState, Segment

log = get_logger(__name__)

KNOWN = ("kvm", "tcg", "qtest")


def create(name: str, ram: GuestRam, bus: IoBus,
           dirty_ring_size: int = 0) -> Accelerator | None:
    """Build the accelerator ``name`` (one of KNOWN); None for qtest.
    ``dirty_ring_size``: kvm's dirty-ring-size property (0: the dirty log)."""
    if name == "qtest":
        return None
    if name == "kvm":
        from .kvm import KvmAccelerator
        return KvmAccelerator(ram, bus, dirty_ring_size)
    if name == "tcg":
        from .tcg import TcgAccelerator
        return TcgAccelerator(ram, bus)
    raise AccelError(f"invalid accelerator {name}")


def create_first(names: list[str], ram: GuestRam, bus: IoBus,
                 dirty_ring_size: int = 0) -> tuple[str, Accelerator | None]:
    """Try ``names`` in order; the first that initialises wins."""
    failures: list[str] = []
    for name in names:
        try:
            return name, create(name, ram, bus, dirty_ring_size)
        except AccelError as err:
            log.info("accelerator %s not usable: %s", name, err)
            failures.append(f"{name}: {err}")
    raise AccelError("no accelerator found (" + "; ".join(failures) + ")")


__all__ = [
    "KNOWN",
    "Accelerator",
    "CpuState",
    "Crashed",
    "Halted",
    "Kicked",
    "RunResult",
    "Segment",
    "TripleFault",
    "create",
    "create_first",
]
