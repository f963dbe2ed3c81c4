"""Bad command lines: one clear line on stderr, non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LIVEMIG, QEMU

from livemig.guest import write_image
from livemig.lab import VmLauncher, VmmKind, wait_until

pytestmark = pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")


def _run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "-display", "none", "-nodefaults", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _bad_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    short = tmp / "short.img"
    short.write_bytes(b"\x90" * 100)
    unsigned = tmp / "unsigned.img"
    unsigned.write_bytes(bytes(512))
    small = tmp / "small.ram"
    small.write_bytes(bytes(4096))
    memfd = ["-object", "memory-backend-memfd,id=m,size=64M", "-machine", "memory-backend=m"]
    return [
        ("unknown option", ["-frobnicate"], "-frobnicate: invalid option"),
        ("missing argument", ["-m"], "-m: requires an argument"),
        ("bad -m", ["-m", "lots"], "-m lots"),
        ("missing drive", ["-drive", f"file={tmp / 'nope.img'},format=raw"],
         "No such file or directory"),
        ("short drive", ["-drive", f"file={short},format=raw"], "not bootable"),
        ("unsigned drive", ["-drive", f"file={unsigned},format=raw"], "0x55AA"),
        ("smp 2", ["-smp", "2"], "one vCPU"),
        ("bad accelerator", ["-machine", "accel=warp"], "invalid accelerator warp"),
        # QEMU's own words for both (read off QEMU 7.2):
        ("dirty ring not a power of two", ["-accel", "kvm,dirty-ring-size=3"],
         "-accel kvm,dirty-ring-size=3: dirty-ring-size must be a power of two."),
        ("dirty ring on tcg", ["-accel", "tcg,dirty-ring-size=4096"],
         "Property 'tcg-accel.dirty-ring-size' not found"),
        ("unknown device", ["-device", "e1000"], "e1000"),
        ("unknown chardev backend", ["-chardev", "bogus,id=x"], "bogus"),
        ("chardev without id", ["-chardev", "null"], "id"),
        ("qmp client to nowhere", ["-qmp", f"unix:{tmp / 'absent.sock'}"], "absent.sock"),
        # memory backends (QEMU's words where it has them)
        ("no such memory backend", ["-machine", "memory-backend=nope"],
         "Memory backend 'nope' not found"),
        ("-m against the backend's size", [*memfd, "-m", "32M"],
         "Machine memory size does not match the size of the memory backend"),
        ("backend without a size", ["-object", "memory-backend-memfd,id=m"],
         "property 'size' of memory-backend not set or zero"),
        ("file backend without a path", ["-object", "memory-backend-file,id=m,size=64M"],
         "mem-path"),
        ("unknown backend property", ["-object", "memory-backend-memfd,id=m,size=64M,x=1"],
         "Parameter 'x' is unexpected"),
        ("shared anonymous backend", ["-object", "memory-backend-ram,id=m,size=64M,share=on"],
         "memory-backend-memfd"),
        ("backend file that cannot be made",
         ["-object", f"memory-backend-file,id=m,size=64M,mem-path={tmp}/no/dir/ram",
          "-machine", "memory-backend=m"], "can't open backing store"),
        # QEMU 10's JSON -incoming (MigrationChannel), and cpr-transfer's options
        ("-incoming JSON that is not JSON", ["-incoming", "{nope"], "not a JSON object"),
        ("-incoming channel of no known transport",
         ["-incoming", '{"channel-type": "main", "addr": {"transport": "pigeon"}}'],
         "Parameter 'addr.transport' does not accept value 'pigeon'"),
        ("-incoming cpr channel over tcp",
         ["-incoming", '{"channel-type": "cpr", "addr": {"transport": "socket", "type": '
          '"inet", "host": "127.0.0.1", "port": "1"}}'], "must be a unix socket"),
        ("two main channels", ["-incoming", "defer", "-incoming", "defer"],
         "only one main channel"),
        ("aux-ram-share not a boolean", ["-machine", "aux-ram-share=maybe"], "aux-ram-share"),
        ("backend file shorter than the size",
         ["-object", f"memory-backend-file,id=m,size=64M,mem-path={small},share=on",
          "-machine", "memory-backend=m"], "does not match 'size' option"),
    ]


def test_bad_command_lines(tmp_path: Path) -> None:
    for label, args, needle in _bad_cases(tmp_path):
        result = _run(str(LIVEMIG), *args)
        assert result.returncode != 0, label
        assert "Traceback" not in result.stderr, (label, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (label, result.stderr)
        assert lines[0].startswith("livemig-system-x86_64: "), (label, lines[0])
        assert needle in lines[0], (label, lines[0])


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_qemu_refuses_the_same_lines(tmp_path: Path) -> None:
    """The ones QEMU also refuses (it has more devices and accelerators than we do)."""
    for label, args, _needle in _bad_cases(tmp_path):
        if label in ("unknown device", "smp 2", "short drive", "unsigned drive"):
            continue  # QEMU has e1000 and SMP, and boots anything through its BIOS
        if label == "two main channels":
            continue  # QEMU 7.2 takes the last -incoming; livemig says which one is extra
        if label == "shared anonymous backend":
            continue  # QEMU maps shared anonymous memory; livemig asks for a memfd
        assert _run(str(QEMU), *args).returncode != 0, label


def test_version_and_help() -> None:
    assert _run(str(LIVEMIG), "-version").stdout.startswith("QEMU emulator version 7.2.0")
    assert "-incoming" in _run(str(LIVEMIG), "-help").stdout


def test_no_drive_comes_up_halted(lab, vmm_any_accel) -> None:  # type: ignore[no-untyped-def]
    vm = lab.start(vmm_any_accel, "empty", boot=False)
    assert vm.cmd("query-status")["running"] is True
    assert vm.quit() == 0


def test_debug_exit(tmp_path: Path) -> None:
    """A guest that writes 0x21 to isa-debug-exit ends the VMM with (0x21 << 1) | 1."""
    image = tmp_path / "exit.img"
    # mov al, 0x21 ; out 0xf4, al ; hlt
    code = bytes([0xB0, 0x21, 0xE6, 0xF4, 0xF4])
    image.write_bytes(code + bytes(510 - len(code)) + b"\x55\xaa")
    args = ["-drive", f"file={image},format=raw",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    assert _run(str(LIVEMIG), "-accel", "tcg", *args).returncode == 0x43
    if QEMU is not None:
        assert _run(str(QEMU), "-accel", "tcg", *args).returncode == 0x43


def test_guest_image_matches_source(tmp_path: Path) -> None:
    out = write_image(tmp_path / "ab.img")
    assert out.stat().st_size == 512
    tool = Path(sys.executable).parent / "livemig"  # the venv's console script
    result = subprocess.run([str(tool), "guest", "ab", "--output", str(tmp_path / "cli.img")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli.img").read_bytes() == out.read_bytes()


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_halted_guest_does_not_burn_a_core(lab, accel: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """cli; hlt: the vCPU parks itself; the process stays (nearly) idle."""
    from conftest import KVM_PROBLEM

    from livemig.lab import VmmKind

    if accel == "kvm" and KVM_PROBLEM is not None:
        pytest.skip(f"KVM unusable: {KVM_PROBLEM}")
    image = tmp_path / "hlt.img"
    code = bytes([0xFA, 0xF4, 0xEB, 0xFD])  # cli; hlt; jmp back to hlt
    image.write_bytes(code + bytes(510 - len(code)) + b"\x55\xaa")
    vm = lab.start(VmmKind(f"livemig-{accel}", str(LIVEMIG), accel), "halt", boot=False,
                   extra=["-drive", f"file={image},format=raw"])
    assert vm.cmd("query-status")["running"] is True

    def idle() -> bool:
        """Half a second of this process's CPU time: under 0.15 s is idle."""
        before = _cpu_seconds(vm.process.pid)
        time.sleep(0.5)  # an observation window
        return _cpu_seconds(vm.process.pid) - before < 0.15

    # The job modules load once after the greeting (a burst of CPU); after
    # that a halted guest must leave the process idle. One that spins never is.
    wait_until(idle, 15, "the process to go idle")
    vm.cmd("system_reset")  # a reset wakes it, and it halts again
    vm.wait_event("RESET")
    assert vm.quit() == 0


def test_daemonize_and_pidfile(tmp_path: Path) -> None:
    pidfile, qmp = tmp_path / "vm.pid", tmp_path / "vm.qmp"
    result = subprocess.run([str(LIVEMIG), "-display", "none", "-nodefaults", "-daemonize",
                             "-pidfile", str(pidfile),
                             "-qmp", f"unix:{qmp},server=on,wait=off"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        assert os.path.exists(f"/proc/{pid}") and qmp.exists()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()  # removed on the way out


def test_debug_threads_names_the_threads_as_qemu_does(vmm_any_accel: VmmKind,
                                                      lab: VmLauncher) -> None:
    """-name …,debug-threads=on (the lab always passes it): the vCPU thread's
    OS name is QEMU's "CPU 0/TCG" on both VMMs."""
    vm = lab.start(vmm_any_accel, "named")
    vm.wait_serial(b"A", timeout=60)
    task = Path(f"/proc/{vm.process.pid}/task")

    def names() -> set[str]:
        out = set()
        for tid in task.iterdir():
            with contextlib.suppress(OSError):
                out.add((tid / "comm").read_text().strip())
        return out

    assert "CPU 0/TCG" in names()
