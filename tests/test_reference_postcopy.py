"""The reference test's postcopy/unix and postcopy/recovery scenarios, same
QMP sequence, on livemig tcg, livemig kvm and QEMU."""

from __future__ import annotations

from conftest import slowdown
from migration_helpers import migrate, start_pair, wait_for_migration_pass, wait_for_status
from postcopy_helpers import (
    enable_postcopy,
    postcopy_complete,
    postcopy_prepare,
    postcopy_start,
    set_capability,
    set_parameter,
)

from livemig.lab import Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.link import Link


def test_postcopy_unix(vmm: VmmKind, lab: VmLauncher) -> None:
    src, dst, _uri = postcopy_prepare(lab, vmm)
    postcopy_start(src, dst, vmm)
    wait_for_status(src, "postcopy-active", timeout=30 * slowdown(vmm))
    assert src.status() == "finish-migrate"
    dst_info = postcopy_complete(src, dst, vmm)
    assert dst_info["postcopy-blocktime"] >= 0
    assert len(dst_info["postcopy-vcpu-blocktime"]) == 1


def test_postcopy_recovery(vmm: VmmKind, lab: VmLauncher) -> None:
    slow = slowdown(vmm)
    src, dst, _uri = postcopy_prepare(lab, vmm)
    set_parameter(src, "max-postcopy-bandwidth", 4096)   # slow enough not to finish
    postcopy_start(src, dst, vmm)
    wait_for_status(src, "postcopy-active", timeout=30 * slow)
    src.cmd("migrate-pause")
    paused = wait_for_status(dst, "postcopy-paused", timeout=30 * slow)
    assert dst.status() == "running"   # the guest stays; it waits for missing pages
    recover_uri = f"unix:{lab.workdir / 'migsocket-recover'}"
    answer = dst.raw("migrate-recover", {"uri": recover_uri})
    assert "return" in answer, answer
    wait_for_status(src, "postcopy-paused", timeout=30 * slow)
    migrate(src, recover_uri, resume=True)
    set_parameter(src, "max-postcopy-bandwidth", 0)
    postcopy_complete(src, dst, vmm)
    assert paused["status"] == "postcopy-paused"


# --- the same scenarios with postcopy-preempt (QEMU 7.2's capability) ---------


def _with_preempt(src: Vm, dst: Vm) -> None:
    for vm in (src, dst):
        set_capability(vm, "postcopy-preempt")
        caps = {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}
        assert caps["postcopy-preempt"] is True


def test_postcopy_preempt_pages_take_the_second_connection(vmm_any_accel: VmmKind,
                                                          lab: VmLauncher) -> None:
    """postcopy with postcopy-preempt over tcp, through a relay that counts
    each connection: there are two, and the second (the preempt channel)
    carries the pages the destination asked for after the switch."""
    kind = vmm_any_accel
    slow = slowdown(kind)
    src, dst = start_pair(lab, kind, "tcp:127.0.0.1:0")
    enable_postcopy(src, dst)
    _with_preempt(src, dst)
    port = int(dst.cmd("query-migrate")["socket-address"][0]["port"])
    link = Link(port)
    try:
        set_parameter(src, "max-bandwidth", 100_000_000)
        set_parameter(src, "downtime-limit", 1)
        set_parameter(src, "max-postcopy-bandwidth", 4 << 20)  # background trickles
        src.wait_serial(b"B", timeout=60 * slow)
        migrate(src, link.uri)
        wait_for_migration_pass(src, timeout=120 * slow)
        postcopy_start(src, dst, kind)
        # The guest writes on, faulting on pages the background has not sent.
        wait_until(lambda: len(link.pairs) == 2 and link.bytes_forward_on(1) > 4096,
                   30 * slow, "requested pages on the preempt connection")
        set_parameter(src, "max-postcopy-bandwidth", 0)
        postcopy_complete(src, dst, kind)
        assert len(link.pairs) == 2, len(link.pairs)
    finally:
        link.close()


def test_postcopy_preempt_recovery(vmm: VmmKind, lab: VmLauncher) -> None:
    """postcopy/recovery with postcopy-preempt: both channels are made
    again after the pause, as QEMU 7.2 does."""
    slow = slowdown(vmm)
    # An 'A' is enough here (the reference scenarios above wait for a 'B').
    src, dst, _uri = postcopy_prepare(lab, vmm, before_migrate=_with_preempt,
                                      first_output=b"A")
    set_parameter(src, "max-postcopy-bandwidth", 4096)
    postcopy_start(src, dst, vmm)
    wait_for_status(src, "postcopy-active", timeout=30 * slow)
    src.cmd("migrate-pause")
    wait_for_status(dst, "postcopy-paused", timeout=30 * slow)
    recover_uri = f"unix:{lab.workdir / 'migsocket-recover'}"
    assert "return" in dst.raw("migrate-recover", {"uri": recover_uri})
    wait_for_status(src, "postcopy-paused", timeout=30 * slow)
    migrate(src, recover_uri, resume=True)
    wait_for_status(src, "postcopy-active", timeout=30 * slow)
    set_parameter(src, "max-postcopy-bandwidth", 0)
    postcopy_complete(src, dst, vmm)
