"""libvirt drives livemig (issue 14): a private libvirtd probes the binary
as it probes QEMU, and both answers are read the same way.

The daemon runs in system mode (the tests run as root), on a socket in
the test's own directory; its qemu driver keeps its state under /run and
/var, so the test skips when another libvirtd is already running."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KVM_PROBLEM, LIVEMIG, QEMU

from livemig.guest import AB_START, write_image
from livemig.lab import wait_until
from livemig.lab.checks import check_ab_ram

CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>150</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>{emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{image}'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


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

    def states(self) -> dict[str, str]:
        out = self.virsh("list", "--all")
        return {f[1]: " ".join(f[2:]) for f in (line.split() for line in out.splitlines()[2:])
                if len(f) >= 3}


class Domain:
    """A running libvirt domain seen as the RAM checks see a VM (pmem)."""

    def __init__(self, libvirt: Libvirt, name: str, workdir: Path) -> None:
        self.libvirt, self.name, self.workdir = libvirt, name, workdir

    def qmp(self, command: str, **arguments: object) -> object:
        text = self.libvirt.virsh("qemu-monitor-command", self.name,
                                  json.dumps({"execute": command, "arguments": arguments}))
        return json.loads(text)["return"]

    def pmem(self, address: int, length: int) -> bytes:
        path = self.workdir / f"{self.name}.pmem"
        self.qmp("pmemsave", val=address, size=length, filename=str(path))
        return path.read_bytes()


def _forget_cached_probe(emulator: str) -> None:
    """libvirt caches a binary's probe by its path and ctime; livemig's
    entry point is a script that does not change when livemig does."""
    for cached in CAPS_CACHE.glob("*.xml"):
        if f"<emulator>{emulator}</emulator>" in cached.read_text(errors="replace"):
            cached.unlink()


@pytest.fixture
def libvirt_lock() -> Iterator[None]:
    """One test's daemons at a time across pytest-xdist workers: they share
    /run/libvirt and the capability cache."""
    import fcntl

    with open(Path(os.environ.get("TMPDIR", "/tmp")) / "livemig-libvirt-tests.lock",
              "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reason = _missing()
        if reason is not None:
            pytest.skip(reason)
        yield


# Emulators run as root (livemig's interpreter lives where libvirt's own
# qemu user may not read) and log to a plain file (no virtlogd needed).
QEMU_CONF_EXTRA = b'\nuser = "root"\ngroup = "root"\nstdio_handler = "file"\n'


@pytest.fixture
def libvirt(tmp_path: Path, libvirt_lock: None) -> Iterator[Libvirt]:
    """A private libvirtd on the host's libvirt state (qemu.conf is amended
    for the test and restored at teardown)."""
    saved = QEMU_CONF.read_bytes() if QEMU_CONF.exists() else None
    QEMU_CONF.write_bytes((saved or b"") + QEMU_CONF_EXTRA)
    try:
        yield from _daemon(tmp_path, [])
    finally:
        if saved is not None:
            QEMU_CONF.write_bytes(saved)
        else:
            QEMU_CONF.unlink()


STATE_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
              "/var/log/libvirt")


def _namespaced(base: Path) -> list[str]:
    """The prefix that runs libvirtd in a mount namespace of its own, with
    private copies of libvirt's configuration and state directories: two
    such daemons are two hosts to libvirt (with their own host UUIDs)."""
    binds = []
    for path in STATE_DIRS:
        private = base / path.strip("/").replace("/", "_")
        if path == "/etc/libvirt":
            shutil.copytree(path, private)
            qemu_conf = private / "qemu.conf"
            qemu_conf.write_bytes(qemu_conf.read_bytes() + QEMU_CONF_EXTRA)
        else:
            private.mkdir()
        os.makedirs(path, exist_ok=True)
        binds.append(f"mount --bind {private} {path}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            " && ".join(binds) + ' && exec "$0" "$@"']


def _daemon(workdir: Path, prefix: list[str], host_uuid: str | None = None
            ) -> Iterator[Libvirt]:
    daemon = Libvirt(workdir)
    config = workdir / "libvirtd.conf"
    config.write_text(f'unix_sock_dir = "{workdir}"\nunix_sock_ro_perms = "0700"\n'
                      f'unix_sock_admin_perms = "0700"\nlog_outputs = '
                      f'"3:file:{workdir / "libvirtd.log"}"\n'
                      + (f'host_uuid = "{host_uuid}"\n' if host_uuid else ""))
    proc = subprocess.Popen([*prefix, "libvirtd", "--config", str(config), "--pid-file",
                             str(workdir / "libvirtd.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: daemon.socket.exists() or proc.poll() is not None, 30,
                   "libvirtd's socket")
        if proc.poll() is not None:
            pytest.skip(f"libvirtd did not start: {proc.stderr.read().decode()[-300:]}")
        yield daemon
    finally:
        for name, state in daemon.states().items() if proc.poll() is None else []:
            if state == "running" or state == "paused":
                subprocess.run(["virsh", "-c", daemon.uri, "destroy", name],
                               capture_output=True, timeout=60)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def two_hosts(tmp_path: Path, libvirt_lock: None) -> Iterator[tuple[Libvirt, Libvirt]]:
    """Two libvirt daemons, each in its own mount namespace: source and
    destination of a migration on one machine."""
    import contextlib
    import uuid

    with contextlib.ExitStack() as stack:
        hosts = []
        for name in ("src", "dst"):
            base = tmp_path / name
            base.mkdir()
            daemons = _daemon(base, _namespaced(base), str(uuid.uuid4()))
            hosts.append(next(daemons))
            stack.callback(lambda d=daemons: next(d, None))
        yield hosts[0], hosts[1]


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


def _emulators() -> list[pytest.param]:
    return [pytest.param(str(LIVEMIG), id="livemig",
                         marks=pytest.mark.skipif(LIVEMIG is None, reason="no livemig")),
            pytest.param(str(QEMU), id="qemu",
                         marks=pytest.mark.skipif(QEMU is None, reason="no QEMU"))]


def _create_walking_domain(libvirt: Libvirt, emulator: str, tmp_path: Path,
                           name: str) -> None:
    """virsh create the built-in guest as ``name`` and wait for its first
    whole walk of RAM (the serial's 'B')."""
    image, serial = tmp_path / "boot.img", tmp_path / "serial.log"
    write_image(image)
    xml = tmp_path / "domain.xml"
    xml.write_text(DOMAIN_XML.format(name=name, emulator=emulator, image=image,
                                     serial=serial))
    libvirt.virsh("create", str(xml))
    wait_until(lambda: serial.exists() and b"B" in serial.read_bytes(), 120,
               "the guest's first walk")


def _check_runs_and_is_consistent(libvirt: Libvirt, name: str, tmp_path: Path) -> None:
    """The domain ``name`` runs (its walk moves on), and once suspended its
    RAM holds the built-in guest's invariant."""
    assert libvirt.states()[name] == "running"
    domain = Domain(libvirt, name, tmp_path)
    first = domain.pmem(AB_START, 1)
    wait_until(lambda: domain.pmem(AB_START, 1) != first, 60, "the guest to run")
    libvirt.virsh("suspend", name)
    check = check_ab_ram(domain)  # type: ignore[arg-type]
    assert check.ok, check.describe()


@pytest.mark.parametrize("emulator", _emulators())
def test_virsh_create_save_restore_destroy(libvirt: Libvirt, emulator: str,
                                           tmp_path: Path) -> None:
    """The built-in guest as a libvirt domain (tcg): created, saved with
    domjobinfo watched, restored, still running with its RAM invariant."""
    _forget_cached_probe(emulator)
    name = f"lmtest{os.getpid()}"
    _create_walking_domain(libvirt, emulator, tmp_path, name)
    saved = tmp_path / "guest.save"
    save = subprocess.Popen(["virsh", "-c", libvirt.uri, "save", name, str(saved)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jobs = set()
    while save.poll() is None:
        info = subprocess.run(["virsh", "-c", libvirt.uri, "domjobinfo", name],
                              capture_output=True, text=True).stdout
        jobs.update(re.findall(r"Operation:\s+(\S+)", info))
    assert save.returncode == 0, save.stderr.read()  # type: ignore[union-attr]
    assert name not in libvirt.states()
    assert saved.stat().st_size > 1 << 20
    assert "Save" in jobs, jobs  # virsh domjobinfo saw the save as it ran
    libvirt.virsh("restore", str(saved))
    _check_runs_and_is_consistent(libvirt, name, tmp_path)
    if emulator == str(LIVEMIG):
        # No ACPI: livemig refuses virsh shutdown (QEMU's guest, with no
        # driver for the button, would ignore it) and the domain runs on.
        libvirt.virsh("resume", name)
        refused = subprocess.run(["virsh", "-c", libvirt.uri, "shutdown", name],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "no ACPI power button" in refused.stderr
        assert libvirt.states()[name] == "running"
    libvirt.virsh("destroy", name)
    assert name not in libvirt.states()


@pytest.mark.parametrize("emulator", _emulators())
def test_virsh_migrate_live_between_two_daemons(two_hosts: tuple[Libvirt, Libvirt],
                                                 emulator: str, tmp_path: Path) -> None:
    """virsh migrate --live from one libvirtd to another (each in its own
    mount namespace, so with its own state and host UUID): the guest runs on
    at the destination and its RAM invariant holds there."""
    src, dst = two_hosts
    name = f"lmmig{os.getpid()}"
    _create_walking_domain(src, emulator, tmp_path, name)
    # --unsafe: libvirt cannot tell that both "hosts" see the same disk file.
    with socket.socket() as probe:  # a free port for the migration stream
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src.virsh("migrate", "--live", "--unsafe", name,
              f"qemu+unix:///system?socket={dst.socket}",
              "--migrateuri", f"tcp://127.0.0.1:{port}", timeout=180)
    assert name not in src.states()
    _check_runs_and_is_consistent(dst, name, tmp_path)
    dst.virsh("destroy", name)
