"""pause-before-switchover and migrate-continue (issue 10), on livemig and
QEMU: the source stops its guest and waits in pre-switchover; migrate-continue
sends the rest (status device) and completes, or, before a postcopy switch,
goes on to postcopy-active; migrate_cancel from there resumes the source's
guest."""

from __future__ import annotations

import pytest
from migration_helpers import (
    check_guests_ram,
    migrate,
    wait_for_migration_pass,
    wait_for_status,
)
from postcopy_helpers import enable_postcopy, set_capability

from livemig.lab import LabError, Vm, VmLauncher, VmmKind, wait_until


def _paused_pair(lab: VmLauncher, kind: VmmKind) -> tuple[Vm, Vm]:
    socket_path = lab.workdir / "mig.sock"
    src = lab.start(kind, "src")
    dst = lab.start(kind, "dst", extra=["-incoming", f"unix:{socket_path}"])
    wait_until(socket_path.exists, 30, "the destination socket")
    for vm in (src, dst):
        set_capability(vm, "events")
    set_capability(src, "pause-before-switchover")
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 1_000_000_000,
                                         "downtime-limit": 2000})
    src.wait_serial(b"B", timeout=60)
    migrate(src, f"unix:{socket_path}")
    wait_for_status(src, "pre-switchover", timeout=60)
    return src, dst


def test_continue_completes(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    src, dst = _paused_pair(lab, vmm_any_accel)
    assert src.status() == "finish-migrate"   # stopped, waiting
    with pytest.raises(LabError, match="Migration not in expected state: pre-switchover"):
        src.cmd("migrate-continue", state="active")
    src.cmd("migrate-continue", state="pre-switchover")
    wait_for_status(src, "completed", timeout=60)
    statuses: list[str] = []
    while not statuses or statuses[-1] != "completed":
        statuses.append(src.wait_event("MIGRATION", timeout=30)["data"]["status"])
    assert statuses[-3:] == ["pre-switchover", "device", "completed"], statuses
    wait_for_status(dst, "completed", timeout=60)
    dst.cmd("stop")
    check_guests_ram(dst)


def test_cancel_from_pre_switchover_resumes_the_source(vmm_any_accel: VmmKind,
                                                       lab: VmLauncher) -> None:
    src, _dst = _paused_pair(lab, vmm_any_accel)
    src.cmd("migrate_cancel")
    wait_for_status(src, "cancelled", timeout=60)
    wait_until(lambda: src.status() == "running", 30, "the source guest to run again")
    src.wait_serial(b"B", timeout=30, count=src.serial().count(b"B") + 1)


def test_pause_before_a_postcopy_switch(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """QEMU pauses before a postcopy switch too: stopped, pre-switchover,
    then postcopy-active (no device status) once migrate-continue comes."""
    kind = vmm_any_accel
    socket_path = lab.workdir / "mig.sock"
    src = lab.start(kind, "src")
    dst = lab.start(kind, "dst", extra=["-incoming", f"unix:{socket_path}"])
    wait_until(socket_path.exists, 30, "the destination socket")
    set_capability(src, "events")
    enable_postcopy(src, dst)
    set_capability(src, "pause-before-switchover")
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 100_000_000, "downtime-limit": 1})
    src.wait_serial(b"B", timeout=60)
    migrate(src, f"unix:{socket_path}")
    wait_for_migration_pass(src)
    src.cmd("migrate-start-postcopy")
    wait_for_status(src, "pre-switchover", timeout=60)
    assert src.status() == "finish-migrate"
    src.cmd("migrate-continue", state="pre-switchover")
    wait_for_status(src, "completed", timeout=120)
    statuses: list[str] = []
    while not statuses or statuses[-1] != "completed":
        statuses.append(src.wait_event("MIGRATION", timeout=30)["data"]["status"])
    assert statuses[-3:] == ["pre-switchover", "postcopy-active", "completed"], statuses
    wait_for_status(dst, "completed", timeout=60)
    dst.cmd("stop")
    check_guests_ram(dst)
