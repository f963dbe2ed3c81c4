"""multifd: pages over several connections beside the main channel, with and
without compression, on livemig and QEMU (issue 9)."""

from __future__ import annotations

import pytest
from migration_helpers import migrate, migration_status, wait_for_migration_pass, wait_for_status
from postcopy_helpers import set_capability
from stream_scenarios import configured_pair, incoming_uri, migrate_and_check

from livemig.lab import LabError, VmLauncher, VmmKind, wait_until
from livemig.lab.link import Link


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("channels", [1, 2, 8])
def test_multifd_precopy(livemig_tcg: VmmKind, lab: VmLauncher, channels: int,
                         transport: str) -> None:
    kind = livemig_tcg
    src, dst = configured_pair(lab, kind, ["multifd"], {"multifd-channels": channels})
    uri = incoming_uri(lab, dst, transport)
    info = migrate_and_check(src, dst, uri, kind)
    assert info["ram"]["multifd-bytes"] > 0


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_multifd_precopy_both_vmms(vmm_any_accel: VmmKind, lab: VmLauncher,
                                   transport: str) -> None:
    """The default channel count on livemig and QEMU alike."""
    kind = vmm_any_accel
    channels = 2
    src, dst = configured_pair(lab, kind, ["multifd"], {"multifd-channels": channels})
    uri = incoming_uri(lab, dst, transport)
    info = migrate_and_check(src, dst, uri, kind)
    assert info["ram"]["multifd-bytes"] > 0


@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_multifd_compression(vmm_any_accel: VmmKind, lab: VmLauncher, method: str) -> None:
    """The built-in guest's pages (one changing byte each) compress: far fewer
    bytes go than RAM holds."""
    kind = vmm_any_accel
    params = {"multifd-channels": 2, "multifd-compression": method}
    src, dst = configured_pair(lab, kind, ["multifd"], params)
    # zlib moves a few hundred MB/s per channel here, about what the guest
    # dirties under tcg: at the default 300 ms neither VMM is sure to converge.
    src.cmd("migrate-set-parameters", **{"downtime-limit": 2000})
    info = migrate_and_check(src, dst, incoming_uri(lab, dst, "tcp"), kind)
    ram = info["ram"]
    assert ram["normal"] > 1000
    if kind.is_qemu:
        # A deliberate difference: QEMU 7.2 counts multifd pages in transferred
        # and multifd-bytes before compression (it adds page size times pages),
        # so its figures cannot show what compression saved; livemig counts
        # the bytes that went on the wire. benchmarks/ measures both on the socket.
        assert ram["multifd-bytes"] >= ram["normal"] * 4096
    else:
        assert ram["transferred"] < ram["normal"] * 4096 / 10, ram


def test_multifd_cancel_then_migrate_again(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """migrate_cancel mid-way: cancelled, the guest runs on; a fresh destination
    then receives the whole guest."""
    kind = vmm_any_accel
    src, dst = configured_pair(lab, kind, ["multifd"], {"multifd-channels": 4})
    uri = incoming_uri(lab, dst, "unix")
    # 1 ms of downtime is never enough for a guest that keeps writing: the
    # migration iterates until cancelled (QEMU 7.2's multifd ignores max-bandwidth).
    src.cmd("migrate-set-parameters", **{"downtime-limit": 1})
    src.wait_serial(b"B", timeout=60)
    migrate(src, uri)
    wait_for_migration_pass(src)
    src.cmd("migrate_cancel")
    wait_for_status(src, "cancelled", timeout=60)
    assert src.status() == "running"
    dst.kill()
    fresh = lab.start(kind, "dst2", extra=["-incoming", "defer"])
    fresh.cmd("migrate-set-capabilities",
              capabilities=[{"capability": "multifd", "state": True}])
    fresh.cmd("migrate-set-parameters", **{"multifd-channels": 4})
    uri2 = f"unix:{lab.workdir / 'mig2.sock'}"
    fresh.cmd("migrate-incoming", uri=uri2)
    wait_until((lab.workdir / "mig2.sock").exists, 30, "the new incoming socket")
    src.cmd("migrate-set-parameters", **{"downtime-limit": 300})
    migrate_and_check(src, fresh, uri2, kind)


def test_multifd_fewer_channels_on_destination(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """livemig's destination names the mismatch and exits; the source fails and
    its guest runs on. (QEMU 7.2 does not check: its destination waits.)"""
    kind = livemig_tcg
    src, dst = configured_pair(lab, kind, ["multifd"], {"multifd-channels": 8},
                               dst_params={"multifd-channels": 2})
    uri = incoming_uri(lab, dst, "unix")
    migrate(src, uri)
    assert dst.wait_exit(60) == 1
    assert "the source has 8 channels, this destination 2" in dst.stderr_text()
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                      60, "the source to fail")
    assert "error-desc" in info
    assert src.status() == "running"


def test_multifd_only_on_the_source(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    kind = livemig_tcg
    src, dst = configured_pair(lab, kind, ["multifd"], {}, dst_params={})
    dst.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": False}])
    uri = incoming_uri(lab, dst, "unix")
    migrate(src, uri)
    assert dst.wait_exit(60) == 1
    assert "the multifd capability is not set here" in dst.stderr_text()
    wait_until(lambda: src.cmd("query-migrate")["status"] == "failed", 60, "the source to fail")
    assert src.status() == "running"


def test_multifd_needs_a_socket(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """exec: has one pipe: multifd is refused, the guest runs on."""
    kind = vmm_any_accel
    src = lab.start(kind, "src")
    src.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    try:
        migrate(src, f"exec:cat > {lab.workdir / 'out.bin'}")
    except LabError as err:
        assert "multifd" in str(err)  # QEMU may refuse at once
    else:
        info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                          60, "the source to fail")
        # QEMU 7.2 fails it without a word (no error-desc); livemig says why.
        if not kind.is_qemu:
            assert "multifd is not supported by current protocol" in info["error-desc"]
    assert src.status() == "running"


def test_multifd_channel_dropped_mid_way(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """One multifd connection breaks during a pass: the migration fails on the
    source, whose guest runs on."""
    kind = vmm_any_accel
    src, dst = configured_pair(lab, kind, ["multifd"], {"multifd-channels": 2})
    uri = incoming_uri(lab, dst, "tcp")
    proxy = Link(int(uri.rsplit(":", 1)[1]))
    try:
        src.cmd("migrate-set-parameters", **{"downtime-limit": 1})
        src.wait_serial(b"B", timeout=60)
        migrate(src, proxy.uri)
        wait_for_migration_pass(src)
        assert len(proxy.pairs) == 3  # main + 2 channels
        proxy.cut(2)
        info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "failed" and i,
                          60, "the source to fail")
        if not kind.is_qemu:
            assert "multifd" in info["error-desc"], info
        assert src.status() == "running"
        src.wait_serial(b"B", timeout=30, count=src.serial().count(b"B") + 1)  # still running
    finally:
        proxy.close()


ZERO_COPY_ERROR = "Zero copy only available for non-compressed non-TLS multifd migration"


def test_zero_copy_send_is_checked_as_qemu_checks_it(vmm_any_accel: VmmKind,
                                                    lab: VmLauncher) -> None:
    """QEMU 7.2's rule for the zero-copy-send capability, and its words:
    multifd, no compression, no TLS; checked whichever side changes."""
    vm = lab.start(vmm_any_accel, "vm")

    def caps(**states: bool) -> dict:  # type: ignore[type-arg]
        return vm.raw("migrate-set-capabilities", {"capabilities": [
            {"capability": name, "state": state} for name, state in states.items()]})

    assert caps(**{"zero-copy-send": True})["error"]["desc"] == ZERO_COPY_ERROR
    assert "error" not in caps(**{"multifd": True, "zero-copy-send": True})
    for name, value in (("multifd-compression", "zlib"), ("tls-creds", "tls0")):
        answer = vm.raw("migrate-set-parameters", {name: value})
        assert answer["error"]["desc"] == ZERO_COPY_ERROR, (name, answer)
    assert caps(multifd=False)["error"]["desc"] == ZERO_COPY_ERROR
    states = {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}
    assert states["multifd"] and states["zero-copy-send"]


def test_multifd_with_zero_copy_send(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """livemig sends pages without a copy on any plain socket (splice.py),
    so multifd with zero-copy-send migrates over a unix socket. QEMU 7.2
    differs on purpose here: its zero copy is MSG_ZEROCOPY, which unix
    sockets lack, and it fails the migration saying so."""
    kind = vmm_any_accel
    src, dst = configured_pair(lab, kind, ["multifd"], {})
    set_capability(src, "zero-copy-send")
    uri = incoming_uri(lab, dst, "unix")
    if kind.is_qemu:
        migrate(src, uri)
        wait_until(lambda: migration_status(src) == "failed", 60, "QEMU to refuse")
        assert src.cmd("query-migrate")["error-desc"] == (
            "Zero copy send feature not detected in host kernel")
        return
    info = migrate_and_check(src, dst, uri, kind)
    assert info["ram"]["dirty-sync-missed-zero-copy"] == 0
