"""Malformed streams written straight into a livemig destination's socket.

Each one must end in a clear error on stderr and exit status 1 (QEMU's
"load of migration failed"), never a crash, and never a write outside RAM
(the receiver bounds-checks before it writes; a crash would show as a
signal in the exit status).
"""

from __future__ import annotations

import json
import socket
import struct

import pytest
from conftest import LIVEMIG
from migration_helpers import start_dest

from livemig.lab import VmLauncher, VmmKind, wait_until

pytestmark = pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")

KIND = VmmKind("livemig-tcg", LIVEMIG or "", "tcg")
RAM = 150 << 20
PAGES = RAM // 4096
DESCRIPTION = {"devices": ["port92", "serial0"], "machine": "pc", "ram-size": RAM, "vcpus": 1}


def header(magic: bytes = b"LVMG", version: int = 1, page: int = 4096, ram: int = RAM,
           description: dict | None = None) -> bytes:  # type: ignore[type-arg]
    desc = json.dumps(description or DESCRIPTION, sort_keys=True).encode()
    return struct.pack("<4sHIQI", magic, version, page, ram, len(desc)) + desc


def run(tag: int, first: int, count: int) -> bytes:
    return struct.pack("<BQI", tag, first, count)


CASES = {
    "wrong magic": (header(magic=b"QEVM"), "not a livemig migration stream"),
    "wrong version": (header(version=99), "unsupported stream version 99"),
    "RAM size differs": (header(ram=RAM * 2), "RAM size differs"),
    "machine differs": (header(description={**DESCRIPTION, "vcpus": 4}), "machine differs"),
    "page run outside RAM": (header() + run(1, PAGES - 1, 2) + bytes(8192), "outside guest RAM"),
    "page run far outside RAM": (header() + run(1, 2**63, 1) + bytes(4096), "outside guest RAM"),
    "zero run outside RAM": (header() + run(2, PAGES, 1), "outside guest RAM"),
    "unknown record": (header() + b"\x7f", "unknown record type 0x7f"),
    "truncated page run": (header() + run(1, 256, 4) + bytes(100), "ended early"),
    "state too large": (header() + struct.pack("<BI", 3, 1 << 30), "too large"),
    "state not JSON": (header() + struct.pack("<BI", 3, 5) + b"{{{{{", "malformed device state"),
    "end without state": (header() + b"\x05", "without vCPU and device state"),
    "empty stream": (b"", "ended early"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_destination_rejects_bad_stream(lab: VmLauncher, name: str) -> None:
    stream, message = CASES[name]
    path = lab.workdir / "in.sock"
    dst = start_dest(lab, KIND, "dst", f"unix:{path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(stream)
        sock.shutdown(socket.SHUT_WR)
        code = dst.wait_exit(30)
    assert code == 1, f"exit status {code}"
    err = dst.stderr_text()
    assert "load of migration failed" in err and message in err, err
    assert "Traceback" not in err


def test_good_header_then_quit_leaves_guest_intact(lab: VmLauncher) -> None:
    """A destination that has only seen part of a stream still answers QMP."""
    path = lab.workdir / "in.sock"
    dst = start_dest(lab, KIND, "dst", f"unix:{path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(header() + run(2, 0, 16))
        wait_until(lambda: dst.cmd("query-migrate")["status"] == "active", 30, "active")
        assert dst.status() == "inmigrate"
    assert dst.wait_exit(30) == 1
