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
from stream_helpers import (
    DESCRIPTION,
    END,
    PAGES,
    POSTCOPY_RUN,
    RAM,
    RESUME,
    discard,
    header,
    raw_state,
    run,
    state_body,
    state_record,
    state_with,
)

from livemig.lab import VmLauncher, VmmKind, wait_until

pytestmark = pytest.mark.skipif(LIVEMIG is None, reason="livemig not installed")

KIND = VmmKind("livemig-tcg", LIVEMIG or "", "tcg")

DEEP = b"[" * 100_000 + b"]" * 100_000

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
    "state not JSON": (header() + raw_state(b"{{{{{"), "malformed device state"),
    "empty stream": (b"", "ended early"),
    # Phases: a record that is well formed but not allowed where it stands.
    "end without state": (header() + END, "unexpected End record in phase 'precopy-start'"),
    "state twice": (header() + state_record() + state_record(),
                    "unexpected State record in phase 'state-loaded'"),
    "pages after state": (header() + state_record() + run(2, 0, 1),
                          "unexpected ZeroRun record in phase 'state-loaded'"),
    "discard without advice": (header() + discard(0, 1),
                               "unexpected Discard record in phase 'precopy-start'"),
    "switchover without discard": (header() + run(2, 0, 16) + POSTCOPY_RUN,
                                   "unexpected PostcopyRun record in phase 'precopy'"),
    "resume on a main channel": (header() + RESUME, "unexpected Resume record"),
    "header twice": (header() + header(), "unknown record type 0x4c"),
    # Machine state: validated whole before any of it is applied.
    "state missing a device": (header() + state_record({**state_body(), "devices": {
                                   "serial0": state_body()["devices"]["serial0"]}}),
                               "no state for device 'port92'"),
    "state for an unknown device": (
        header() + state_record({**state_body(), "devices": {
            **state_body()["devices"], "floppy": {}}}), "unknown device 'floppy'"),
    "state nested deeply": (header() + raw_state(DEEP), "nested too deeply"),
    "rip infinite": (header() + raw_state(json.dumps(state_body()).replace(
        '"rip": 31744', '"rip": 1e999').encode()), "out of range"),
    "rip too large": (header() + state_with(["vcpus", "0", "core", "rip"], 2**70),
                      "'rip' = 1180591620717411303424 is not a 64-bit unsigned integer"),
    "cr0 too large": (header() + state_with(["vcpus", "0", "core", "cr0"], 2**64),
                      "'cr0' = 18446744073709551616 is not a 64-bit"),
    "cs not an object": (header() + state_with(["vcpus", "0", "core", "segments", "cs"], []),
                         "'cs' is missing or not an object"),
    "uart register too wide": (header() + state_with(["devices", "serial0", "lcr"], 256),
                               "saved lcr=256 is not a 8-bit register value"),
    "running not a boolean": (header() + state_with(["running"], "yes"),
                              "'running' is not a boolean"),
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
