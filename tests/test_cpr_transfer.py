"""cpr-transfer (QEMU 10's local live upgrade): guest RAM's descriptor goes
to a new process on a cpr channel, then the state on the main channel; RAM
is never copied. On livemig tcg and kvm, and on a QEMU that has the mode
(Debian's QEMU 7.2 has not: those cases say so and skip). Also ``migrate
channels=…`` itself, the refusals, and hostile peers on the cpr channel."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import slowdown
from migration_helpers import check_guests_ram, wait_for_status

from livemig.guest import AB_START
from livemig.lab import Vm, VmLauncher, VmmKind, wait_until
from livemig.migration.codec import CprState

MEMFD = ["-object", "memory-backend-memfd,id=mem,size=150M,share=on",
         "-machine", "memory-backend=mem,aux-ram-share=on"]


def unix(path: Path) -> dict[str, Any]:
    return {"transport": "socket", "type": "unix", "path": str(path)}


def channels(main: Path, cpr: Path | None) -> list[dict[str, Any]]:
    found = [{"channel-type": "main", "addr": unix(main)}]
    if cpr is not None:
        found.append({"channel-type": "cpr", "addr": unix(cpr)})
    return found


def needs_cpr_transfer(lab: VmLauncher, kind: VmmKind) -> None:
    """QEMU before 10.0 has no migration mode parameter at all (nor
    ``aux-ram-share``, so a VM without MEMFD asks)."""
    probe = lab.start(kind, "probe", boot=False)
    modes = "mode" in probe.cmd("query-migrate-parameters")
    probe.quit()
    if not modes:
        pytest.skip(f"{kind.label} has no cpr-transfer (QEMU 10.0 added it)")


def start_new_process(lab: VmLauncher, kind: VmmKind, name: str) -> tuple[Vm, Path, Path]:
    """A new process waiting on its cpr channel; its monitor opens only once
    the old process has handed RAM over (as QEMU's), so it is not connected."""
    main, cpr = lab.workdir / f"{name}.main", lab.workdir / f"{name}.cpr"
    cpr_channel = json.dumps({"channel-type": "cpr", "addr": unix(cpr)})
    vm = lab.start(kind, name, extra=[*MEMFD, "-incoming", f"unix:{main}",
                                      "-incoming", cpr_channel], connect=False)
    wait_until(lambda: cpr.exists() or vm.process.poll() is not None, 30,
               f"{name}'s cpr channel")
    return vm, main, cpr


def upgrade(lab: VmLauncher, kind: VmmKind, old: Vm, name: str) -> tuple[Vm, dict[str, Any]]:
    """One cpr-transfer of ``old``'s running guest onto a new process."""
    new, main, cpr = start_new_process(lab, kind, name)
    old.cmd("migrate-set-parameters", mode="cpr-transfer")
    old.cmd("migrate", channels=channels(main, cpr))
    new.connect()
    info = wait_for_status(old, "completed", timeout=60 * slowdown(kind))
    wait_until(lambda: new.status() == "running", 60 * slowdown(kind), f"{name} running")
    return new, info


def guest_moves(vm: Vm, kind: VmmKind) -> None:
    """The guest's RAM walk goes on (its counter byte changes)."""
    first = vm.pmem(AB_START, 1)
    wait_until(lambda: vm.pmem(AB_START, 1) != first, 60 * slowdown(kind), f"{vm.name} to run")


def test_cpr_transfer_hands_ram_over(vmm: VmmKind, lab: VmLauncher) -> None:
    """A running guest in a memfd moves to a new process: no page is sent,
    the old process stops and quits, the guest runs on and its RAM holds."""
    needs_cpr_transfer(lab, vmm)
    old = lab.start(vmm, "old", extra=MEMFD)
    guest_moves(old, vmm)
    new, info = upgrade(lab, vmm, old, "new")
    ram = info["ram"]
    assert ram["normal"] < 256 and ram["transferred"] < 1 << 20, ram   # state, not RAM
    assert old.status() == "postmigrate"
    assert old.quit() == 0
    guest_moves(new, vmm)
    if vmm.accel == "tcg":
        seen = new.serial().count(b"B")
        wait_until(lambda: new.serial().count(b"B") > seen, 60, "the serial output to go on")
    new.cmd("stop")
    check_guests_ram(new)


def test_cpr_transfer_ten_times_in_a_row(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """Ten upgrades of one running guest; every old process exits; the
    downtime stays a stop, a state record and a start."""
    kind = livemig_tcg
    vm = lab.start(kind, "vm0", extra=MEMFD)
    vm.wait_serial(b"B", timeout=60)
    downtimes = []
    for hop in range(1, 11):
        new, info = upgrade(lab, kind, vm, f"vm{hop}")
        assert info["ram"]["transferred"] < 1 << 20
        downtimes.append(info["downtime"])
        assert vm.quit() == 0
        seen = new.serial().count(b"B")
        wait_until(lambda new=new, seen=seen: new.serial().count(b"B") > seen, 60,
                   "the serial output to go on")
        vm = new
    assert max(downtimes) < 1000, downtimes
    vm.cmd("stop")
    check_guests_ram(vm)


def test_migrate_channels_main_only(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """QEMU 8.2's ``channels`` spelling of an ordinary migration."""
    src = lab.start(vmm_any_accel, "src")
    if "mode" not in src.cmd("query-migrate-parameters"):   # (both came in QEMU 8.2)
        pytest.skip(f"{vmm_any_accel.label} takes no 'channels' (QEMU 8.2 added them)")
    main = lab.workdir / "main.sock"
    dst = lab.start(vmm_any_accel, "dst", extra=["-incoming", "defer"])
    dst.cmd("migrate-incoming", channels=channels(main, None))
    wait_until(main.exists, 30, "the destination's socket")
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 100_000_000_000})
    src.wait_serial(b"B", timeout=60)
    src.cmd("migrate", channels=channels(main, None))
    wait_for_status(src, "completed")
    wait_for_status(dst, "completed")
    dst.cmd("stop")
    check_guests_ram(dst)


def _error(vm: Vm, name: str, args: dict[str, Any]) -> str:
    answer = vm.raw(name, args)
    assert "error" in answer, answer
    return str(answer["error"]["desc"])


def test_refusals_leave_the_guest_running(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """Each is a clear error at migrate; the guest goes on."""
    kind = livemig_tcg
    anon = lab.start(kind, "anon")
    main, cpr = lab.workdir / "main.sock", lab.workdir / "cpr.sock"
    assert _error(anon, "migrate", {}) == "need either 'uri' or 'channels' argument"
    assert _error(anon, "migrate", {"uri": f"unix:{main}", "channels": channels(main, None)}) \
        == "need either 'uri' or 'channels' argument"
    assert "a cpr channel is for cpr-transfer" in \
        _error(anon, "migrate", {"channels": channels(main, cpr)})
    assert _error(anon, "migrate", {"channels": [{"channel-type": "cpr",
                                                  "addr": unix(cpr)}]}) \
        == "Channel list has no main entry"
    twice = channels(main, None) * 2
    assert _error(anon, "migrate", {"channels": twice}) == \
        "Channel list has more than one main entry"
    assert "transport" in _error(anon, "migrate", {"channels": [
        {"channel-type": "main", "addr": {"transport": "pigeon"}}]})
    anon.cmd("migrate-set-parameters", mode="cpr-transfer")
    assert _error(anon, "migrate", {"channels": channels(main, None)}) == \
        "missing 'cpr' migration channel"
    assert "not compatible with CPR" in _error(anon, "migrate", {"channels": channels(main, cpr)})
    tcp_cpr = [*channels(main, None), {"channel-type": "cpr", "addr": {
        "transport": "socket", "type": "inet", "host": "127.0.0.1", "port": "1"}}]
    assert "must be a unix socket" in _error(anon, "migrate", {"channels": tcp_cpr})
    shared = lab.start(kind, "shared", extra=MEMFD)
    shared.cmd("migrate-set-parameters", mode="cpr-transfer")
    shared.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "postcopy-ram", "state": True}])
    assert "not compatible with postcopy-ram" in \
        _error(shared, "migrate", {"channels": channels(main, cpr)})
    shared.cmd("migrate-set-parameters", mode="cpr-reboot")
    assert "cpr-reboot is not compatible with postcopy-ram" in \
        _error(shared, "migrate", {"uri": f"file:{lab.workdir / 'state'}"})
    for vm in (anon, shared):
        guest_moves(vm, kind)
        assert vm.status() == "running"


def test_destination_needs_a_shared_backend(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """A cpr channel without RAM that can take a descriptor, or without a
    main channel, is a start-up error (before anything listens)."""
    cpr = json.dumps({"channel-type": "cpr", "addr": unix(lab.workdir / "cpr.sock")})
    for extra, words in (
            (["-incoming", "unix:/tmp/x", "-incoming", cpr], "memory-backend-memfd"),
            ([*MEMFD, "-incoming", cpr], "needs a main channel"),
            ([*MEMFD, "-incoming", "unix:/tmp/x", "-incoming", cpr, "-incoming", cpr],
             "only one cpr channel")):
        proc = lab.spawn(lab.argv(livemig_tcg, "bad", extra=extra), "bad")
        assert proc.wait(30) == 1
        assert words in (lab.workdir / "bad.stderr").read_text()


# --- hostile peers on the cpr channel ---------------------------------------------------


def _peer_sends(path: Path, data: bytes, fds: list[int] | None = None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        if fds:
            socket.send_fds(sock, [data], fds)
        elif data:
            sock.sendall(data)


@pytest.mark.parametrize("data,words", [
    (b"", "closed it before the whole cpr state came"),
    (b"GET / HTTP/1.1\r\n\r\n", "not a livemig cpr channel"),
    (b"LVMR\x01\x00\x09\x00\x00\x00{\"fd\"", "closed it before the whole cpr state came"),
    (b"LVMR\x01\x00\x05\x00\x00\x00{\"fd\"", "malformed cpr state"),
    (b"LVMR\x09\x00\x02\x00\x00\x00{}", "unsupported cpr state version 9"),
    (CprState(("memory-backend:mem",)).encode(), "names 1 descriptors but 0 came"),
])
def test_garbage_on_the_cpr_channel(livemig_tcg: VmmKind, lab: VmLauncher, data: bytes,
                                    words: str) -> None:
    """The new process ends with a clear start-up error naming the channel."""
    new, _main, cpr = start_new_process(lab, livemig_tcg, "new")
    _peer_sends(cpr, data)
    assert new.process.wait(30) == 1
    err = new.stderr_text()
    assert words in err and "cpr" in err, err


def test_wrong_descriptor_name(livemig_tcg: VmmKind, lab: VmLauncher) -> None:
    """A message that hands over memory for another backend id."""
    new, _main, cpr = start_new_process(lab, livemig_tcg, "new")
    fd = os.memfd_create("other")
    try:
        _peer_sends(cpr, CprState(("memory-backend:other",)).encode(), [fd])
    finally:
        os.close(fd)
    assert new.process.wait(30) == 1
    assert "no memory for backend 'mem'" in new.stderr_text()


class FakeNewProcess:
    """A cpr channel whose far end takes the message and then does
    ``behaviour``: 'close' (hangs up unanswered) or 'stall' (never answers)."""

    def __init__(self, path: Path, behaviour: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.behaviour = behaviour
        self.got_fds: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        _data, self.got_fds, _flags, _addr = socket.recv_fds(conn, 65536, 8)
        if self.behaviour == "close":
            conn.close()
        else:
            self.done.wait(60)
            conn.close()

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()
        for fd in self.got_fds:
            os.close(fd)


@pytest.mark.parametrize("behaviour", ["close", "stall"])
def test_new_process_that_fails_the_source(livemig_tcg: VmmKind, lab: VmLauncher,
                                           behaviour: str) -> None:
    """Hung up before answering: the migration fails. Never answering: it
    waits in setup until migrate_cancel. Either way the guest runs on."""
    old = lab.start(livemig_tcg, "old", extra=MEMFD)
    cpr = lab.workdir / "cpr.sock"
    peer = FakeNewProcess(cpr, behaviour)
    try:
        old.cmd("migrate-set-parameters", mode="cpr-transfer")
        old.cmd("migrate", channels=channels(lab.workdir / "main.sock", cpr))
        if behaviour == "close":
            info = wait_until(lambda: (i := old.cmd("query-migrate"))["status"] == "failed"
                              and i, 30, "the migration to fail")
            assert "without taking the guest's memory" in info["error-desc"]
        else:
            wait_until(lambda: peer.got_fds, 30, "the descriptor to arrive")
            assert old.cmd("query-migrate")["status"] == "setup"
            old.cmd("migrate_cancel")
            wait_for_status(old, "cancelled", timeout=30)
        assert len(peer.got_fds) == 1
    finally:
        peer.close()
    assert old.status() == "running"
    guest_moves(old, livemig_tcg)


def test_cpr_reboot_saves_state_not_ram(vmm_any_accel: VmmKind, lab: VmLauncher) -> None:
    """cpr-reboot: the guest is stopped first, its state (not its RAM, which
    is in a shared file) goes to a file, and a later process resumes it."""
    kind = vmm_any_accel
    needs_cpr_transfer(lab, kind)   # cpr-reboot came in 8.2, so QEMU 7.2 lacks both
    ram = Path("/dev/shm") / f"livemig-cpr-{os.getpid()}-{id(lab)}"
    backend = ["-object", f"memory-backend-file,id=mem,size=150M,mem-path={ram},share=on",
               "-machine", "memory-backend=mem"]
    state = lab.workdir / "vm.state"
    try:
        old = lab.start(kind, "old", extra=backend)
        guest_moves(old, kind)
        old.cmd("migrate-set-parameters", mode="cpr-reboot")
        old.cmd("migrate-set-capabilities",
                capabilities=[{"capability": "x-ignore-shared", "state": True}])
        old.cmd("migrate", uri=f"file:{state}")
        info = wait_for_status(old, "completed")
        assert info["ram"]["normal"] < 256, info["ram"]
        assert old.status() == "postmigrate"
        assert state.stat().st_size < 1 << 20
        assert old.quit() == 0
        new = lab.start(kind, "new", extra=[*backend, "-incoming", f"file:{state}"])
        wait_until(lambda: new.status() == "running", 60, "the restored guest to run")
        guest_moves(new, kind)
        new.cmd("stop")
        check_guests_ram(new)
    finally:
        ram.unlink(missing_ok=True)
