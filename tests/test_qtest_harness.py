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


def _prefix(binary: str, tmp: Path) -> tuple[Path, Path, str]:
    pid = os.getpid()
    qtest_path, qmp_path = tmp / f"qtest-{pid}.sock", tmp / f"qtest-{pid}.qmp"
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


def _harness_start(binary: str, tmp: Path, test_args: str, lab: VmLauncher):  # type: ignore[no-untyped-def]
    qtest_path, qmp_path, command = _prefix(binary, tmp)
    qtest_sock, qmp_sock = qtest_listener(qtest_path), qtest_listener(qmp_path)
    command += test_args
    proc = lab.spawn(["sh", "-c", command], "harness")
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
