"""Choose the dirty tracker that fits the machine's accelerator."""

from __future__ import annotations

from ..machine import Machine
from ..memory.dirty import DirtyTracker, KvmDirtyTracker, ShadowDirtyTracker


def tracker_for(machine: Machine) -> DirtyTracker:
    if machine.accel_name == "kvm":
        from ..accel.kvm import RAM_SLOT, KvmAccelerator

        accel = machine.accel
        assert isinstance(accel, KvmAccelerator)
        return KvmDirtyTracker(accel.vm, RAM_SLOT, machine.ram)
    return ShadowDirtyTracker(machine.ram)
