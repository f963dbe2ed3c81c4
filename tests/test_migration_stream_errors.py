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
import zlib

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
from livemig.migration import codec

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


def _delta(first: int, count: int, offsets: list[int], lengths: list[int], data: bytes) -> bytes:
    return (struct.pack("<BQIII", codec.TAG_DELTA, first, count, len(offsets), len(data))
            + struct.pack(f"<{len(offsets)}I", *offsets)
            + struct.pack(f"<{len(lengths)}H", *lengths) + data)


XBZRLE_CASES = {
    "delta past its pages": (_delta(0, 1, [4090], [10], bytes(10)), "do not fit its pages"),
    "delta lengths disagree": (_delta(0, 1, [0, 8], [4, 4], bytes(5)), "do not fit its pages"),
    "delta with too many runs": (struct.pack("<BQIII", codec.TAG_DELTA, 0, 1, 5000, 1),
                                 "does not fit 1 pages"),
    "delta outside RAM": (_delta(PAGES, 1, [0], [1], b"x"), "outside guest RAM"),
}


@pytest.mark.parametrize("name", list(XBZRLE_CASES))
def test_destination_rejects_bad_xbzrle(lab: VmLauncher, name: str) -> None:
    records, message = XBZRLE_CASES[name]
    path = lab.workdir / "in.sock"
    dst = start_dest(lab, KIND, "dst", f"unix:{path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(header() + records)
        sock.shutdown(socket.SHUT_WR)
        assert dst.wait_exit(30) == 1
    err = dst.stderr_text()
    assert "load of migration failed" in err and message in err, err
    assert "Traceback" not in err


def _hello(index: int = 0, count: int = 1) -> bytes:
    return codec.ChannelHello(index, count).encode()


def _packed(first: int, count: int, data: bytes) -> bytes:
    return codec.CompressedRun(first, count, len(data)).encode() + data


MULTIFD_CASES = {
    "zlib garbage": ("zlib", _hello() + _packed(0, 1, b"not zlib at all"),
                     "malformed compressed pages"),
    "zstd garbage": ("zstd", _hello() + _packed(0, 1, b"\x28\xb5\x2f\xfdgarbage"),
                     "malformed compressed pages"),
    "zlib too short": ("zlib", _hello() + _packed(0, 2, zlib.compress(bytes(4096))),
                       "decode to 4096 bytes, expected 8192"),
    "zlib too long": ("zlib", _hello() + _packed(0, 1, zlib.compress(bytes(8192))),
                      "does not end where it should"),
    "compressed run too large": ("zlib", _hello() + codec.CompressedRun(0, 1, 1 << 30).encode(),
                                 "is too large"),
    "compressed without compression": ("none", _hello() + _packed(0, 1, zlib.compress(bytes(4096))),
                                       "a compressed run on a stream without compression"),
    "channel page outside RAM": ("none", _hello() + run(1, PAGES, 1) + bytes(4096),
                                 "outside guest RAM"),
    "state on a channel": ("none", _hello() + state_record(),
                           "unexpected State record in phase 'channel'"),
    "barrier out of order": ("none", _hello() + codec.ChannelSync(2).encode(),
                             "barrier 2 out of order"),
    "not a channel": ("none", b"QEVM\x00\x01", "not a livemig multifd channel"),
    "channel index too big": ("none", _hello(3, 1), "multifd channel 3 of 1 does not exist"),
    "channel count differs": ("none", _hello(0, 2), "says there are 2 channels"),
}


@pytest.mark.parametrize("name", list(MULTIFD_CASES))
def test_destination_rejects_bad_multifd_channel(lab: VmLauncher, name: str) -> None:
    """A hostile source's multifd channel: the same bounds, phases and clean end."""
    method, channel_bytes, message = MULTIFD_CASES[name]
    path = lab.workdir / "in.sock"
    dst = lab.start(KIND, "dst", extra=["-incoming", "defer"])
    dst.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    dst.cmd("migrate-set-parameters", **{"multifd-channels": 1, "multifd-compression": method})
    dst.cmd("migrate-incoming", uri=f"unix:{path}")
    wait_until(path.exists, 30, "the incoming socket")
    with socket.socket(socket.AF_UNIX) as main, socket.socket(socket.AF_UNIX) as channel:
        main.connect(str(path))
        main.sendall(header(multifd={"channels": 1, "compression": method}))
        channel.connect(str(path))
        channel.sendall(channel_bytes)
        assert dst.wait_exit(30) == 1
    err = dst.stderr_text()
    assert "load of migration failed" in err and message in err, err
    assert "Traceback" not in err
