"""The command line libvirt writes for a domain (issue 14): -blockdev
nodes under -device ide-hd, isa-serial on a chardev, a monitor on an
inherited listening socket, a serial file from an -add-fd set, and the
options livemig accepts and ignores; with their refusals."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from livemig import fdsets
from livemig.cli.options import parse
from livemig.errors import ConfigError
from livemig.guest import write_image
from livemig.lab import VmLauncher, find_binary, wait_until
from livemig.lab.vmm import LIVEMIG_BINARY

LIBVIRT_DOMAIN_ARGS = [
    "-name", "guest=lm2,debug-threads=on", "-S",
    "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
    "-accel", "tcg", "-cpu", "qemu64", "-m", "150",
    "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":157286400}',
    "-overcommit", "mem-lock=off", "-smp", "1,sockets=1,cores=1,threads=1",
    "-uuid", "21f7228e-4aaf-40c1-b1a4-963a9893cc16", "-display", "none",
    "-no-user-config", "-nodefaults", "-rtc", "base=utc", "-no-shutdown", "-no-acpi",
    "-boot", "strict=on", "-usb",
    "-audiodev", '{"id":"audio1","driver":"none"}', "-msg", "timestamp=on",
]


def _disk_args(image: Path) -> list[str]:
    return [
        "-blockdev", json.dumps({"driver": "file", "filename": str(image),
                                 "node-name": "libvirt-1-storage", "auto-read-only": True,
                                 "discard": "unmap"}),
        "-blockdev", json.dumps({"node-name": "libvirt-1-format", "read-only": False,
                                 "driver": "raw", "file": "libvirt-1-storage"}),
        "-device", json.dumps({"driver": "ide-hd", "bus": "ide.0", "unit": 0,
                               "drive": "libvirt-1-format", "id": "ide0-0-0",
                               "bootindex": 1}),
    ]


def test_libvirts_domain_line_parses(tmp_path: Path) -> None:
    image = tmp_path / "boot.img"
    opts = parse([*LIBVIRT_DOMAIN_ARGS, *_disk_args(image),
                  "-chardev", "file,id=charserial0,path=/dev/fdset/0,append=on",
                  "-device", "isa-serial,chardev=charserial0,id=serial0,index=0"])
    assert [(d.path, d.boot) for d in opts.drives] == [(str(image), True)]
    assert opts.serial == ["chardev:charserial0"]
    assert opts.devices == [("ide0-0-0", "ide-hd", "libvirt-1-format"),
                            ("serial0", "isa-serial", None)]
    assert opts.objects[0][0] == "memory-backend-ram"


def test_older_drive_form_and_boot_order(tmp_path: Path) -> None:
    opts = parse(["-drive", "file=/a.img,format=raw,if=none,id=drive0",
                  "-drive", "file=/b.img,format=raw,if=none,id=drive1",
                  "-device", "ide-hd,drive=drive1,bootindex=2",
                  "-device", "ide-hd,drive=drive0,bootindex=1"])
    assert [(d.path, d.boot) for d in opts.drives] == [("/a.img", True), ("/b.img", False)]


@pytest.mark.parametrize("argv, message", [
    (["-device", "virtio-blk-pci,drive=x"], "'virtio-blk-pci' is not a valid device model"),
    (["-device", "isa-serial,chardev=c,index=1"], "one serial port"),
    (["-device", "ide-hd,drive=nowhere"], "node-name='nowhere'"),
    (["-device", "ide-hd"], "Property 'drive' is required"),
    (["-device", "isa-serial,chardev=c,speed=9600"], "Property 'isa-serial.speed' not found"),
    (["-blockdev", '{"driver":"qcow2","node-name":"q","file":"f"}'], "does not accept value"),
    (["-blockdev", '{"driver":"file","node-name":"f"}'], "'filename' is missing"),
    (["-blockdev", "{not json"], "invalid JSON"),
    (["-audiodev", "alsa,id=a"], "only driver=none"),
    (["-overcommit", "mem-lock=on"], "does not support mem-lock=on"),
    (["-rtc", "speed=fast"], "Invalid parameter 'speed'"),
    (["-add-fd", "set=0"], "parameter 'fd' is missing"),
])
def test_refusals_name_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_fdset_paths_open_duplicates(tmp_path: Path) -> None:
    target = tmp_path / "out.log"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        fdsets.add(7, fd, "serial0-source")
        dup = fdsets.open_path("/dev/fdset/7", os.O_WRONLY | os.O_APPEND)
        os.write(dup, b"hello")
        os.close(dup)
        assert target.read_bytes() == b"hello"
        assert {"fdset-id": 7, "fds": [{"fd": fd, "opaque": "serial0-source"}]} in \
            fdsets.query()
        with pytest.raises(fdsets.FdsetError, match="no descriptor of set 7"):
            fdsets.open_path("/dev/fdset/7", os.O_RDONLY)
        with pytest.raises(fdsets.FdsetError, match="no such fd set"):
            fdsets.open_path("/dev/fdset/99", os.O_WRONLY)
    finally:
        os.close(fd)


def _qmp(sock: socket.socket, command: str, **arguments: object) -> object:
    sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode())
    reader = sock.makefile("rb")
    while True:
        answer = json.loads(reader.readline())
        if "event" not in answer:
            return answer


def test_livemig_runs_libvirts_line_with_inherited_fds(lab: VmLauncher) -> None:
    """The monitor on a listening socket handed over as fd=N and the serial
    port on /dev/fdset/0: the guest boots from the -blockdev disk, writes
    to the fdset's file, and QMP reports devices, disk and chardevs."""
    binary = find_binary(LIVEMIG_BINARY)
    if binary is None:
        pytest.skip("livemig not installed")
    image, serial = lab.workdir / "boot.img", lab.workdir / "serial.log"
    write_image(image)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(lab.workdir / "monitor.sock"))
    listener.listen(1)
    serial_fd = os.open(serial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    argv = [str(binary), *LIBVIRT_DOMAIN_ARGS, *_disk_args(image),
            "-chardev", f"socket,id=charmonitor,fd={listener.fileno()},server=on,wait=off",
            "-mon", "chardev=charmonitor,id=monitor,mode=control",
            "-add-fd", f"set=0,fd={serial_fd},opaque=serial0-source",
            "-chardev", "file,id=charserial0,path=/dev/fdset/0,append=on",
            "-device", "isa-serial,chardev=charserial0,id=serial0,index=0"]
    proc = lab.spawn(argv, "libvirt-line", pass_fds=(listener.fileno(), serial_fd))
    os.close(serial_fd)
    listener.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    wait_until(lambda: sock.connect_ex(str(lab.workdir / "monitor.sock")) == 0
               or proc.poll() is not None, 30, "the monitor")
    assert proc.poll() is None, (lab.workdir / "libvirt-line.stderr").read_text()
    assert "QMP" in json.loads(sock.makefile("rb").readline())
    assert "return" in _qmp(sock, "qmp_capabilities")
    chardevs = {c["label"]: c["filename"] for c in _qmp(sock, "query-chardev")["return"]}
    assert chardevs["charserial0"] == "file" and "charmonitor" in chardevs
    block = _qmp(sock, "query-block")["return"]
    assert block[0]["qdev"] == "ide0-0-0"
    assert block[0]["inserted"]["image"]["virtual-size"] == 512
    nodes = {n["node-name"] for n in _qmp(sock, "query-named-block-nodes", flat=True)["return"]}
    assert nodes == {"libvirt-1-storage", "libvirt-1-format"}
    peripheral = {p["name"] for p in _qmp(sock, "qom-list", path="/machine/peripheral")["return"]}
    assert {"ide0-0-0", "serial0"} <= peripheral
    assert _qmp(sock, "qom-get", path="/machine/unattached/device[0]",
                property="realized")["return"] is True
    assert "return" in _qmp(sock, "cont")
    wait_until(lambda: b"B" in serial.read_bytes(), 60, "the guest's output in the fdset file")
    sock.close()
