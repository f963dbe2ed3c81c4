"""libvirt drives livemig (issue 14): a private libvirtd probes the binary
as it probes QEMU, and both answers are read the same way.

The daemon runs in system mode (the tests run as root), on a socket in
the test's own directory; its qemu driver keeps its state under /run and
/var, so the test skips when another libvirtd is already running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KVM_PROBLEM, LIVEMIG, QEMU

from livemig.lab import wait_until

CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")


def _missing() -> str | None:
    for tool in ("libvirtd", "virsh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: libvirt-daemon-system, libvirt-clients)"
    if os.geteuid() != 0:
        return "a system-mode libvirtd needs root"
    running = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True)
    if running.stdout.strip():
        return f"another libvirtd is running (pid {running.stdout.split()[0]})"
    return None


class Libvirt:
    def __init__(self, workdir: Path) -> None:
        self.socket = workdir / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.socket}"

    def virsh(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"virsh {' '.join(args)}: {done.stderr.strip()}"
        return done.stdout


def _forget_cached_probe(emulator: str) -> None:
    """libvirt caches a binary's probe by its path and ctime; livemig's
    entry point is a script that does not change when livemig does."""
    for cached in CAPS_CACHE.glob("*.xml"):
        if f"<emulator>{emulator}</emulator>" in cached.read_text(errors="replace"):
            cached.unlink()


@pytest.fixture
def libvirt(tmp_path: Path) -> Iterator[Libvirt]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    daemon = Libvirt(tmp_path)
    config = tmp_path / "libvirtd.conf"
    config.write_text(f'unix_sock_dir = "{tmp_path}"\nunix_sock_ro_perms = "0700"\n'
                      f'unix_sock_admin_perms = "0700"\nlog_outputs = '
                      f'"3:file:{tmp_path / "libvirtd.log"}"\n')
    proc = subprocess.Popen(["libvirtd", "--config", str(config), "--pid-file",
                             str(tmp_path / "libvirtd.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: daemon.socket.exists() or proc.poll() is not None, 30,
                   "libvirtd's socket")
        if proc.poll() is not None:
            pytest.skip(f"libvirtd did not start: {proc.stderr.read().decode()[-300:]}")
        yield daemon
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")
def test_libvirt_probes_livemig_as_it_probes_qemu(libvirt: Libvirt) -> None:
    """domcapabilities for each accelerator, livemig and QEMU side by side:
    the machine, the accelerators, and the flags libvirt derived from the
    QMP schema and the migration capabilities."""
    emulators = [str(LIVEMIG)] + ([str(QEMU)] if QEMU else [])
    virttypes = ["qemu"] + (["kvm"] if KVM_PROBLEM is None else [])
    for emulator in emulators:
        _forget_cached_probe(emulator)
        for virttype in virttypes:
            xml = libvirt.virsh("domcapabilities", "--emulatorbin", emulator,
                                "--virttype", virttype)
            assert f"<domain>{virttype}</domain>" in xml
            assert "<machine>pc-i440fx-7.2</machine>" in xml, (emulator, xml[:400])
            assert "<arch>x86_64</arch>" in xml
            if emulator == str(LIVEMIG):
                assert "<vcpu max='1'/>" in xml
    cached = [path.read_text() for path in CAPS_CACHE.glob("*.xml")
              if f"<emulator>{LIVEMIG}</emulator>" in path.read_text(errors="replace")]
    assert len(cached) == 1
    flags = set(re.findall(r"<flag name='([^']+)'/>", cached[0]))
    assert {"tcg", "calc-dirty-rate", "query-dirty-rate", "isa-serial"} <= flags
    assert ("kvm" in flags) == (KVM_PROBLEM is None)
    assert "migrate-rdma" in flags  # from query-migrate-capabilities (rdma-pin-all)
    machines = re.findall(r"<machine type='(\w+)' name='([^']+)'", cached[0])
    assert ("tcg", "pc-i440fx-7.2") in machines
