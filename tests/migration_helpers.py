"""The reference test's building blocks (wait for a pass, RAM check, end of
test), written for any QEMU-compatible VMM through the lab."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import slowdown

from livemig.guest import AB_START
from livemig.lab import LabError, Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.checks import check_ab_ram


def start_dest(lab: VmLauncher, kind: VmmKind, name: str, uri: str,
               extra: list[str] | None = None) -> Vm:
    """A destination, returned once its unix socket listens (QEMU opens
    -incoming only after its QMP socket, so a quick migrate could miss it)."""
    vm = lab.start(kind, name, extra=["-incoming", uri, *(extra or [])])
    if uri.startswith("unix:"):
        path = Path(uri[len("unix:"):])
        wait_until(path.exists, 30, f"{name}'s incoming socket")
    return vm


def start_pair(lab: VmLauncher, kind: VmmKind, uri: str, src_extra: list[str] | None = None,
               dst_extra: list[str] | None = None,
               src_env: dict[str, str] | None = None) -> tuple[Vm, Vm]:
    src = lab.start(kind, "src", extra=src_extra, env=src_env)
    return src, start_dest(lab, kind, "dst", uri, dst_extra)


def migration_status(vm: Vm) -> str:
    return str(vm.cmd("query-migrate").get("status", "none"))


def wait_for_status(vm: Vm, goal: str, timeout: float = 120.0) -> dict:  # type: ignore[type-arg]
    """Poll query-migrate until ``goal``; 'failed' on the way, or another
    end ('completed', 'cancelled') that can never become ``goal``, is a
    test failure at once, with the migration's last answer."""
    def reached() -> dict | None:  # type: ignore[type-arg]
        info = vm.cmd("query-migrate")
        status = info.get("status")
        assert status != "failed", f"{vm.name}: migration failed: {info}"
        assert status == goal or status not in ("completed", "cancelled"), (
            f"{vm.name}: migration ended {status} while waiting for {goal}: {info}")
        return info if status == goal else None
    return wait_until(reached, timeout, f"{vm.name} migration status {goal}", interval=0.005)


def sync_count(vm: Vm) -> int:
    return int(vm.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0))


def wait_for_migration_pass(src: Vm, timeout: float = 120.0) -> None:
    """As the reference: wait for a first dirty sync, then for one more (or STOP)."""
    def stopped() -> bool:
        return any(e["event"] == "STOP" for e in src.events)
    initial = wait_until(lambda: sync_count(src) or stopped(), timeout, "the first dirty sync")
    wait_until(lambda: sync_count(src) != initial or stopped(), timeout, "another dirty sync")


def check_guests_ram(vm: Vm) -> None:
    """The reference test's RAM check (see livemig.lab.checks)."""
    result = check_ab_ram(vm)
    assert result.ok, result.describe()


def completed_with_ram_intact(src: Vm, dst: Vm, timeout: float = 120.0) -> None:
    """Both sides reach completed; the destination, stopped, passes the RAM check."""
    wait_for_status(src, "completed", timeout=timeout)
    wait_for_status(dst, "completed", timeout=timeout)
    dst.cmd("stop")
    check_guests_ram(dst)


def migrate_end(src: Vm, dst: Vm, check_dest: bool, kind: VmmKind) -> None:
    src.quit()
    if check_dest:
        first = dst.pmem(AB_START, 1)
        wait_until(lambda: dst.pmem(AB_START, 1) != first, 60 * slowdown(kind),
                   "the destination guest to run")
        dst.cmd("stop")
        frozen = dst.pmem(AB_START, 1)
        time.sleep(0.2)  # an observation window, not synchronisation
        assert dst.pmem(AB_START, 1) == frozen
        check_guests_ram(dst)
    dst.quit()


def migrate(vm: Vm, uri: str, **extra: object) -> None:
    answer = vm.raw("migrate", {"uri": uri, **extra})
    if "error" in answer:
        raise LabError(f"migrate failed: {answer['error']}")
