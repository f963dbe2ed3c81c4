"""``livemig-system-x86_64``: a drop-in for ``qemu-system-x86_64``'s subset.

Builds chardevs, the machine, the QMP and qtest servers from the command
line, then waits on the main thread until QMP ``quit``, a signal, or the
guest ends the process. Errors at startup are one line on stderr and exit
status 1, as with QEMU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from .. import QEMU_COMPAT_VERSION, __version__, fdsets, one_numpy_thread
from .. import chardev as chardevs
from ..errors import ConfigError, LivemigError
from ..logs import get_logger
from ..machine import Machine, MachineConfig
from ..machine.inventory import BlockNode, Device, Inventory
from ..migration import MigrationManager
from ..objects import ObjectRegistry
from ..qmp import QmpServer
from ..qmp.jsonstream import RECURSION_NEEDED
from .options import USAGE, SystemOptions, block_file, parse

if TYPE_CHECKING:
    from ..memory.backing import BackendSpec
    from ..migration.cpr import ReceivedCpr
    from .options import DriveOption

PROG = "livemig-system-x86_64"
BOOT_SECTOR = 512
BOOT_SIGNATURE = b"\x55\xaa"

log = get_logger("livemig")


def read_boot_sector(path: str) -> bytes:
    """The first 512 bytes of a raw drive image, which must end in 0x55AA."""
    try:
        with open(path, "rb") as drive:
            sector = drive.read(BOOT_SECTOR)
    except OSError as err:
        raise ConfigError(f"-drive file={path}: Could not open '{path}': {err.strerror}") from err
    if len(sector) < BOOT_SECTOR:
        raise ConfigError(f"-drive file={path}: not bootable: {len(sector)} bytes, "
                          f"a boot sector needs {BOOT_SECTOR}")
    if sector[510:512] != BOOT_SIGNATURE:
        raise ConfigError(f"-drive file={path}: not bootable: no 0x55AA boot signature")
    return sector


class EventRelay:
    """The machine's event sink; forwards to the QMP server once it exists."""

    def __init__(self) -> None:
        self.target: QmpServer | None = None

    def __call__(self, event: str, data: dict[str, Any] | None) -> None:
        if self.target is not None:
            self.target.emit(event, data)


class System:
    """Everything one livemig-system-x86_64 process runs."""

    def __init__(self, opts: SystemOptions) -> None:
        self.opts = opts
        self.chardevs: dict[str, chardevs.Chardev] = {}
        self.relay = EventRelay()
        self._qtest_log: IO[str] | None = None
        for set_id, fd, opaque in opts.fdsets:
            try:
                fdsets.add(set_id, fd, opaque)
            except fdsets.FdsetError as err:
                raise ConfigError(str(err)) from err
        for spec in opts.chardevs:
            self._add_chardev(spec)
        serial = self._serial_chardev()
        boot = next((d for d in opts.drives if d.boot), None)
        self.objects = ObjectRegistry()
        for qom_type, props, text in opts.objects:
            try:
                self.objects.add(qom_type, props)
            except LivemigError as err:
                raise ConfigError(f"-object {text}: {err}") from err
        backend = self._memory_backend()
        self._cpr = self._receive_cpr(backend) if opts.incoming_cpr is not None else None
        try:
            self._build(opts, backend, serial, boot)
        except BaseException:
            if self._cpr is not None:
                self._cpr.close()  # the source sees the channel close, and goes on
            raise

    def _build(self, opts: SystemOptions, backend: BackendSpec | None,
               serial: chardevs.Chardev | None, boot: DriveOption | None) -> None:
        config = MachineConfig(
            ram_size=backend.size if backend is not None else opts.ram_size,
            ram_backend=backend,
            accelerators=opts.accelerators,
            boot_sector=read_boot_sector(boot.path) if boot else None,
            name=opts.name,
            start_paused=opts.start_paused or opts.machine_none,
            incoming=opts.incoming is not None,
            debug_exit=opts.debug_exit,
            no_reboot=opts.no_reboot,
            uuid=opts.uuid,
            kvm_dirty_ring_size=opts.kvm_dirty_ring_size,
            mem_prealloc=opts.mem_prealloc,
            cpu_model=opts.cpu_model,
        )
        self.machine = Machine(config, serial.write if serial else (lambda _b: None),
                               self.relay, self._exit_now)
        if opts.cpu_model == "host" and self.machine.accel_name != "kvm":
            self.machine.close()
            raise ConfigError("CPU model 'host' requires KVM or HVF")  # QEMU's words
        self.qmp = QmpServer(self.machine)
        self.relay.target = self.qmp
        self.migration = MigrationManager(self.machine, self.relay, self._incoming_failed,
                                          self.objects)
        self.qmp.migration = self.migration
        self.qmp.objects = self.objects
        if opts.incoming is not None:
            self.migration.listen(opts.incoming, start=False)
        # Chardevs are opened now (bind/connect errors are start-up errors)
        # but served only from run(), once the run state is settled: a client
        # must never see the transient "prelaunch" of a VM that autostarts.
        self._servers: list[tuple[chardevs.Chardev, Callable[[chardevs.Stream], None]]] = []
        self._open_monitors()
        self._open_qtest()
        self.qmp.inventory = self._inventory(opts)

    def _inventory(self, opts: SystemOptions) -> Inventory:
        """What query-block, query-chardev and qom-list report."""
        inventory = Inventory()
        inventory.devices = [Device(ident, driver, drive)
                             for ident, driver, drive in opts.devices]
        for name, node in opts.blockdevs.items():
            child = node.get("file") if node["driver"] == "raw" else None
            inventory.block_nodes.append(BlockNode(name, node["driver"],
                                                   block_file(opts, name), child))
        for ident, index in opts.drive_ids.items():
            inventory.block_nodes.append(BlockNode(ident, "raw", opts.drives[index].path,
                                                   None))
        inventory.chardevs = {label: dev.filename() for label, dev in self.chardevs.items()}
        return inventory

    # --- construction helpers --------------------------------------------------
    def _receive_cpr(self, backend: BackendSpec | None) -> ReceivedCpr:
        """cpr-transfer: wait for the old process on the cpr channel and
        take its guest RAM's descriptor for ``backend`` (migration/cpr.py)."""
        if self.opts.incoming is None:
            raise ConfigError("-incoming: a cpr channel needs a main channel too "
                              "(-incoming URI)")
        if backend is None or backend.anonymous:
            raise ConfigError("cpr-transfer: guest RAM must be a memory-backend-memfd or "
                              "memory-backend-file with share=on (-machine "
                              "memory-backend=ID), with the source's id")
        from ..migration.cpr import RAM_FD, receive_state
        from ..migration.uri import parse_uri

        # The source's guest runs on until this process is ready: load what
        # it will need while the source has yet to connect.
        threading.Thread(target=_preimport, args=(self.opts.accelerators,), daemon=True,
                         name="cpr/warm-up").start()
        received = receive_state(parse_uri(self.opts.incoming_cpr or ""))
        fd = received.take(RAM_FD + backend.id)
        if fd is None:
            names = ", ".join(received.fds) or "nothing"
            received.close()
            raise ConfigError(f"cpr-transfer: the source handed over no memory for backend "
                              f"'{backend.id}' (it sent {names})")
        backend.inherited = fd
        return received

    def _memory_backend(self) -> BackendSpec | None:
        """-machine memory-backend=ID: that object's settings; its size is
        the RAM size, and an -m that says otherwise is an error (QEMU's)."""
        ident = self.opts.memory_backend
        if ident is None:
            return None
        from ..memory.backing import BackendSpec
        obj = self.objects.get(ident)
        if obj is None:
            raise ConfigError(f"Memory backend '{ident}' not found")
        spec = getattr(obj, "spec", None)
        if not isinstance(spec, BackendSpec):
            raise ConfigError(f"Memory backend '{ident}' not found: it is not a "
                              "memory-backend-* object")
        if self.opts.ram_size_given and self.opts.ram_size != spec.size:
            raise ConfigError("Machine memory size does not match the size of the memory "
                              f"backend ({self.opts.ram_size} against {spec.size} bytes)")
        obj.in_use = True  # type: ignore[attr-defined]
        return spec

    def _add_chardev(self, spec: dict[str, str]) -> chardevs.Chardev:
        if spec["id"] in self.chardevs:
            raise ConfigError(f"chardev: duplicate id '{spec['id']}'")
        dev = chardevs.create(spec)
        self.chardevs[spec["id"]] = dev
        return dev

    def _short_chardev(self, text: str, implicit_id: str) -> chardevs.Chardev:
        if text.startswith("chardev:"):
            ref = text[len("chardev:"):]
            if ref not in self.chardevs:
                raise ConfigError(f"chardev '{ref}' not found")
            return self.chardevs[ref]
        return self._add_chardev(chardevs.options_from_short(text, implicit_id))

    def _serial_chardev(self) -> chardevs.Chardev | None:
        specs = [s for s in self.opts.serial if s != "none"]
        if not specs:
            return None
        return self._short_chardev(specs[0], "serial0")

    def _open_monitors(self) -> None:
        for index, text in enumerate(self.opts.qmp):
            self._servers.append((self._short_chardev(text, f"compat_monitor{index}"),
                                  self.qmp.attach))
        for ref in self.opts.monitors:
            if ref not in self.chardevs:
                raise ConfigError(f"-mon: chardev '{ref}' not found")
            self._servers.append((self.chardevs[ref], self.qmp.attach))

    def _open_qtest(self) -> None:
        if self.opts.qtest is None:
            return
        if self.opts.qtest_log:
            self._qtest_log = open(self.opts.qtest_log, "w")
        from ..qtest import QtestServer
        server = QtestServer(self.machine, self._qtest_log)
        self._servers.append((self._short_chardev(self.opts.qtest, "qtest"), server.attach))

    # --- running ------------------------------------------------------------------
    def _answer_cpr(self, cpr: ReceivedCpr) -> None:
        """cpr-transfer: the main channel listens and the engine is built, so
        the source may now stop its guest and send the state: tell it."""
        self.machine.wait_engine()
        try:
            cpr.accept()
        except LivemigError as err:
            self._incoming_failed(str(err))  # the source is gone: nothing will come

    def _incoming_failed(self, message: str) -> None:
        """QEMU ends the destination process when a load fails."""
        print(f"{PROG}: {message}", file=sys.stderr)
        self.machine.request_exit(1)

    def _exit_now(self, code: int) -> None:
        """isa-debug-exit: end the process at once with the guest's code."""
        os._exit(code)

    def handle_signals(self) -> None:
        """SIGTERM, SIGINT and SIGHUP shut the machine down in order, as in
        QEMU. Installed before anyone can know our pid (the pidfile, the
        -daemonize parent's exit), so no signal finds the default action."""
        stop = self.machine.shutdown_requested

        def on_signal(signum: int, _frame: object) -> None:
            if not stop.is_set():
                print(f"{PROG}: terminating on signal {signum}", file=sys.stderr)
                self.machine.request_shutdown("host-signal")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_signal)

    def run(self) -> int:
        # Monitors first: a client waiting to connect gets its greeting
        # before the incoming job's modules and the tcg engine load (the
        # engine on a thread of its own, last, so the two do not contend
        # for the GIL). Commands wait for the dispatch lock until all is up.
        with self.qmp.dispatch_lock:
            for dev, handler in self._servers:
                dev.serve(handler)
            self.machine.start(load_engine=False)
            self.migration.start_incoming()
            self.machine.load_engine()
        if self._cpr is not None:
            self._answer_cpr(self._cpr)
        stop = self.machine.shutdown_requested
        while not stop.wait(0.5):
            pass
        # Let a command in flight (quit) finish and send its answer first.
        with self.qmp.dispatch_lock:
            pass
        self.qmp.flush()
        return self.machine.exit_code

    def close(self) -> None:
        if self._cpr is not None:
            self._cpr.close()
        self.migration.close()
        self.machine.close()
        for dev in self.chardevs.values():
            dev.close()


def _preimport(accelerators: list[str]) -> None:
    """Import the incoming job's modules and the tcg engine's (a cpr-transfer
    destination's wait); a failure here shows again where they are used."""
    import importlib

    names = ["livemig.migration.incoming"]
    if "tcg" in accelerators:
        names.append("livemig.accel.tcg_unicorn")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            log.debug("could not import %s ahead of time", name, exc_info=True)


def _daemonize() -> None:
    """Fork; the parent exits once the child is up, as QEMU's -daemonize."""
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        ok = os.read(read_fd, 1)
        os._exit(0 if ok == b"1" else 1)
    os.close(read_fd)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    _DAEMON_PIPE.append(write_fd)


_DAEMON_PIPE: list[int] = []


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    one_numpy_thread()  # before anything loads numpy (the warm-up, a job)
    # QMP accepts JSON nested as deep as QEMU does (jsonstream.MAX_NESTING).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_NEEDED))
    try:
        opts = parse(args)
    except LivemigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    if opts.show_help:
        print(USAGE, end="")
        return 0
    if opts.show_version:
        major, minor, micro = QEMU_COMPAT_VERSION
        print(f"QEMU emulator version {major}.{minor}.{micro} (livemig {__version__})")
        return 0
    if opts.daemonize:
        _daemonize()
    if opts.debug_threads:
        from .. import thread_names
        thread_names.install()
    try:
        system = System(opts)
        system.handle_signals()
        if opts.pidfile:
            with open(opts.pidfile, "w") as pidfile:
                pidfile.write(f"{os.getpid()}\n")
    except LivemigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    if _DAEMON_PIPE:
        # Start-up succeeded: detach stderr too (errors so far went to the
        # caller), then let the parent exit 0.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        os.write(_DAEMON_PIPE[0], b"1")
        os.close(_DAEMON_PIPE[0])
    try:
        return system.run()
    finally:
        system.close()
        if opts.pidfile:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(opts.pidfile)


if __name__ == "__main__":
    threading.current_thread().name = "main"
    sys.exit(main())
