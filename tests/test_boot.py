"""Boot the built-in guest and drive its run state over QMP, on every VMM."""

from __future__ import annotations

import time

from conftest import slowdown

from livemig.guest import AB_START
from livemig.lab import QtestClient, VmLauncher, VmmKind, qtest_listener, wait_until


def _byte(vm, address: int = AB_START) -> int:  # type: ignore[no-untyped-def]
    return vm.pmem(address, 1)[0]


def test_boot_run_state_and_memory(vmm: VmmKind, lab: VmLauncher) -> None:
    listener = qtest_listener(lab.workdir / "guest.qtest")
    vm = lab.start(vmm, "guest", extra=["-qtest", f"unix:{lab.workdir / 'guest.qtest'}"])
    listener.settimeout(30)
    conn, _ = listener.accept()
    qtest = QtestClient(conn)
    slow = slowdown(vmm)

    # 'A' once protected mode is up (a 'B' every 256 passes follows: the
    # reference scenarios wait for those; under nested KVM one takes 16 s).
    out = vm.wait_serial(b"A", timeout=60 * slow)
    assert out.startswith(b"A") and set(out[1:]) <= {ord("B")}
    assert vm.cmd("query-status") == {"status": "running", "singlestep": False, "running": True}

    vm.cmd("stop")
    vm.wait_event("STOP")
    assert vm.status() == "paused"
    frozen = _byte(vm)
    for _ in range(5):  # stopped means stopped: sample it over a quarter second
        time.sleep(0.05)
        assert _byte(vm) == frozen

    # The same guest memory through two different interfaces.
    assert vm.pmem(AB_START, 64 << 10) == qtest.memread(AB_START, 64 << 10)

    vm.cmd("cont")
    vm.wait_event("RESUME")
    wait_until(lambda: _byte(vm) != frozen, 30 * slow, "the guest to write again")

    assert vm.quit() == 0
    shutdown = vm.wait_event("SHUTDOWN")
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    qtest.close()


def test_system_reset_reboots_guest(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "guest")
    vm.wait_serial(b"A", timeout=30)
    before = vm.serial().count(b"A")
    vm.cmd("system_reset")
    assert vm.wait_event("RESET")["data"]["guest"] is False
    vm.wait_serial(b"A", timeout=30, count=before + 1)


def test_start_paused_then_cont(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    vm = lab.start(vmm_any_accel, "guest", extra=["-S"])
    assert vm.cmd("query-status")["status"] == "prelaunch"
    assert vm.serial() == b""
    vm.cmd("cont")
    vm.wait_event("RESUME")
    vm.wait_serial(b"A", timeout=30)
    assert vm.status() == "running"
