"""Precopy beyond the reference test: transports, cancel, failures, limits, events."""

from __future__ import annotations

import socket
import time

import pytest
from migration_helpers import (
    check_guests_ram,
    migrate,
    migration_status,
    start_dest,
    wait_for_status,
)

from livemig.lab import Vm, VmLauncher, VmmKind, wait_until

FAST = 10**10  # a max-bandwidth above what the link can do


def _finish_on(dst: Vm) -> None:
    dst.wait_event("RESUME", timeout=60)
    dst.wait_serial(b"B", timeout=60)
    dst.cmd("stop")
    check_guests_ram(dst)


def _incoming_port(dst: Vm) -> int:
    info = wait_until(lambda: dst.cmd("query-migrate").get("socket-address"), 30,
                      "the destination's socket-address")
    return int(info[0]["port"])


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_tcp_port_zero(vmm_any_accel: VmmKind, lab: VmLauncher, host: str) -> None:
    listen = f"[{host}]" if ":" in host else host
    src = lab.start(vmm_any_accel, "src")
    dst = lab.start(vmm_any_accel, "dst", extra=["-incoming", f"tcp:{listen}:0"])
    port = _incoming_port(dst)
    assert port > 0
    src.wait_serial(b"A", timeout=30)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST})
    migrate(src, f"tcp:{listen}:{port}")
    wait_for_status(src, "completed")
    _finish_on(dst)


def test_exec_transport(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    image = lab.workdir / "guest.migstream"
    src = lab.start(vmm_any_accel, "src")
    src.wait_serial(b"A", timeout=30)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST})
    migrate(src, f"exec:cat > {image}")
    wait_for_status(src, "completed")
    dst = lab.start(vmm_any_accel, "dst", extra=["-incoming", f"exec:cat {image}"])
    _finish_on(dst)


def test_fd_transport(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    path = lab.workdir / "fd-dest.sock"
    src = lab.start(vmm_any_accel, "src")
    dst = lab.start(vmm_any_accel, "dst", extra=["-incoming", f"unix:{path}"])
    wait_until(path.exists, 30, "the destination socket")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(path))
    src.wait_serial(b"A", timeout=30)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST})
    src.qmp.send_fd_scm(conn.fileno())
    src.cmd("getfd", fdname="migfd")
    conn.close()
    migrate(src, "fd:migfd")
    wait_for_status(src, "completed")
    _finish_on(dst)


def _slow_migration(lab: VmLauncher, kind: VmmKind, name: str) -> tuple[Vm, Vm]:
    src = lab.start(kind, "src") if not any(v.name == "src" for v in lab.vms) else \
        next(v for v in lab.vms if v.name == "src")
    uri = f"unix:{lab.workdir / (name + '.sock')}"
    dst = start_dest(lab, kind, name, uri)
    # ~99 MiB of non-zero pages: at 8 MiB/s the job cannot finish under the test.
    src.wait_serial(b"B", timeout=60)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20})
    migrate(src, uri)
    wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("transferred", 0) > 1 << 20,
               30, "some bytes on the wire")
    return src, dst


def _retry_to_fresh_destination(lab: VmLauncher, kind: VmmKind, src: Vm) -> None:
    """After a cancelled or failed job, a new migrate to a new VM succeeds."""
    uri = f"unix:{lab.workdir / 'dst2.sock'}"
    fresh = start_dest(lab, kind, "dst2", uri)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST})
    migrate(src, uri)
    wait_for_status(src, "completed")
    _finish_on(fresh)


def test_cancel_then_retry(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    src, dst = _slow_migration(lab, vmm_any_accel, "dst1")
    src.cmd("migrate_cancel")
    wait_for_status(src, "cancelled")
    assert src.cmd("query-status")["running"] is True
    # A cancelled incoming stream ends that destination (as QEMU does).
    assert dst.wait_exit(30) != 0
    _retry_to_fresh_destination(lab, vmm_any_accel, src)


def test_destination_killed_then_retry(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    src, dst = _slow_migration(lab, vmm_any_accel, "dst1")
    dst.kill()
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                      60, "the source to notice")
    assert info.get("error-desc")
    assert src.cmd("query-status")["running"] is True
    src.wait_serial(b"B", timeout=60)  # the guest still runs on the source
    _retry_to_fresh_destination(lab, vmm_any_accel, src)


def test_bandwidth_limit_is_honoured(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """At 64 MiB/s the job cannot beat bytes-sent / 64 MiB/s (~1.5 s for the
    ~99 MiB of non-zero pages the walk leaves)."""
    limit = 64 << 20
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(vmm_any_accel, "src")
    dst = start_dest(lab, vmm_any_accel, "dst", uri)
    src.wait_serial(b"B", timeout=60)
    # Let the walk get past the pass that printed 'B' (after it, every first
    # byte is 0 again, so those pages would go as zero-page markers).
    first = src.pmem(1 << 20, 1)
    wait_until(lambda: src.pmem(1 << 20, 1) != first, 30, "the next pass")
    src.cmd("stop")                     # nothing is dirtied: one pass is the whole job
    src.cmd("migrate-set-parameters", **{"max-bandwidth": limit})
    started = time.monotonic()
    migrate(src, uri)
    info = wait_for_status(src, "completed")
    elapsed = time.monotonic() - started
    sent = info["ram"]["transferred"]
    assert sent >= 64 << 20, sent       # enough bytes for the limit to matter
    assert 0.9 * sent / limit <= elapsed < 3 * sent / limit + 2, (elapsed, sent)
    wait_for_status(dst, "completed")
    assert dst.status() == "paused"     # the source was paused, so the destination stays so


def test_migration_events(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(vmm_any_accel, "src")
    dst = start_dest(lab, vmm_any_accel, "dst", uri)
    for vm in (src, dst):
        vm.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
    src.wait_serial(b"A", timeout=30)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST})
    migrate(src, uri)
    src.wait_event("MIGRATION", match=lambda e: e["data"]["status"] == "completed", timeout=60)
    statuses = [e["data"]["status"] for e in src.events if e["event"] == "MIGRATION"]
    passes = [e["data"]["pass"] for e in src.events if e["event"] == "MIGRATION_PASS"]
    assert statuses[:1] == ["setup"] or statuses[:2] == ["setup", "active"], statuses
    assert passes and passes == sorted(passes) and passes[0] == 1
    dst.wait_event("MIGRATION", match=lambda e: e["data"]["status"] == "completed", timeout=60)
    # Capabilities cannot change while a migration runs (QEMU's error).
    assert migration_status(src) == "completed"


def test_capability_and_parameter_errors(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "vm", boot=False)
    bad = vm.raw("migrate-set-capabilities",
                 {"capabilities": [{"capability": "warp-drive", "state": True}]})
    assert bad["error"]["desc"] == "Parameter 'capability' does not accept value 'warp-drive'"
    too_long = vm.raw("migrate-set-parameters", {"downtime-limit": 2_000_001})
    assert "downtime_limit" in too_long["error"]["desc"]
    wrong = vm.raw("migrate-set-parameters", {"max-bandwidth": "fast"})
    assert wrong["error"]["desc"] == "Parameter 'max-bandwidth' expects uint64"
    params = vm.cmd("query-migrate-parameters")
    assert params["downtime-limit"] == 300 and params["max-postcopy-bandwidth"] == 0
    caps = {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}
    assert caps["events"] is False and "postcopy-ram" in caps
    assert vm.cmd("query-migrate") == {}


def test_no_second_migration_from_postmigrate(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """A guest that moved away is not migrated again until `cont` (QEMU's
    rule and words); the refusal leaves the status as it was."""
    vm = lab.start(vmm_any_accel, "vm")
    vm.cmd("migrate-set-parameters", **{"max-bandwidth": 100_000_000_000})
    vm.cmd("migrate", uri="exec:cat > /dev/null")
    wait_until(lambda: vm.cmd("query-migrate").get("status") == "completed", 60, "the save")
    assert vm.status() == "postmigrate"
    answer = vm.raw("migrate", {"uri": "exec:cat > /dev/null"})
    assert answer["error"]["desc"] == ("Can't migrate the vm that was paused due to "
                                       "previous migration")
    assert vm.cmd("query-migrate")["status"] == "completed"
    vm.cmd("cont")
    vm.cmd("migrate", uri="exec:cat > /dev/null")
    wait_until(lambda: vm.cmd("query-migrate").get("status") == "completed", 60, "again")
