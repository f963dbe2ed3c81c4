"""Migration streams built by hand for tests that play a hostile source.

Records come from livemig's own codec where the test wants a well-formed
record, and from struct where it wants a malformed one.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

from livemig.accel.cpustate import CpuState
from livemig.devices.system_control import Port92State
from livemig.devices.uart import UartState
from livemig.migration import codec

RAM = 150 << 20
PAGES = RAM // 4096
DESCRIPTION = {"devices": ["port92", "serial0"], "machine": "pc", "ram-size": RAM, "vcpus": 1}


def header(magic: bytes = codec.MAGIC, version: int = codec.VERSION, page: int = 4096,
           ram: int = RAM, description: dict[str, Any] | None = None,
           uuid: str | None = None, multifd: dict[str, Any] | None = None,
           preempt: bool = False) -> bytes:
    good = codec.Header(page, ram, description or DESCRIPTION, uuid, multifd, preempt).encode()
    return struct.pack("<4sH", magic, version) + good[6:]


def run(tag: int, first: int, count: int) -> bytes:
    return struct.pack("<BQI", tag, first, count)


def state_body(running: bool = False) -> dict[str, Any]:
    """A valid machine state for the destination DESCRIPTION names."""
    return {"running": running,
            "vcpus": [{"core": CpuState.boot().to_dict(), "sections": {}}],
            "devices": {"serial0": UartState(dll=12).to_dict(),
                        "port92": Port92State().to_dict()}}


def state_record(body: dict[str, Any] | None = None) -> bytes:
    return codec.State(body if body is not None else state_body()).encode()


def raw_state(text: bytes) -> bytes:
    """A state record whose JSON is given as bytes (malformed on purpose)."""
    return struct.pack("<BI", codec.TAG_STATE, len(text)) + text


def state_with(path: list[str], value: Any) -> bytes:
    """The valid state with one value replaced (path of keys into it)."""
    body = state_body()
    target: Any = body
    for key in path[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[path[-1]] = value
    return raw_state(json.dumps(body).encode())


def drain(conn: socket.socket) -> threading.Thread:
    """Read and drop everything ``conn`` receives, on a thread, until EOF."""
    def run() -> None:
        try:
            while conn.recv(1 << 20):
                pass
        except OSError:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


ADVISE = codec.PostcopyAdvise().encode()
POSTCOPY_RUN = codec.PostcopyRun().encode()
END = codec.End().encode()
RESUME = codec.Resume().encode()


def discard(first: int, count: int) -> bytes:
    return struct.pack("<BQ", codec.TAG_DISCARD, 1) + struct.pack("<QQ", first, count)
