"""Start and drive any QEMU-compatible VMM (livemig or QEMU) from outside.

This module knows VMMs only by their command line and QMP, the way an
orchestration tool or a test harness does; it never imports livemig's
machine or migration code. Tests, the demo and the benchmarks all start
their VMs through :class:`VmLauncher`.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import LivemigError

T = TypeVar("T")

LIVEMIG_BINARY = "livemig-system-x86_64"
QEMU_BINARY = "qemu-system-x86_64"


class LabError(LivemigError):
    """A VM under test misbehaved (did not start, timed out, …)."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def find_binary(name: str) -> str | None:
    """A VMM binary on PATH or beside the running Python (a venv's bin/)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


@dataclass(frozen=True)
class VmmKind:
    """Which VMM and which accelerator: the axis scenario tests run along."""

    label: str
    binary: str
    accel: str
    accel_props: str = ""  # e.g. "dirty-ring-size=4096": then -accel ACCEL,PROPS

    @property
    def is_qemu(self) -> bool:
        return Path(self.binary).name.startswith("qemu")

    def accel_args(self) -> list[str]:
        if self.accel_props:
            return ["-accel", f"{self.accel},{self.accel_props}"]
        return ["-machine", f"accel={self.accel}"]

    def with_accel_props(self, props: str) -> VmmKind:
        return VmmKind(self.label, self.binary, self.accel, props)


def kvm_usable() -> str | None:
    """None if /dev/kvm can create a VM, else the reason it cannot."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return f"/dev/kvm: {err.strerror}"
    try:
        vm = fcntl.ioctl(fd, 0xAE01, 0)  # KVM_CREATE_VM, include/uapi/linux/kvm.h
        os.close(vm)
        return None
    except OSError as err:
        return f"KVM_CREATE_VM failed: {err.strerror}"
    finally:
        os.close(fd)


@dataclass
class Vm:
    """One running VMM process with a QMP connection and a serial file."""

    kind: VmmKind
    process: subprocess.Popen[bytes]
    workdir: Path
    name: str
    qmp_path: Path
    serial_path: Path
    stderr_path: Path
    qmp: QEMUMonitorProtocol = field(init=False)
    events: list[dict[str, Any]] = field(default_factory=list)

    # --- QMP ---------------------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> None:
        wait_until(lambda: self.qmp_path.exists() or self.process.poll() is not None,
                   timeout, f"{self.name}'s QMP socket")
        if self.process.poll() is not None:
            raise LabError(f"{self.name} exited with {self.process.returncode}: "
                           f"{self.stderr_text().strip()}")
        deadline = time.monotonic() + timeout
        while True:
            # The socket file appears at bind(), a moment before listen().
            self.qmp = QEMUMonitorProtocol(str(self.qmp_path))
            self.qmp.settimeout(60.0)
            try:
                self.qmp.connect(negotiate=True)
                return
            except ConnectError as err:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise LabError(f"{self.name}: QMP connection failed: {err}") from err
                time.sleep(0.05)

    def cmd(self, name: str, **args: Any) -> Any:
        """Run a command; raise LabError on a QMP error."""
        response = self.raw(name, args or None)
        if "error" in response:
            raise LabError(f"{self.name}: {name}: {response['error']['class']}: "
                           f"{response['error']['desc']}")
        return response["return"]

    def raw(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a command; return QMP's whole answer (return or error)."""
        try:
            response = self.qmp.cmd_raw(name, args)
        except ExecInterruptedError as err:
            raise LabError(f"{self.name}: {name}: the connection was lost"
                           f"{self._exit_story()}") from err
        self._collect()
        return response

    def _collect(self) -> None:
        self.events.extend(self.qmp.get_events(wait=False))

    def wait_event(self, event: str, timeout: float = 30.0,
                   match: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The first event named ``event`` (earlier ones included), consumed."""
        deadline = time.monotonic() + timeout
        while True:
            self._collect()
            for i, ev in enumerate(self.events):
                if ev["event"] == event and (match is None or match(ev)):
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"{self.name}: no {event} event within {timeout:.0f}s")
            try:
                self.events.extend(self.qmp.get_events(wait=min(remaining, 0.5)))
            except TimeoutError:
                pass

    def status(self) -> str:
        return str(self.cmd("query-status")["status"])

    # --- guest observation ---------------------------------------------------------
    def serial(self) -> bytes:
        try:
            return self.serial_path.read_bytes()
        except FileNotFoundError:
            return b""

    def wait_serial(self, needle: bytes, timeout: float = 60.0, count: int = 1) -> bytes:
        return wait_until(lambda: self.serial().count(needle) >= count and self.serial(),
                          timeout, f"{count}x {needle!r} on {self.name}'s serial")

    def pmem(self, address: int, size: int) -> bytes:
        """Guest-physical bytes via pmemsave (works on any QEMU-compatible VMM)."""
        out = self.workdir / f"{self.name}-pmem.bin"
        self.cmd("pmemsave", val=address, size=size, filename=str(out))
        data = out.read_bytes()
        out.unlink()
        return data

    def _exit_story(self) -> str:
        """Why a VMM went away, for an error message: exit code and stderr's tail."""
        try:
            code = self.process.wait(2)
        except subprocess.TimeoutExpired:
            return " (the process is still running)"
        tail = self.stderr_text().strip()[-2000:]
        return f" (it exited with {code}){': ' + tail if tail else ''}"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- ending ------------------------------------------------------------------
    def quit(self, timeout: float = 30.0) -> int:
        try:
            self.cmd("quit")
        except Exception:
            pass
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as err:
            raise LabError(f"{self.name} did not exit within {timeout:.0f}s") from err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        try:
            self.qmp.close()
        except Exception:
            pass


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def incoming_uri(workdir: Path, transport: str, name: str = "migration") -> str:
    """What a destination listens on: a unix socket in ``workdir``, or TCP
    on a port the destination picks itself (:func:`source_uri` reads it)."""
    if transport == "tcp":
        return "tcp:127.0.0.1:0"
    if transport == "unix":
        return f"unix:{workdir / (name + '.sock')}"
    raise LabError(f"unknown transport {transport} (unix or tcp)")


def source_uri(dst: Vm, incoming: str) -> str:
    """Where a source migrates to reach ``dst`` listening on ``incoming``:
    for TCP port 0, the port it bound (query-migrate's socket-address, on
    livemig and QEMU alike)."""
    if not (incoming.startswith("tcp:") and incoming.endswith(":0")):
        return incoming
    address = wait_until(lambda: dst.cmd("query-migrate").get("socket-address"), 30,
                         "the destination to listen")
    return f"tcp:127.0.0.1:{address[0]['port']}"


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process that started it
    dies, so a lab killed before its cleanup leaves no VM running. (The
    signal follows the starting thread; the lab starts VMs from the thread
    that closes them.)"""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class VmLauncher:
    """Starts VMs in a work directory and kills every one of them on close()."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="livemig-lab-"))
        self.vms: list[Vm] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def boot_image(self) -> Path:
        from ..guest import write_image

        path = self.workdir / "bootsect"
        if not path.exists():
            write_image(path)
        return path

    def argv(self, kind: VmmKind, name: str, ram: str = "150M", extra: list[str] | None = None,
             boot: bool = True, qmp: bool = True, image: Path | None = None) -> list[str]:
        """The command line of a VM; ``image``: a boot image other than the built-in guest."""
        argv = [kind.binary, *kind.accel_args(), "-m", ram, "-display", "none",
                "-nodefaults", "-name", f"{name},debug-threads=on",
                "-serial", f"file:{self.workdir / (name + '.serial')}"]
        if qmp:
            argv += ["-qmp", f"unix:{self.workdir / (name + '.qmp')},server=on,wait=off"]
        if boot:
            argv += ["-drive", f"file={image or self.boot_image()},format=raw"]
        return argv + (extra or [])

    def spawn(self, argv: list[str], name: str = "proc",
              env: dict[str, str] | None = None,
              pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        """Start any process, tracked for cleanup; stderr goes to NAME.stderr;
        ``pass_fds``: descriptors it inherits (as libvirt hands them over)."""
        err = open(self.workdir / f"{name}.stderr", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, preexec_fn=_die_with_parent,
                                pass_fds=pass_fds)
        err.close()
        self.processes.append(proc)
        return proc

    def start(self, kind: VmmKind, name: str, ram: str = "150M",
              extra: list[str] | None = None, boot: bool = True, connect: bool = True,
              env: dict[str, str] | None = None, image: Path | None = None) -> Vm:
        """Start a VM; ``env``: variables added to this process's environment;
        ``image``: a boot image other than the built-in guest."""
        for suffix in (".qmp", ".serial"):
            (self.workdir / (name + suffix)).unlink(missing_ok=True)
        proc = self.spawn(self.argv(kind, name, ram, extra, boot, image=image), name,
                          env={**os.environ, **env} if env else None)
        vm = Vm(kind, proc, self.workdir, name, self.workdir / (name + ".qmp"),
                self.workdir / (name + ".serial"), self.workdir / f"{name}.stderr")
        self.vms.append(vm)
        if connect:
            vm.connect()
        return vm

    def close(self) -> None:
        for vm in self.vms:
            vm.kill()
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def set_mapped_ram(vm: Vm, threads: int = 0) -> None:
    """Over QMP: the mapped-ram capability, and with ``threads`` multifd
    with that many channels (threads writing or reading the file)."""
    caps = [{"capability": "mapped-ram", "state": True}]
    if threads:
        caps.append({"capability": "multifd", "state": True})
    vm.cmd("migrate-set-capabilities", capabilities=caps)
    if threads:
        vm.cmd("migrate-set-parameters", **{"multifd-channels": threads})


def qtest_listener(path: Path) -> socket.socket:
    """A listening unix socket, as QEMU's qtest harness makes before starting a VM."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


class QtestClient:
    """The qtest line protocol, client side."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rwb", buffering=0)
        self._sock = sock

    def command(self, line: str) -> str:
        self._file.write(line.encode() + b"\n")
        while True:
            answer = self._file.readline().decode().strip()
            if not answer.startswith("IRQ"):
                return answer

    def memread(self, address: int, size: int) -> bytes:
        answer = self.command(f"b64read {address:#x} {size}")
        if not answer.startswith("OK "):
            raise LabError(f"qtest b64read failed: {answer}")
        return base64.b64decode(answer[3:])

    def close(self) -> None:
        self._file.close()
        self._sock.close()
