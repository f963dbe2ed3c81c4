"""Choose the dirty tracker that fits the machine's accelerator."""

from __future__ import annotations

import logging

from ..machine import Machine
from ..memory.dirty import (
    DirtyTracker,
    KvmDirtyTracker,
    ShadowDirtyTracker,
    UffdWpDirtyTracker,
)
from ..uffd import probe_wp_async

log = logging.getLogger(__name__)


def tracker_for(machine: Machine) -> DirtyTracker:
    """KVM's dirty log under kvm; userfaultfd write-protect under tcg, or the
    (slower, memory-hungry) shadow compare where that is unavailable."""
    if machine.accel_name == "kvm":
        from ..accel.kvm import RAM_SLOT, KvmAccelerator

        accel = machine.accel
        assert isinstance(accel, KvmAccelerator)
        return KvmDirtyTracker(accel.vm, RAM_SLOT, machine.ram)
    problem = probe_wp_async()
    if problem is None:
        return UffdWpDirtyTracker(machine.ram)
    log.warning("userfaultfd write-protect unavailable (%s): dirty tracking falls back to "
                "comparing RAM with a copy", problem)
    return ShadowDirtyTracker(machine.ram)

