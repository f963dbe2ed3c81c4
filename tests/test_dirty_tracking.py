"""Every dirty tracker must report every page the guest (or the VMM) wrote.

The check keeps a copy updated only from what the tracker reports while the
guest runs; after a final sync with the guest stopped, the copy must equal
RAM. A tracker that missed a single write would fail it.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from conftest import KVM_PROBLEM

from livemig.guest import AB_END, AB_START, image
from livemig.lab import wait_until
from livemig.machine import Machine, MachineConfig
from livemig.memory.dirty import KvmDirtyTracker, ShadowDirtyTracker, UffdWpDirtyTracker
from livemig.uffd import probe_wp_async

UFFD_PROBLEM = probe_wp_async()


def _machine(accel: str, ring: int = 0) -> Machine:
    config = MachineConfig(ram_size=150 << 20, accelerators=[accel], boot_sector=image("ab"),
                           kvm_dirty_ring_size=ring)
    return Machine(config, lambda _b: None, lambda _n, _d: None, sys.exit)


def _first_bytes(machine: Machine) -> np.ndarray:
    return machine.ram.array[AB_START:AB_END:4096].copy()


def _start_walking(machine: Machine) -> None:
    """Start the guest and return once its page walk is under way."""
    machine.start()
    before = machine.ram.view[AB_START]
    wait_until(lambda: machine.ram.view[AB_START] != before, 60, "the guest to write")


def _tracker(kind: str, machine: Machine):  # type: ignore[no-untyped-def]
    if kind == "kvm":
        from livemig.accel.kvm import RAM_SLOT
        return KvmDirtyTracker(machine.accel.vm, RAM_SLOT, machine.ram)  # type: ignore[union-attr]
    if kind == "ring":
        return machine.accel.dirty_ring  # type: ignore[union-attr]
    if kind == "uffd":
        return UffdWpDirtyTracker(machine.ram)
    return ShadowDirtyTracker(machine.ram)


@pytest.mark.parametrize(("kind", "accel"), [
    pytest.param("uffd", "tcg", marks=pytest.mark.skipif(
        UFFD_PROBLEM is not None, reason=f"userfaultfd write-protect: {UFFD_PROBLEM}")),
    pytest.param("shadow", "tcg"),
    pytest.param("kvm", "kvm", marks=pytest.mark.skipif(
        KVM_PROBLEM is not None, reason=f"KVM unusable: {KVM_PROBLEM}")),
    # A small ring (1024 entries): the guest fills it many times a second,
    # so ring-full exits, the reaper and harvests on other threads all run.
    pytest.param("ring", "kvm", marks=pytest.mark.skipif(
        KVM_PROBLEM is not None, reason=f"KVM unusable: {KVM_PROBLEM}")),
])
def test_tracker_misses_nothing(kind: str, accel: str) -> None:
    machine = _machine(accel, ring=1024 if kind == "ring" else 0)
    try:
        _start_walking(machine)
        tracker = _tracker(kind, machine)
        tracker.start()
        live = machine.ram.array.reshape(-1, 4096)
        copy = live.copy()
        reported = 0
        for round_ in range(6):
            dirty = tracker.sync()
            reported += int(dirty.sum())
            copy[dirty] = live[dirty]
            time.sleep(0.02 * round_)  # let the guest write between syncs
        machine.ram.write(64 << 20, b"written by the VMM")  # qtest-style write
        machine.stop()
        dirty = tracker.sync()
        copy[dirty] = live[dirty]
        tracker.stop()
        reported += int(dirty.sum())
        assert not (copy != live).any(axis=1).any()
        assert dirty[(64 << 20) >> 12]
        assert reported > 1000, "the guest wrote too little for the check to mean anything"
    finally:
        machine.close()


def test_vcpu_stop_is_exact_on_tcg() -> None:
    """Stop/resume must never repeat or skip a guest instruction."""
    machine = _machine("tcg")
    try:
        _start_walking(machine)
        progressed = 0
        for _ in range(20):
            before = _first_bytes(machine)
            wait_until(lambda b=before: (_first_bytes(machine) != b).any(), 30,
                       "the guest to write between stops")
            machine.stop()
            firsts = _first_bytes(machine).astype(int)
            progressed += int(np.count_nonzero(firsts != before))
            steps = (firsts[:-1] - firsts[1:]) % 256
            assert np.count_nonzero(steps > 1) == 0 and np.count_nonzero(steps == 1) <= 1
            machine.cont()
        assert progressed > 20  # each stop really interrupted a running walk
    finally:
        machine.close()


def _anon_huge_kib() -> int:
    for line in open("/proc/self/smaps_rollup").read().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(UFFD_PROBLEM is not None,
                    reason=f"userfaultfd write-protect: {UFFD_PROBLEM}")
def test_huge_pages_still_track_single_pages() -> None:
    """Guest RAM asks for transparent huge pages (memory/ram.py); one byte
    written into a huge page must still dirty one 4 KiB page, not 512."""
    from livemig.memory.ram import GuestRam

    before = _anon_huge_kib()
    ram = GuestRam(64 << 20)
    try:
        ram.view[:] = b"\x01" * ram.size
        if _anon_huge_kib() - before < 32 << 10:
            pytest.skip("guest RAM got no transparent huge pages here")
        tracker = UffdWpDirtyTracker(ram)
        tracker.start()
        try:
            assert tracker.sync().sum() == 0
            ram.view[(5 << 21) + 3 * 4096] = 7   # inside the sixth huge page
            dirty = tracker.sync()
            assert np.flatnonzero(dirty).tolist() == [(5 << 9) + 3]
        finally:
            tracker.stop()
    finally:
        ram.close()
