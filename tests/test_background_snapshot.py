"""background-snapshot: a running guest saved as it was at one instant,
on livemig (tcg and kvm) and on QEMU."""

from __future__ import annotations

import pytest
from conftest import LIVEMIG, slowdown
from migration_helpers import migrate, wait_for_status

from livemig.guest import AB_END, AB_START
from livemig.lab import Vm, VmLauncher, VmmKind, wait_until

PAGE = 4096


def _snapshot_on(vm: Vm, bandwidth: int = 100_000_000) -> None:
    vm.cmd("migrate-set-capabilities",
           capabilities=[{"capability": "background-snapshot", "state": True}])
    # Slow enough that the guest writes pages before the snapshot saves them.
    vm.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth})


def _running(vm: Vm, kind: VmmKind) -> None:
    first = vm.pmem(AB_START, 1)
    wait_until(lambda: vm.pmem(AB_START, 1) != first, 60 * slowdown(kind), "the guest to run")


def _pages(data: bytes) -> list[bytes]:
    return [data[i:i + PAGE] for i in range(0, len(data), PAGE)]


def test_a_snapshot_is_one_instant(vmm: VmmKind, lab: VmLauncher) -> None:
    """The test stops the guest just long enough to read its RAM and start
    the snapshot; the guest then rewrites its pages while they are saved,
    and the restored image is still the RAM as it was at that instant."""
    src = lab.start(vmm, "src")
    _snapshot_on(src)
    _running(src, vmm)
    src.cmd("stop")
    instant = src.pmem(AB_START, AB_END - AB_START)
    image = lab.workdir / "snapshot.img"
    migrate(src, f"exec:cat > {image}")
    # The snapshot begins in the job: once active, its instant is taken.
    wait_until(lambda: src.cmd("query-migrate")["status"] in ("active", "completed"), 30,
               "the snapshot to begin", interval=0.001)
    src.cmd("cont")
    wait_for_status(src, "completed", timeout=120 * slowdown(vmm))
    assert src.status() == "running"          # a snapshot leaves the guest here
    later = src.pmem(AB_START, AB_END - AB_START)
    changed = sum(a != b for a, b in zip(_pages(instant), _pages(later), strict=True))
    assert changed > 100, "the guest hardly ran during the snapshot"
    src.quit()   # (QEMU's source holds the boot disk's write lock)
    dst = lab.start(vmm, "dst", extra=["-S", "-incoming", f"exec:cat {image}"])
    wait_for_status(dst, "completed", timeout=60 * slowdown(vmm))
    restored = dst.pmem(AB_START, AB_END - AB_START)
    wrong = [i for i, (a, b) in enumerate(zip(_pages(instant), _pages(restored), strict=True))
             if a != b]
    assert not wrong, f"{len(wrong)} pages are not the instant's (first {wrong[:5]})"
    dst.cmd("cont")                           # and the restored guest runs
    _running(dst, vmm)


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_snapshot_refusals_and_cancel(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """QEMU's incompatible capabilities, with its words; a cancel halfway
    lifts the write protection, so the guest runs on unhindered."""
    vm = lab.start(livemig_tcg, "vm")
    for other in ("postcopy-ram", "multifd", "xbzrle", "auto-converge"):
        answer = vm.raw("migrate-set-capabilities", {"capabilities": [
            {"capability": "background-snapshot", "state": True},
            {"capability": other, "state": True}]})
        assert answer["error"]["desc"] == f"Background-snapshot is not compatible with {other}"
    _snapshot_on(vm, bandwidth=5_000_000)    # 30 s for this guest: cancelled long before
    vm.wait_serial(b"B", timeout=60)
    migrate(vm, f"exec:cat > {lab.workdir / 'cancelled.img'}")
    wait_until(lambda: vm.cmd("query-migrate")["ram"]["transferred"] > 1 << 20
               if vm.cmd("query-migrate")["status"] == "active" else False, 30,
               "the snapshot under way")
    vm.cmd("migrate_cancel")
    wait_for_status(vm, "cancelled", timeout=30)
    assert vm.status() == "running"
    seen = vm.serial().count(b"B")
    vm.wait_serial(b"B", timeout=30, count=seen + 2)   # two more passes over all of RAM
