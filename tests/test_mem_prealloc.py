"""-mem-prealloc: guest RAM is backed at start-up, and a preallocated
destination takes a precopy and a postcopy migration with its RAM intact
(a postcopy destination must still fault on every page it has not been
sent, although all of them are present from the start)."""

from __future__ import annotations

from migration_helpers import completed_with_ram_intact, migrate, start_pair, wait_for_status
from postcopy_helpers import enable_postcopy, postcopy_complete, postcopy_start, set_parameter

from livemig.lab import Vm, VmLauncher, VmmKind

RAM_KIB = 150 << 10  # the lab's -m 150M


def _resident_kib(vm: Vm) -> int:
    with open(f"/proc/{vm.process.pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def test_mem_prealloc_backs_all_ram_at_start(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    lazy = lab.start(vmm_any_accel, "lazy", boot=False, extra=["-S"])
    eager = lab.start(vmm_any_accel, "eager", boot=False, extra=["-S", "-mem-prealloc"])
    assert eager.status() == "prelaunch"  # answered: start-up (and preallocation) is over
    assert _resident_kib(eager) >= RAM_KIB
    assert _resident_kib(lazy) < RAM_KIB // 2


def test_precopy_to_a_preallocated_destination(vmm_any_accel: VmmKind,
                                               lab: VmLauncher) -> None:
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src, dst = start_pair(lab, vmm_any_accel, uri, dst_extra=["-mem-prealloc"])
    set_parameter(src, "max-bandwidth", 1_000_000_000)
    src.wait_serial(b"B", timeout=60)
    migrate(src, uri)
    completed_with_ram_intact(src, dst)


def test_postcopy_to_a_preallocated_destination(vmm_any_accel: VmmKind,
                                                lab: VmLauncher) -> None:
    """Postcopy starts at once, before the first pass: most pages were never
    sent, and the destination must fault on each although -mem-prealloc
    made every one present (as zeros) at start-up."""
    vmm = vmm_any_accel
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src, dst = start_pair(lab, vmm, uri, dst_extra=["-mem-prealloc"])
    enable_postcopy(src, dst)
    set_parameter(src, "max-bandwidth", 100_000_000)
    src.wait_serial(b"B", timeout=60)
    migrate(src, uri)
    postcopy_start(src, dst, vmm)
    done = wait_for_status(src, "completed", timeout=120)
    assert done["ram"]["postcopy-requests"] > 0   # the guest faulted on unsent pages
    postcopy_complete(src, dst, vmm)   # which checks the destination's RAM
