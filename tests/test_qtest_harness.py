"""Start a VM exactly as QEMU's qtest harness of the reference test's era does.

The harness listens on two unix sockets, runs the VMM through ``sh -c`` with
its fixed prefix (note ``nowait`` on client-mode sockets and ``accel=qtest``
overridden by the test's own ``-machine accel=kvm:tcg``), accepts both
connections, reads the QMP greeting, negotiates, and asks qtest questions.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from conftest import LIVEMIG, QEMU

from livemig.guest import AB_START
from livemig.lab import QtestClient, VmLauncher, qtest_listener, wait_until

BINARIES = [
    pytest.param(LIVEMIG, id="livemig",
                 marks=pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")),
]


def _prefix(binary: str, tmp: Path, tag: str = "") -> tuple[Path, Path, str]:
    pid = os.getpid()
    qtest_path, qmp_path = tmp / f"qtest-{pid}{tag}.sock", tmp / f"qtest-{pid}{tag}.qmp"
    return qtest_path, qmp_path, (
        f"exec {shlex.quote(binary)} -qtest unix:{qtest_path},nowait "
        f"-qtest-log /dev/null -chardev socket,path={qmp_path},nowait,id=char0 "
        f"-mon chardev=char0,mode=control -machine accel=qtest -display none ")


@pytest.mark.skipif(QEMU is None, reason="QEMU is not installed")
def test_qemu_72_refuses_the_old_harness_prefix(tmp_path: Path, lab: VmLauncher) -> None:
    """QEMU deliberately differs here: since 6.0 it rejects ``nowait`` on a
    client-mode socket, so the old harness cannot start QEMU 7.2 at all, while
    livemig (like the QEMU of the reference test's era) accepts it."""
    qtest_path, qmp_path, command = _prefix(str(QEMU), tmp_path)
    listeners = qtest_listener(qtest_path), qtest_listener(qmp_path)
    proc = lab.spawn(["sh", "-c", command], "qemu-harness")
    assert proc.wait(60) != 0
    assert "'wait' option is incompatible with socket in client connect mode" in \
        (tmp_path / "qemu-harness.stderr").read_text()
    for sock in listeners:
        sock.close()


def _harness_start(binary: str, tmp: Path, test_args: str, lab: VmLauncher,  # type: ignore[no-untyped-def]
                   tag: str = ""):
    qtest_path, qmp_path, command = _prefix(binary, tmp, tag)
    qtest_sock, qmp_sock = qtest_listener(qtest_path), qtest_listener(qmp_path)
    command += test_args
    proc = lab.spawn(["sh", "-c", command], f"harness{tag}")
    qtest_sock.settimeout(30)
    qmp_sock.settimeout(30)
    qtest_conn, _ = qtest_sock.accept()
    qmp_conn, _ = qmp_sock.accept()
    qmp = qmp_conn.makefile("rwb", buffering=0)
    greeting = json.loads(qmp.readline())
    assert "QMP" in greeting
    qmp.write(b"{ 'execute': 'qmp_capabilities' }")  # libqtest's own quoting
    assert json.loads(qmp.readline()) == {"return": {}}
    return proc, QtestClient(qtest_conn), qmp


def _ask(qmp, text: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    qmp.write(text.encode())
    while True:
        message = json.loads(qmp.readline())
        if "event" not in message:
            return message


@pytest.mark.parametrize("binary", BINARIES)
def test_harness_prefix_alone(binary: str, tmp_path: Path, lab: VmLauncher) -> None:
    proc, qtest, qmp = _harness_start(binary, tmp_path, "", lab)
    assert qtest.command("endianness") == "OK little"
    assert _ask(qmp, '{"execute": "query-status"}')["return"]["status"] == "running"
    proc.terminate()  # libqtest ends a VM with SIGTERM
    assert proc.wait(30) is not None


@pytest.mark.parametrize("binary", BINARIES)
def test_harness_with_reference_options(binary: str, tmp_path: Path, lab: VmLauncher) -> None:
    boot = lab.boot_image()
    serial = tmp_path / "src_serial"
    args = (f"-machine accel=kvm:tcg -m 150M -name source,debug-threads=on "
            f"-serial file:{serial} -drive file={boot},format=raw")
    proc, qtest, qmp = _harness_start(binary, tmp_path, args, lab)
    wait_until(lambda: serial.exists() and serial.read_bytes().startswith(b"A"), 120,
               "'A' on the serial file")
    # The guest is running: qtest sees the byte at 1 MiB move.
    first = qtest.memread(AB_START, 1)
    wait_until(lambda: qtest.memread(AB_START, 1) != first, 120, "the guest to write")
    answer = qtest.command("readb 0x7dfe")
    assert answer == "OK 0x0000000000000055"
    assert _ask(qmp, '{"execute": "query-kvm"}')["return"]["present"] is True
    proc.terminate()
    proc.wait(30)


class HarnessQmp:
    """libqtest's QMP: commands in its single-quoted style, events kept."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream
        self.events: list[str] = []

    def ask(self, text: str) -> dict:  # type: ignore[type-arg]
        self.stream.write(text.encode())
        while True:
            message = json.loads(self.stream.readline())
            if "event" in message:
                self.events.append(message["event"])
            else:
                assert "error" not in message, f"{text}: {message}"
                return message  # type: ignore[no-any-return]

    def status(self) -> str:
        return str(self.ask("{ 'execute': 'query-migrate' }")["return"].get("status"))

    def wait_event(self, name: str) -> None:
        def seen() -> bool:
            if name in self.events:
                return True
            self.ask("{ 'execute': 'query-status' }")
            return name in self.events
        wait_until(seen, 120, f"event {name}")


@pytest.mark.parametrize("binary", BINARIES)
def test_harness_postcopy_recovery(binary: str, tmp_path: Path, lab: VmLauncher) -> None:
    """postcopy/recovery the way the reference test's own binary drives it:
    both VMs through the harness prefix, commands in libqtest's quoting,
    the destination's RAM checked over qtest. On tcg: none of that depends
    on the accelerator (the harness start above keeps the binary's
    kvm:tcg), recovery under kvm is test_reference_postcopy's, and under
    nested KVM this test took 35 s of the suite's budget."""
    boot, sock = lab.boot_image(), tmp_path / "migsocket"
    common = f"-machine accel=tcg -m 150M -drive file={boot},format=raw "
    src_proc, _src_qtest, src_stream = _harness_start(
        binary, tmp_path, common + f"-name source,debug-threads=on "
        f"-serial file:{tmp_path / 'src_serial'}", lab, "-src")
    dst_proc, dst_qtest, dst_stream = _harness_start(
        binary, tmp_path, common + f"-name target,debug-threads=on "
        f"-serial file:{tmp_path / 'dest_serial'} -incoming unix:{sock}", lab, "-dst")
    src, dst = HarnessQmp(src_stream), HarnessQmp(dst_stream)
    for vm, cap in ((src, "postcopy-ram"), (dst, "postcopy-ram"), (dst, "postcopy-blocktime")):
        vm.ask("{ 'execute': 'migrate-set-capabilities','arguments': { 'capabilities': "
               f"[ {{ 'capability': '{cap}', 'state': true }} ] }} }}")
    src.ask("{ 'execute': 'migrate-set-parameters','arguments': { 'max-bandwidth': 100000000 } }")
    src.ask("{ 'execute': 'migrate-set-parameters','arguments': { 'downtime-limit': 1 } }")
    wait_until(lambda: (tmp_path / "src_serial").exists()
               and b"B" in (tmp_path / "src_serial").read_bytes(), 300, "'B' on the source")
    src.ask(f"{{ 'execute': 'migrate', 'arguments': {{ 'uri': 'unix:{sock}' }} }}")
    wait_until(lambda: src.ask("{ 'execute': 'query-migrate' }")["return"]
               .get("ram", {}).get("dirty-sync-count", 0) >= 2, 300, "a full pass")
    src.ask("{ 'execute': 'migrate-set-parameters','arguments': "
            "{ 'max-postcopy-bandwidth': 4096 } }")
    src.ask("{ 'execute': 'migrate-start-postcopy' }")
    src.wait_event("STOP")
    dst.wait_event("RESUME")
    wait_until(lambda: src.status() == "postcopy-active", 60, "postcopy-active")
    src.ask("{ 'execute': 'migrate-pause' }")
    wait_until(lambda: dst.status() == "postcopy-paused", 60, "destination paused")
    recover = tmp_path / "migsocket-recover"
    answer = dst.ask("{ 'execute': 'migrate-recover',  'id': 'recover-cmd', "
                     f" 'arguments': {{ 'uri': 'unix:{recover}' }} }}")
    assert answer.get("id") == "recover-cmd"
    wait_until(lambda: src.status() == "postcopy-paused", 60, "source paused")
    src.ask(f"{{ 'execute': 'migrate', 'arguments': {{ 'uri': 'unix:{recover}', "
            "'resume': true } }")
    src.ask("{ 'execute': 'migrate-set-parameters','arguments': "
            "{ 'max-postcopy-bandwidth': 0 } }")
    wait_until(lambda: src.status() == "completed", 300, "source completed")
    wait_until(lambda: dst.status() == "completed", 60, "destination completed")
    assert "postcopy-blocktime" in dst.ask("{ 'execute': 'query-migrate' }")["return"]
    src_proc.terminate()
    dst.ask("{ 'execute' : 'stop'}")
    # The reference's RAM check, over qtest: every page's first byte equals
    # the previous page's, or is one less, at most once.
    first = dst_qtest.memread(AB_START, 1)[0]
    drops = 0
    previous = first
    for address in range(AB_START + 4096, 100 << 20, 4096):
        byte = dst_qtest.memread(address, 1)[0]
        if byte != previous:
            assert (previous - byte) & 0xFF == 1 and drops == 0, hex(address)
            drops += 1
        previous = byte
    dst_proc.terminate()
