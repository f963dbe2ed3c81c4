"""auto-converge (issue 10): a workload guest that dirties faster than
max-bandwidth never converges without it, and does with it, its vCPU
throttled harder after passes where the dirty rate outpaces the transfer.

The guest writes 40 MiB/s over a 16 MiB set; max-bandwidth is 20 MB/s. At
the default 300 ms downtime-limit, precopy alone can never finish; with the
throttle above about 50% it must (30% at first, then 50%, 70%)."""

from __future__ import annotations

from typing import Any

from conftest import slowdown
from migration_helpers import migrate, wait_for_status
from postcopy_helpers import set_capability
from test_workload_guest import start_dirty

from livemig.guest.dirty import DirtyParams
from livemig.lab import Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.checks import check_dirty_ram

GUEST = DirtyParams(wss_mib=16, rate=40)
LINK = 20_000_000  # bytes/s


def _pair(lab: VmLauncher, kind: VmmKind, caps: list[str]) -> tuple[Vm, Vm, str]:
    socket_path = lab.workdir / "mig.sock"
    src = start_dirty(lab, kind, "src", GUEST)
    dst = start_dirty(lab, kind, "dst", GUEST, extra=["-incoming", f"unix:{socket_path}"])
    wait_until(socket_path.exists, 30, "the destination socket")
    for cap in caps:
        set_capability(src, cap)
    params: dict[str, Any] = {"max-bandwidth": LINK}
    if caps:
        params.update({"cpu-throttle-initial": 30, "cpu-throttle-increment": 20})
    src.cmd("migrate-set-parameters", **params)
    # A 'B' once a whole set's worth is written: every page is non-zero now,
    # so no pass is cheap.
    src.wait_serial(b"B", timeout=60 * slowdown(kind))
    return src, dst, f"unix:{socket_path}"


def test_without_auto_converge_it_never_ends(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    src, _dst, uri = _pair(lab, kind, [])
    migrate(src, uri)
    wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0) >= 4,
               60, "four passes")
    info = src.cmd("query-migrate")
    assert info["status"] == "active", info
    assert "cpu-throttle-percentage" not in info
    src.cmd("migrate_cancel")
    wait_for_status(src, "cancelled", timeout=30)


def test_auto_converge_throttles_and_completes(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """On livemig tcg and QEMU: the throttle's kick under kvm is covered by
    test_dirty_limit's kvm runs (the same vCPU throttle), for suite time."""
    kind = vmm_any_accel
    src, dst, uri = _pair(lab, kind, ["auto-converge"])
    migrate(src, uri)
    seen: list[int] = []

    def finished() -> bool:
        info = src.cmd("query-migrate")
        assert info["status"] != "failed", info
        if "cpu-throttle-percentage" in info:
            seen.append(info["cpu-throttle-percentage"])
        return info["status"] == "completed"

    wait_until(finished, 120 * slowdown(kind), "the migration to complete")
    assert seen and seen[0] == 30, seen          # cpu-throttle-initial first
    assert max(seen) >= 50, seen                 # then raised by the increment
    assert seen == sorted(seen), seen            # never lowered while it runs
    info = src.cmd("query-migrate")
    assert "cpu-throttle-percentage" not in info  # the throttle ends with the job
    wait_for_status(dst, "completed", timeout=60)
    dst.cmd("stop")
    check = check_dirty_ram(dst)
    assert check.ok, check.describe()
    if not kind.is_qemu:
        decisions = [p["decision"] for p in info["livemig-passes"]]
        assert decisions[-1] == "switchover" and "throttle 30%" in decisions, decisions
