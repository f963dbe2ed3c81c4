"""The reference test's postcopy/unix and postcopy/recovery scenarios, same
QMP sequence, on livemig tcg, livemig kvm and QEMU."""

from __future__ import annotations

from conftest import slowdown
from migration_helpers import migrate, wait_for_status
from postcopy_helpers import (
    postcopy_complete,
    postcopy_prepare,
    postcopy_start,
    set_parameter,
)

from livemig.lab import VmLauncher, VmmKind


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
