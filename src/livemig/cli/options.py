"""Parse the QEMU-compatible command line into a :class:`SystemOptions`.

Only the subset livemig implements is accepted; anything else is refused
with one line that names the option, as QEMU does.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from ..chardev.spec import options_from_words, parse_bool, split_options
from ..errors import ConfigError
from ..machine import DEFAULT_RAM, DebugExitConfig
from ..machine.command_line import DEVICE_PROPERTIES, PARAMETERS
from ..sizes import parse_size

# Options that take an argument, and those that do not.
WITH_ARG = {
    "machine", "M", "accel", "m", "smp", "name", "serial", "drive", "hda", "display",
    "qmp", "chardev", "mon", "monitor", "qtest", "qtest-log", "incoming", "pidfile",
    "device", "vga", "cpu", "uuid", "object", "blockdev", "add-fd", "overcommit", "rtc",
    "boot", "audiodev", "msg",
}
FLAGS = {"S", "nodefaults", "enable-kvm", "daemonize", "nographic", "no-reboot",
         "no-shutdown", "version", "help", "h", "mem-prealloc", "no-user-config",
         "no-acpi", "usb"}

MACHINE_TYPES = ("pc", "q35", "pc-i440fx", "pc-q35")
ACCELERATORS = ("kvm", "tcg", "qtest")
CPU_MODELS = ("qemu64", "qemu32", "host", "max", "base")
MAX_RAM = 1 << 40


class DriveOption(NamedTuple):
    path: str
    boot: bool


class SystemOptions:
    """What the command line asked for; :func:`parse` fills one in. (A plain
    class: a dataclass this size costs ~3 ms of start-up to create.)"""

    def __init__(self) -> None:
        self.ram_size: int = DEFAULT_RAM
        self.ram_size_given = False           # -m appeared (else a memory backend sets it)
        self.memory_backend: str | None = None  # -machine memory-backend=ID
        self.machine_accel: list[str] | None = None
        self.accel_options: list[str] = []
        self.name: str | None = None
        self.debug_threads = False            # -name …,debug-threads=on: OS thread names
        self.serial: list[str] = []
        self.drives: list[DriveOption] = []
        self.chardevs: list[dict[str, str]] = []
        self.monitors: list[str] = []         # chardev ids (QMP)
        self.qmp: list[str] = []              # short chardev specs
        self.qtest: str | None = None
        self.qtest_log: str | None = None
        self.incoming: str | None = None      # the main channel's URI, or defer
        self.incoming_cpr: str | None = None  # cpr-transfer: the cpr channel's URI
        self.pidfile: str | None = None
        self.daemonize = False
        self.start_paused = False
        self.nodefaults = False
        # -machine none: QEMU's empty machine, which libvirt starts to probe
        # a binary. livemig builds its one machine and never runs its vCPU.
        self.machine_none = False
        self.no_reboot = False
        self.mem_prealloc = False
        self.debug_exit: DebugExitConfig | None = None
        self.show_version = False
        self.show_help = False
        self.cpu_model = "qemu64"
        self.uuid: str | None = None
        self.kvm_dirty_ring_size = 0      # -accel kvm,dirty-ring-size=N
        # -blockdev nodes by node-name; -drive ids (index into drives);
        # -device ide-hd drive references with their bootindex
        self.blockdevs: dict[str, dict[str, Any]] = {}
        self.drive_ids: dict[str, int] = {}
        self.ide_disks: list[tuple[str, int]] = []
        self.devices: list[tuple[str, str, str | None]] = []  # -device id, driver, drive
        self.fdsets: list[tuple[int, int, str | None]] = []  # -add-fd set, fd, opaque
        # -object TYPE,id=ID,...: (qom-type, properties, the option's text)
        self.objects: list[tuple[str, dict[str, Any], str]] = []

    @property
    def accelerators(self) -> list[str]:
        """QEMU's rule: -accel/-enable-kvm if given, else -machine accel=, else tcg."""
        if self.accel_options:
            return self.accel_options
        if self.machine_accel:
            return self.machine_accel
        return ["tcg"]


def _opts(text: str, implied: str | None, option: str) -> dict[str, str]:
    words = split_options(text)
    opts: dict[str, str] = {}
    if implied is not None and words and words[0] and "=" not in words[0]:
        opts[implied] = words.pop(0)
    opts.update(options_from_words(words))
    return opts


def _reject_unknown(opts: dict[str, str], allowed: frozenset[str], option: str) -> None:
    for key in opts:
        if key not in allowed:
            raise ConfigError(f"-{option}: Invalid parameter '{key}'")


def _accel_list(text: str, option: str) -> list[str]:
    names = [n for n in text.split(":") if n]
    for name in names:
        if name not in ACCELERATORS:
            raise ConfigError(f"-{option}: invalid accelerator {name}")
    if not names:
        raise ConfigError(f"-{option}: no accelerator given")
    return names


def _machine(o: SystemOptions, text: str) -> None:
    opts = _opts(text, "type", "machine")
    _reject_unknown(opts, PARAMETERS["machine"], "machine")
    mtype = opts.get("type")
    if mtype == "none":
        o.machine_none = True
    elif mtype is not None and not mtype.startswith(MACHINE_TYPES):
        raise ConfigError(f"-machine {text}: unsupported machine type '{mtype}' "
                          "(livemig provides one PC-like machine: use pc or q35)")
    if "accel" in opts:
        o.machine_accel = _accel_list(opts["accel"], "machine")
    if "memory-backend" in opts:
        o.memory_backend = opts["memory-backend"]
    if "aux-ram-share" in opts:
        # QEMU 10 shares RAM outside memory backends (ROMs, video) for
        # cpr-transfer; livemig has none, so the value is checked and unused.
        parse_bool("aux-ram-share", opts["aux-ram-share"])


def _incoming(o: SystemOptions, text: str) -> None:
    """-incoming URI|defer, or QEMU 10's JSON MigrationChannel; given twice
    for cpr-transfer: the main channel and the cpr channel."""
    from ..errors import LivemigError
    from ..migration.uri import channel_uri, cpr_uri

    kind, uri = "main", text
    if text.lstrip().startswith("{"):
        import json
        try:
            kind, uri = channel_uri(json.loads(text))
        except (ValueError, RecursionError) as err:
            raise ConfigError(f"-incoming {text}: not a JSON object: {err}") from err
        except LivemigError as err:
            raise ConfigError(f"-incoming {text}: {err}") from err
    if kind == "cpr":
        if o.incoming_cpr is not None:
            raise ConfigError("-incoming: only one cpr channel may be given")
        try:
            cpr_uri(uri)
        except LivemigError as err:
            raise ConfigError(f"-incoming {text}: {err}") from err
        o.incoming_cpr = uri
        return
    if o.incoming is not None:
        raise ConfigError("-incoming: only one main channel may be given (a second "
                          "-incoming is for a cpr channel)")
    o.incoming = uri


def _accel(o: SystemOptions, text: str) -> None:
    opts = _opts(text, "accel", "accel")
    _reject_unknown(opts, PARAMETERS["accel"], "accel")
    names = _accel_list(opts.get("accel", ""), "accel")
    if "dirty-ring-size" in opts:
        if names != ["kvm"]:
            raise ConfigError(f"-accel {text}: Property '{names[0]}-accel.dirty-ring-size' "
                              "not found")
        try:
            size = int(opts["dirty-ring-size"], 0)
        except ValueError as err:
            raise ConfigError(f"-accel {text}: Parameter 'dirty-ring-size' expects "
                              "uint32") from err
        if not 0 <= size < 1 << 32:
            raise ConfigError(f"-accel {text}: Parameter 'dirty-ring-size' expects uint32")
        if size & (size - 1):
            raise ConfigError(f"-accel {text}: dirty-ring-size must be a power of two.")
        o.kvm_dirty_ring_size = size
    o.accel_options.extend(names)


def _memory(o: SystemOptions, text: str) -> None:
    opts = _opts(text, "size", "m")
    _reject_unknown(opts, PARAMETERS["memory"], "m")
    try:
        size = parse_size(opts.get("size", ""), default_unit=1 << 20)
    except ConfigError as err:
        raise ConfigError(f"-m {text}: {err}") from err
    if size == 0:
        size = DEFAULT_RAM  # QEMU reads -m 0 as "the default"
    if size > MAX_RAM:
        raise ConfigError(f"-m {text}: at most {MAX_RAM >> 30} GiB of RAM is supported")
    o.ram_size = (size + 8191) // 8192 * 8192  # QEMU rounds RAM up to 8 KiB
    o.ram_size_given = True


def _smp(o: SystemOptions, text: str) -> None:
    opts = _opts(text, "cpus", "smp")
    _reject_unknown(opts, PARAMETERS["smp-opts"], "smp")
    for key, value in opts.items():
        if value != "1":
            raise ConfigError(f"-smp {text}: livemig supports exactly one vCPU ({key}={value})")


def _name(o: SystemOptions, text: str) -> None:
    opts = _opts(text, "guest", "name")
    _reject_unknown(opts, PARAMETERS["name"], "name")
    if "debug-threads" in opts:
        o.debug_threads = parse_bool("debug-threads", opts["debug-threads"])
    o.name = opts.get("guest")


def _drive(o: SystemOptions, text: str) -> None:
    opts = _opts(text, None, "drive")
    _reject_unknown(opts, PARAMETERS["drive"], "drive")
    if "file" not in opts:
        raise ConfigError(f"-drive {text}: a drive needs file=PATH")
    fmt = opts.get("format", "raw")
    if fmt != "raw":
        raise ConfigError(f"-drive {text}: only format=raw is supported")
    if "id" in opts:
        o.drive_ids[opts["id"]] = len(o.drives)
    o.drives.append(DriveOption(opts["file"], boot=opts.get("if", "ide") != "none"))


def _json_or_keyval(text: str, implied: str | None, option: str) -> dict[str, Any]:
    """An option's JSON form (``{…}``, as libvirt writes it) or its key=value
    form. JSON scalars become the strings the key=value form would give."""
    if not text.lstrip().startswith("{"):
        return dict(_opts(text, implied, option))
    import json

    try:
        value = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"-{option} {text}: invalid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ConfigError(f"-{option} {text}: expected a JSON object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[key] = "on" if item else "off"
        elif isinstance(item, int | float | str):
            out[key] = str(item)
        else:
            out[key] = item  # nested objects: -blockdev's inline "file"
    return out


def _device(o: SystemOptions, text: str) -> None:
    """-device isa-debug-exit, isa-serial (the UART, COM1) or ide-hd (the
    boot disk), key=value or JSON."""
    opts = _json_or_keyval(text, "driver", "device")
    driver = opts.get("driver", "")
    if driver not in DEVICE_PROPERTIES:
        raise ConfigError(f"-device {text}: '{driver}' is not a valid device model name "
                          f"(livemig provides {', '.join(sorted(DEVICE_PROPERTIES))})")
    for key in opts:
        if key not in DEVICE_PROPERTIES[driver]:
            raise ConfigError(f"-device {text}: Property '{driver}.{key}' not found")
    if "id" in opts:
        o.devices.append((opts["id"], driver, opts.get("drive")))
    if driver == "isa-serial":
        if opts.get("index", "0") != "0" or opts.get("iobase", "0x3f8") not in ("0x3f8",
                                                                             "1016"):
            raise ConfigError(f"-device {text}: livemig has one serial port (COM1, index 0)")
        if "chardev" not in opts:
            raise ConfigError(f"-device {text}: Property 'chardev' is required")
        o.serial.append(f"chardev:{opts['chardev']}")
        return
    if driver == "ide-hd":
        if "drive" not in opts:
            raise ConfigError(f"-device {text}: Property 'drive' is required")
        try:
            bootindex = int(opts.get("bootindex", "-1"))
        except ValueError as err:
            raise ConfigError(f"-device {text}: bootindex must be a number") from err
        o.ide_disks.append((opts["drive"], bootindex))
        return
    try:
        o.debug_exit = DebugExitConfig(int(opts.get("iobase", "0x501"), 0),
                                       int(opts.get("iosize", "0x02"), 0))
    except ValueError as err:
        raise ConfigError(f"-device {text}: bad iobase/iosize") from err
    if not (0 <= o.debug_exit.iobase <= 0xFFFF and o.debug_exit.iosize in (1, 2, 4)):
        raise ConfigError(f"-device {text}: iobase must be a port and iosize 1, 2 or 4")


def _blockdev(o: SystemOptions, text: str) -> None:
    """-blockdev: ``file`` nodes (a host file) and ``raw`` nodes over them."""
    node = _json_or_keyval(text, None, "blockdev")
    _add_node(o, node, text)


def _add_node(o: SystemOptions, node: dict[str, Any], text: str) -> str:
    driver = node.get("driver")
    if driver not in ("file", "raw"):
        raise ConfigError(f"-blockdev {text}: Parameter 'driver' does not accept value "
                          f"'{driver}' (livemig has file and raw)")
    if driver == "file" and "filename" not in node:
        raise ConfigError(f"-blockdev {text}: Parameter 'filename' is missing")
    if driver == "raw":
        child = node.get("file")
        if isinstance(child, dict):
            node = {**node, "file": _add_node(o, child, text)}
        elif not isinstance(child, str):
            raise ConfigError(f"-blockdev {text}: Parameter 'file' is missing")
    name = node.get("node-name") or f"#block{len(o.blockdevs)}"
    if name in o.blockdevs:
        raise ConfigError(f"-blockdev {text}: Duplicate nodes with node-name='{name}'")
    o.blockdevs[name] = node
    return str(name)


def block_file(o: SystemOptions, name: str) -> str:
    """The host file under block node ``name`` (through raw nodes)."""
    seen: set[str] = set()
    while name in o.blockdevs and name not in seen:
        seen.add(name)
        node = o.blockdevs[name]
        if node["driver"] == "file":
            return str(node["filename"])
        name = str(node["file"])
    raise ConfigError(f"Cannot find device='' nor node-name='{name}'")


def _resolve_disks(o: SystemOptions) -> None:
    """-device ide-hd: its drive (a -blockdev node or a -drive id) becomes
    a drive; the lowest bootindex boots (a disk without one boots only
    when no other does)."""
    if not o.ide_disks:
        return
    order = sorted(o.ide_disks, key=lambda disk: (disk[1] < 0, disk[1]))
    boots = not any(d.boot for d in o.drives)
    for ref, _bootindex in order:
        if ref in o.drive_ids:
            index = o.drive_ids[ref]
            o.drives[index] = DriveOption(o.drives[index].path, boot=boots)
        else:
            o.drives.append(DriveOption(block_file(o, ref), boot=boots))
        boots = False


def _add_fd(o: SystemOptions, text: str) -> None:
    opts = _opts(text, None, "add-fd")
    _reject_unknown(opts, PARAMETERS["add-fd"], "add-fd")
    try:
        fd, set_id = int(opts["fd"]), int(opts["set"])
    except KeyError as err:
        raise ConfigError(f"-add-fd {text}: parameter '{err.args[0]}' is missing") from err
    except ValueError as err:
        raise ConfigError(f"-add-fd {text}: fd and set must be numbers") from err
    o.fdsets.append((set_id, fd, opts.get("opaque")))


def _accepted(text: str, option: str, group: str,
              allowed: dict[str, tuple[str, ...]] | None = None) -> None:
    """Options that change nothing livemig has, checked and then ignored
    (docs/command-line.md lists them); ``allowed`` restricts values."""
    opts = _opts(text, None if group != "boot-opts" else "order", option)
    _reject_unknown(opts, PARAMETERS[group], option)
    for key, values in (allowed or {}).items():
        if key in opts and opts[key] not in values:
            raise ConfigError(f"-{option} {text}: livemig does not support {key}={opts[key]}")


def _audiodev(text: str) -> None:
    opts = _json_or_keyval(text, "driver", "audiodev")
    if opts.get("driver") != "none":
        raise ConfigError(f"-audiodev {text}: livemig has no sound: only driver=none")


def _object(o: SystemOptions, text: str) -> None:
    """-object TYPE,id=ID,prop=value,...; dotted keys build lists of objects
    (authz-list's rules.0.match=..., rules.0.policy=...), as QEMU's keyval."""
    if text.lstrip().startswith("{"):  # the JSON form: properties keep their JSON types
        import json

        try:
            spec = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"-object {text}: invalid JSON: {err}") from err
        if not isinstance(spec, dict) or not isinstance(spec.get("qom-type"), str):
            raise ConfigError(f"-object {text}: Parameter 'qom-type' is missing")
        o.objects.append((spec.pop("qom-type"), spec, text))
        return
    opts = _opts(text, "qom-type", "object")
    qom_type = opts.pop("qom-type", "")
    if not qom_type:
        raise ConfigError(f"-object {text}: Parameter 'qom-type' is missing")
    props: dict[str, Any] = {}
    for key, value in opts.items():
        name, dot, rest = key.partition(".")
        if not dot:
            props[key] = value
            continue
        index, dot2, field_name = rest.partition(".")
        if not (index.isdigit() and dot2 and field_name):
            raise ConfigError(f"-object {text}: Invalid parameter '{key}'")
        items = props.setdefault(name, [])
        while len(items) <= int(index):
            items.append({})
        items[int(index)][field_name] = value
    o.objects.append((qom_type, props, text))


def _mon(o: SystemOptions, text: str) -> None:
    opts = _opts(text, "chardev", "mon")
    _reject_unknown(opts, PARAMETERS["mon"], "mon")
    if opts.get("mode", "readline") != "control":
        raise ConfigError(f"-mon {text}: only mode=control (QMP) is supported")
    if "chardev" not in opts:
        raise ConfigError(f"-mon {text}: chardev=ID is required")
    o.monitors.append(opts["chardev"])


def parse(argv: list[str]) -> SystemOptions:
    o = SystemOptions()
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-") or word == "-":
            raise ConfigError(f"{word}: a drive image is given as -drive file={word},format=raw")
        name = word[2:] if word.startswith("--") else word[1:]
        i += 1
        if name in FLAGS:
            _flag(o, name)
            continue
        if name not in WITH_ARG:
            raise ConfigError(f"-{name}: invalid option")
        if i >= len(argv):
            raise ConfigError(f"-{name}: requires an argument")
        value = argv[i]
        i += 1
        _with_arg(o, name, value)
    _check(o)
    return o


def _flag(o: SystemOptions, name: str) -> None:
    if name == "S":
        o.start_paused = True
    elif name == "nodefaults":
        o.nodefaults = True
    elif name == "enable-kvm":
        o.accel_options.append("kvm")
    elif name == "daemonize":
        o.daemonize = True
    elif name == "no-reboot":
        o.no_reboot = True
    elif name == "mem-prealloc":
        o.mem_prealloc = True
    elif name in ("no-user-config", "no-acpi", "usb"):
        pass  # nothing to skip, no ACPI tables, no USB: see docs/command-line.md
    elif name == "version":
        o.show_version = True
    elif name in ("help", "h"):
        o.show_help = True


def _with_arg(o: SystemOptions, name: str, value: str) -> None:
    if name in ("machine", "M"):
        _machine(o, value)
    elif name == "accel":
        _accel(o, value)
    elif name == "m":
        _memory(o, value)
    elif name == "smp":
        _smp(o, value)
    elif name == "name":
        _name(o, value)
    elif name == "serial":
        o.serial.append(value)
    elif name == "drive":
        _drive(o, value)
    elif name == "hda":
        o.drives.append(DriveOption(value, boot=True))
    elif name == "chardev":
        from ..chardev import options_from_chardev_arg
        o.chardevs.append(options_from_chardev_arg(value))
    elif name == "mon":
        _mon(o, value)
    elif name == "qmp":
        o.qmp.append(value)
    elif name == "qtest":
        o.qtest = value
    elif name == "qtest-log":
        o.qtest_log = value
    elif name == "incoming":
        _incoming(o, value)
    elif name == "pidfile":
        o.pidfile = value
    elif name == "device":
        _device(o, value)
    elif name == "object":
        _object(o, value)
    elif name == "blockdev":
        _blockdev(o, value)
    elif name == "add-fd":
        _add_fd(o, value)
    elif name == "overcommit":
        _accepted(value, name, "overcommit", {"mem-lock": ("off", "false", "no"),
                                              "cpu-pm": ("off", "false", "no")})
    elif name == "rtc":
        _accepted(value, name, "rtc")
    elif name == "boot":
        _accepted(value, name, "boot-opts")
    elif name == "msg":
        _accepted(value, name, "msg")
    elif name == "audiodev":
        _audiodev(value)
    elif name == "cpu":
        model = value.split(",")[0]
        if model not in CPU_MODELS:
            raise ConfigError(f"-cpu {value}: unknown CPU model (livemig knows "
                              f"{', '.join(CPU_MODELS)})")
        o.cpu_model = model
    elif name == "uuid":
        try:
            import uuid
            o.uuid = str(uuid.UUID(value))
        except ValueError as err:
            raise ConfigError("Fail to parse UUID string. Wrong format.") from err
    elif name == "monitor":
        if value != "none":
            raise ConfigError(f"-monitor {value}: use -qmp or -mon mode=control")
    elif name in ("display", "vga"):
        if value.split(",")[0] not in ("none", "std", "default"):
            raise ConfigError(f"-{name} {value}: livemig has no display (use -{name} none)")


def _check(o: SystemOptions) -> None:
    _resolve_disks(o)
    if len([s for s in o.serial if s != "none"]) > 1:
        raise ConfigError("-serial: livemig has one serial port (COM1)")
    if o.pidfile is not None and os.path.isdir(o.pidfile):
        raise ConfigError(f"-pidfile {o.pidfile}: is a directory")


USAGE = """\
usage: livemig-system-x86_64 [options]

A QEMU-compatible virtual machine monitor (one x86 vCPU, no BIOS: the first
512 bytes of the boot drive are loaded at 0x7c00 and run in real mode).

  -machine [type=]pc,accel=A[:B…]   accelerators to try in order (kvm, tcg, qtest)
  -accel NAME | -enable-kvm          choose the accelerator (default tcg)
  -accel kvm,dirty-ring-size=N       KVM dirty ring of N entries per vCPU (power of two)
  -m SIZE                            guest RAM (default 128M; suffixes K M G T)
  -machine memory-backend=ID         guest RAM is that memory backend object
           [,aux-ram-share=on|off]   (accepted: livemig has no other RAM to share):
  -object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,prealloc=on]
  -object memory-backend-file,id=ID,size=SIZE,mem-path=PATH[,share=on|off]
  -smp 1                             one vCPU
  -name NAME[,debug-threads=on]      the guest's name (query-name); on: OS thread names
  -drive file=PATH,format=raw        boot disk (512-byte boot sector, 0x55AA)
  -serial file:PATH|stdio|null|none|chardev:ID|unix:…|tcp:…
  -chardev socket|file|null|stdio,id=ID,…
  -qmp unix:PATH,server=on,wait=off  a QMP monitor (also tcp:HOST:PORT,…)
  -mon chardev=ID,mode=control       a QMP monitor on a chardev
  -qtest unix:PATH | chardev:ID      the qtest protocol (client mode, as QEMU)
  -qtest-log FILE                    log qtest traffic
  -incoming URI | defer              wait for an incoming migration
  -incoming '{"channel-type": "cpr", "addr": {...}}'
                                     cpr-transfer: first take guest RAM's descriptor
                                     on that unix socket (with -incoming URI as well)
  -object tls-creds-x509|tls-creds-psk|authz-simple|authz-list,id=ID,…
  -device isa-debug-exit,iobase=0xf4,iosize=0x04
  -S  -nodefaults  -display none  -no-reboot  -mem-prealloc  -daemonize  -pidfile FILE
  -version

Logging: set LIVEMIG_LOG=debug|info|warning (default: warnings only).
"""
