"""Postcopy's QMP surface outside the happy path: command errors, starting
postcopy before migrate or before the first pass ends, and double failures
during recovery."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from conftest import slowdown
from migration_helpers import check_guests_ram, migrate, start_dest, wait_for_status
from postcopy_helpers import (
    postcopy_complete,
    postcopy_prepare,
    postcopy_start,
    set_capability,
    set_parameter,
)

from livemig.lab import Vm, VmLauncher, VmmKind, wait_until


def error_of(vm: Vm, name: str, args: dict | None = None) -> dict:  # type: ignore[type-arg]
    answer = vm.raw(name, args)
    assert "error" in answer, f"{name} should have failed: {answer}"
    return answer["error"]  # type: ignore[no-any-return]


def test_postcopy_command_errors(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    kind = vmm_any_accel
    src = lab.start(kind, "src")
    dst = start_dest(lab, kind, "dst", f"unix:{lab.workdir / 'mig.sock'}")
    err = error_of(src, "migrate-start-postcopy")
    assert err["class"] == "GenericError"
    assert "Enable postcopy with migrate_set_capability" in err["desc"]
    err = error_of(src, "migrate-pause")
    assert "only supported during postcopy-active state" in err["desc"]
    err = error_of(dst, "migrate-recover", {"uri": f"unix:{lab.workdir / 'rec.sock'}"})
    assert err["desc"] == "Migrate recover can only be run when postcopy is paused."
    err = error_of(src, "migrate", {"uri": "unix:/nonexistent", "resume": True})
    assert err["desc"] == "Cannot resume if there is no paused migration"
    set_capability(src, "postcopy-ram")
    err = error_of(src, "migrate-start-postcopy")
    assert err["desc"] == "Postcopy must be started after migration has been started"
    assert src.status() == "running" and dst.status() == "inmigrate"


def test_start_postcopy_after_completion_does_not_arm_the_next(vmm_any_accel: VmmKind,
                                                               lab: VmLauncher) -> None:
    """The request lives on the job: a late one is dropped with it (QEMU too)."""
    kind = vmm_any_accel
    src = lab.start(kind, "src")
    set_capability(src, "postcopy-ram")
    set_parameter(src, "max-bandwidth", 100_000_000_000)
    for index in range(2):
        uri = f"unix:{lab.workdir / f'mig{index}.sock'}"
        dst = start_dest(lab, kind, f"dst{index}", uri)
        set_capability(dst, "postcopy-ram")
        migrate(src, uri)
        info = wait_for_status(src, "completed", timeout=120)
        assert info["ram"]["postcopy-bytes"] == 0, info   # precopy all the way
        src.cmd("migrate-start-postcopy")                   # after completion: accepted
        dst.quit()
        if index == 0:
            src.cmd("cont")  # postmigrate -> running, for the second migration


def test_postcopy_switches_as_soon_as_asked(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """Over a 5 MB/s link a first pass of this guest takes half a minute:
    migrate-start-postcopy right after migrate switches within the first
    pass (dirty-sync-count still 1), as QEMU does, and the rest of RAM
    comes by postcopy (unpaced: max-postcopy-bandwidth is 0)."""
    kind = vmm_any_accel
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(kind, "src")
    dst = start_dest(lab, kind, "dst", uri)
    for vm in (src, dst):
        set_capability(vm, "postcopy-ram")
    set_parameter(src, "max-bandwidth", 5_000_000)
    src.wait_serial(b"B", timeout=60 * slowdown(kind))
    migrate(src, uri)
    wait_for_status(src, "active", timeout=30)
    src.cmd("migrate-start-postcopy")
    info = wait_for_status(src, "postcopy-active", timeout=10 * slowdown(kind))
    assert info["ram"]["dirty-sync-count"] <= 2, info  # the switch's own sync, at most
    assert info["ram"]["transferred"] < 100 << 20, info  # far from a whole pass
    wait_for_status(src, "completed", timeout=60 * slowdown(kind))
    wait_for_status(dst, "completed", timeout=60 * slowdown(kind))
    dst.cmd("stop")
    check_guests_ram(dst)


def _fake_peer(path: str, payload: bytes) -> threading.Thread:
    """A one-shot listener on ``path`` that sends ``payload`` and hangs up."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                if payload:
                    conn.sendall(payload)
                conn.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def _pause(src: Vm, dst: Vm, kind: VmmKind) -> None:
    set_parameter(src, "max-postcopy-bandwidth", 4096)
    postcopy_start(src, dst, kind)
    wait_for_status(src, "postcopy-active", timeout=30 * slowdown(kind))
    src.cmd("migrate-pause")
    wait_for_status(dst, "postcopy-paused", timeout=30 * slowdown(kind))
    wait_for_status(src, "postcopy-paused", timeout=30 * slowdown(kind))


def test_source_recovery_channel_breaks_then_recovers(livemig_tcg: VmmKind,
                                                      lab: VmLauncher) -> None:
    """The source's new channel dies in the handshake: paused again, then a
    second resume works."""
    kind = livemig_tcg
    src, dst, _ = postcopy_prepare(lab, kind)
    _pause(src, dst, kind)
    bogus = lab.workdir / "bogus.sock"
    peer = _fake_peer(str(bogus), b"")
    migrate(src, f"unix:{bogus}", resume=True)
    peer.join(30)
    # Paused before by migrate-pause; a new error-desc shows the attempt failed.
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] == "postcopy-paused"
                      and i.get("error-desc") not in (None, "paused by migrate-pause") and i,
                      30, "the failed recovery attempt")
    assert "channel" in info["error-desc"], info
    assert src.status() == "finish-migrate"
    recover_uri = f"unix:{lab.workdir / 'rec.sock'}"
    dst.cmd("migrate-recover", uri=recover_uri)
    migrate(src, recover_uri, resume=True)
    set_parameter(src, "max-postcopy-bandwidth", 0)
    postcopy_complete(src, dst, kind)


def test_destination_recovery_channel_breaks_then_recovers(livemig_tcg: VmmKind,
                                                           lab: VmLauncher) -> None:
    """A bogus peer connects to the destination's recovery socket and sends
    garbage: the destination pauses again; a second migrate-recover works."""
    kind = livemig_tcg
    src, dst, _ = postcopy_prepare(lab, kind)
    _pause(src, dst, kind)
    first = lab.workdir / "rec1.sock"
    dst.cmd("migrate-recover", uri=f"unix:{first}")
    err = error_of(dst, "migrate-recover", {"uri": f"unix:{lab.workdir / 'again.sock'}"})
    assert "triggered already" in err["desc"]
    wait_until(first.exists, 30, "the recovery socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(first))
        sock.sendall(b"garbage, not a livemig stream")
    # It was paused before; the new error-desc shows it took the garbage and paused again.
    info = wait_until(lambda: (i := dst.cmd("query-migrate"))["status"] == "postcopy-paused"
                      and "not a livemig migration stream" in i.get("error-desc", "") and i,
                      30, "the destination to pause again")
    assert info["status"] == "postcopy-paused" and dst.status() == "running"
    second = f"unix:{lab.workdir / 'rec2.sock'}"
    dst.cmd("migrate-recover", uri=second)
    migrate(src, second, resume=True)
    set_parameter(src, "max-postcopy-bandwidth", 0)
    postcopy_complete(src, dst, kind)


def test_cancel_and_cont_refused_during_postcopy(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """Cancelling would lose the guest: both halves of its RAM exist only
    together; `cont` on the source would run a second copy. livemig refuses
    both. (QEMU 7.2 refuses `cont` alike but lets the cancel through: its
    source ends `cancelled` and its destination stays paused.)"""
    kind = livemig_tcg
    src, dst, _ = postcopy_prepare(lab, kind)
    set_parameter(src, "max-postcopy-bandwidth", 4096)
    postcopy_start(src, dst, kind)
    wait_for_status(src, "postcopy-active", timeout=30)
    err = error_of(src, "migrate_cancel")
    assert "Postcopy migration in progress" in err["desc"]
    err = error_of(src, "cont")   # QEMU 7.2 refuses it too, in these words
    assert err["desc"] == "Migration is not finalized yet"
    assert src.status() == "finish-migrate"
    set_parameter(src, "max-postcopy-bandwidth", 0)
    postcopy_complete(src, dst, kind)


def test_postcopy_refused_without_userfaultfd(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """With userfaultfd denied (a seccomp filter, as a host policy would),
    a destination refuses postcopy-ram with QEMU's message; the source does
    not need userfaultfd and accepts it, as in QEMU. Precopy still works."""
    kind = vmm_any_accel
    helper = Path(__file__).with_name("no_userfaultfd.py")
    wrapper = lab.workdir / "no-uffd.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {helper} {kind.binary} "$@"\n')
    wrapper.chmod(0o755)
    denied = VmmKind(kind.label, str(wrapper), kind.accel)
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src = lab.start(denied, "src")
    dst = start_dest(lab, denied, "dst", uri)
    err = error_of(dst, "migrate-set-capabilities",
                   {"capabilities": [{"capability": "postcopy-ram", "state": True}]})
    assert err["desc"].startswith("Postcopy is not supported"), err
    caps = {c["capability"]: c["state"] for c in dst.cmd("query-migrate-capabilities")}
    assert caps["postcopy-ram"] is False
    set_capability(src, "postcopy-ram")
    set_capability(src, "postcopy-ram", False)
    src.wait_serial(b"B", timeout=60 * slowdown(kind))
    set_parameter(src, "max-bandwidth", 1_000_000_000)
    migrate(src, uri)
    wait_for_status(src, "completed", timeout=120 * slowdown(kind))
    dst.wait_event("RESUME", timeout=60)
    assert dst.status() == "running"


def test_postcopy_preempt_needs_postcopy_ram(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """QEMU 7.2's rule and words: preempt only with postcopy-ram, on both sides."""
    kind = vmm_any_accel
    for vm in (lab.start(kind, "src"),
               start_dest(lab, kind, "dst", f"unix:{lab.workdir / 'mig.sock'}")):
        err = error_of(vm, "migrate-set-capabilities",
                       {"capabilities": [{"capability": "postcopy-preempt", "state": True}]})
        assert err["desc"] == "Postcopy preempt requires postcopy-ram", err
        set_capability(vm, "postcopy-ram")
        set_capability(vm, "postcopy-preempt")
        caps = {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}
        assert caps["postcopy-preempt"] is True


def test_postcopy_preempt_on_the_source_only_fails_cleanly(livemig_tcg: VmmKind,
                                                          lab: VmLauncher) -> None:
    """A source with postcopy-preempt and a destination without: the
    destination says which side lacks it, the source's guest runs on.
    (livemig-only: the check is on livemig's stream header.)"""
    uri = f"unix:{lab.workdir / 'mig.sock'}"
    src, dst = lab.start(livemig_tcg, "src"), start_dest(lab, livemig_tcg, "dst", uri)
    for vm in (src, dst):
        set_capability(vm, "postcopy-ram")
    set_capability(src, "postcopy-preempt")
    migrate(src, uri)
    dst.wait_exit(timeout=30)
    assert "postcopy-preempt is set only on the source" in dst.stderr_text()
    wait_until(lambda: src.cmd("query-migrate")["status"] == "failed", 30, "the source to fail")
    assert src.status() == "running"
