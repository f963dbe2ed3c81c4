"""The reference test's precopy/unix, bad_dest and deprecated scenarios,
same QMP sequence, on livemig tcg, livemig kvm and QEMU."""

from __future__ import annotations

from conftest import slowdown
from migration_helpers import (
    check_guests_ram,
    migrate,
    migrate_end,
    migration_status,
    start_dest,
    start_pair,
    wait_for_migration_pass,
    wait_for_status,
)

from livemig.lab import VmLauncher, VmmKind


def set_parameter(vm, name: str, value: int) -> None:  # type: ignore[no-untyped-def]
    vm.cmd("migrate-set-parameters", **{name: value})
    assert vm.cmd("query-migrate-parameters")[name] == value


def test_precopy_unix(vmm: VmmKind, lab: VmLauncher) -> None:
    uri = f"unix:{lab.workdir / 'migsocket'}"
    src, dst = start_pair(lab, vmm, uri)
    slow = slowdown(vmm)
    set_parameter(src, "downtime-limit", 1)          # 1 ms: must not converge yet
    set_parameter(src, "max-bandwidth", 1_000_000_000)
    src.wait_serial(b"B", timeout=60 * slow)
    migrate(src, uri)
    wait_for_migration_pass(src, timeout=120 * slow)
    assert migration_status(src) == "active"          # still iterating at 1 ms
    set_parameter(src, "downtime-limit", 300)        # now it converges
    src.wait_event("STOP", timeout=120 * slow)
    dst.wait_event("RESUME", timeout=120 * slow)
    dst.wait_serial(b"B", timeout=60 * slow)
    info = wait_for_status(src, "completed", timeout=60 * slow)
    assert info["ram"]["dirty-sync-count"] >= 2
    assert src.status() == "postmigrate"
    assert dst.status() == "running"
    migrate_end(src, dst, True, vmm)


def test_bad_dest(vmm: VmmKind, lab: VmLauncher) -> None:
    src, dst = start_pair(lab, vmm, "tcp:0:0")
    migrate(src, "tcp:0:0")
    seen = set()
    while True:
        status = migration_status(src)
        seen.add(status)
        assert status in ("setup", "failed"), seen
        if status == "failed":
            break
    assert "error-desc" in src.cmd("query-migrate")
    state = src.cmd("query-status")
    assert state["running"] is True
    migrate_end(src, dst, False, vmm)


def test_deprecated(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "vm", boot=False)
    downtime = vm.raw("migrate_set_downtime", {"value": 0.12345})
    speed = vm.raw("migrate_set_speed", {"value": 12345})
    if vmm_any_accel.is_qemu:
        # QEMU removed both commands in 6.0; livemig keeps them for old scripts.
        assert downtime["error"]["class"] == "CommandNotFound"
        assert speed["error"]["class"] == "CommandNotFound"
        return
    assert "return" in downtime and "return" in speed
    params = vm.cmd("query-migrate-parameters")
    assert params["downtime-limit"] == int(0.12345 * 1000)
    assert params["max-bandwidth"] == 12345


def test_ping_pong(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """A→B→A→B: four live migrations of one running guest."""
    kind = vmm_any_accel
    current = lab.start(kind, "hop0")
    current.wait_serial(b"B", timeout=60)
    for hop in range(1, 5):
        uri = f"unix:{lab.workdir / f'hop{hop}.sock'}"
        nxt = start_dest(lab, kind, f"hop{hop}", uri)
        current.cmd("migrate-set-parameters", **{"max-bandwidth": 10**10})
        migrate(current, uri)
        wait_for_status(current, "completed")
        nxt.wait_event("RESUME", timeout=60)
        nxt.wait_serial(b"B", timeout=60)   # the serial output carries on after each hop
        current.quit()
        current = nxt
    current.cmd("stop")
    check_guests_ram(current)
