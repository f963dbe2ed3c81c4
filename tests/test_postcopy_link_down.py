"""Postcopy over a link that really goes down.

Source and destination run in two network namespaces joined by a veth
pair; the test creates and removes them. Postcopy runs slowly (low
max-postcopy-bandwidth) while the source end of the link is taken down:
both sides must reach postcopy-paused on their own, with the destination
guest still there. A first recovery attempt with the link still down fails
and leaves the source paused; with the link up again the second one
completes, and the guest's RAM is checked.

Not run against QEMU: this checks livemig's dead-peer detection on TCP
migration channels (TCP user timeout and keepalive, docs/migration.md);
QEMU 7.2 leaves a dead peer to TCP's own retransmission timeout, which
takes many minutes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import slowdown
from migration_helpers import migrate, wait_for_migration_pass, wait_for_status
from postcopy_helpers import (
    enable_postcopy,
    postcopy_complete,
    postcopy_start,
    set_capability,
    set_parameter,
)

from livemig.lab import VmLauncher, VmmKind, wait_until

SRC_IP, DST_IP = "10.199.0.1", "10.199.0.2"


@dataclass
class NetnsPair:
    src_ns: str
    dst_ns: str
    src_if: str

    def link(self, up: bool) -> None:
        _ip("-n", self.src_ns, "link", "set", self.src_if, "up" if up else "down")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    tag = f"{os.getpid() % 100000}"
    pair = NetnsPair(f"lmsrc{tag}", f"lmdst{tag}", f"lmva{tag}")
    peer_if = f"lmvb{tag}"
    try:
        _ip("netns", "add", pair.src_ns)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        pytest.skip(f"'ip netns' is not permitted here: {detail.strip()}")
    try:
        _ip("netns", "add", pair.dst_ns)
        _ip("link", "add", pair.src_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", pair.src_if, "netns", pair.src_ns)
        _ip("link", "set", peer_if, "netns", pair.dst_ns)
        _ip("-n", pair.src_ns, "addr", "add", f"{SRC_IP}/24", "dev", pair.src_if)
        _ip("-n", pair.dst_ns, "addr", "add", f"{DST_IP}/24", "dev", peer_if)
        for ns, dev in ((pair.src_ns, pair.src_if), (pair.dst_ns, peer_if)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        for ns in (pair.src_ns, pair.dst_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _in_netns(lab: VmLauncher, kind: VmmKind, ns: str) -> VmmKind:
    """The same VMM, started inside network namespace ``ns``."""
    wrapper = Path(lab.workdir) / f"in-{ns}.sh"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {kind.binary} "$@"\n')
    wrapper.chmod(0o755)
    return VmmKind(kind.label, str(wrapper), kind.accel)


@pytest.mark.parametrize("preempt", [False, True], ids=["one-channel", "preempt"])
def test_link_down_pauses_then_recovers(vmm_any_accel: VmmKind, lab: VmLauncher,
                                        netns_pair: NetnsPair, preempt: bool) -> None:
    # Dead-peer detection is the channel's, not the accelerator's: tcg only
    # (postcopy recovery under kvm is the reference scenarios' job).
    vmm = vmm_any_accel
    if vmm.is_qemu:
        pytest.skip("livemig's dead-peer detection; QEMU 7.2 waits out TCP's retransmissions")
    slow = slowdown(vmm)
    uri = f"tcp:{DST_IP}:4444"
    src = lab.start(_in_netns(lab, vmm, netns_pair.src_ns), "src")
    dst = lab.start(_in_netns(lab, vmm, netns_pair.dst_ns), "dst", extra=["-incoming", uri])
    enable_postcopy(src, dst)
    if preempt:  # both connections cross the link; recovery makes both again
        set_capability(src, "postcopy-preempt")
        set_capability(dst, "postcopy-preempt")
    set_parameter(src, "max-bandwidth", 1_000_000_000)
    set_parameter(src, "downtime-limit", 1)
    set_parameter(src, "max-postcopy-bandwidth", 65536)
    src.wait_serial(b"B", timeout=60 * slow)
    migrate(src, uri)
    wait_for_migration_pass(src, timeout=120 * slow)
    postcopy_start(src, dst, vmm)
    wait_for_status(src, "postcopy-active", timeout=30 * slow)
    wait_for_status(dst, "postcopy-active", timeout=30 * slow)

    netns_pair.link(up=False)
    src_info = wait_for_status(src, "postcopy-paused", timeout=60)
    dst_info = wait_for_status(dst, "postcopy-paused", timeout=60)
    assert "error-desc" in src_info and "error-desc" in dst_info
    assert dst.status() == "running"          # the guest stays, waiting for pages
    assert src.status() == "finish-migrate"   # and its other half stays here

    # Second failure: recovery while the link is still down.
    recover_uri = f"tcp:{DST_IP}:4445"
    dst.cmd("migrate-recover", uri=recover_uri)
    migrate(src, recover_uri, resume=True)
    wait_until(lambda: "Failed to connect" in src.cmd("query-migrate").get("error-desc", ""),
               60, "the failed recovery attempt")
    assert src.cmd("query-migrate")["status"] == "postcopy-paused"
    assert dst.cmd("query-migrate")["status"] == "postcopy-paused"

    netns_pair.link(up=True)
    migrate(src, recover_uri, resume=True)
    set_parameter(src, "max-postcopy-bandwidth", 0)
    postcopy_complete(src, dst, vmm)
