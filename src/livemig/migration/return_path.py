"""Messages from the destination back to the source (postcopy only).

The return path shares the migration socket, in the other direction. Both
ends use these helpers so the format lives in one place; every message a
source reads is checked against the size of its RAM before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MigrationSendError
from .channel import Channel
from .wire import COUNT, MAX_RUN_PAGES, RP_DONE, RP_HAVE, RP_REQUEST, RUN


def request(first: int, count: int) -> bytes:
    return RUN.pack(RP_REQUEST, first, count)


def have(placed: np.ndarray) -> list[bytes]:
    bits = np.packbits(placed, bitorder="little").tobytes()
    return [COUNT.pack(RP_HAVE, len(bits)), bits]


def done() -> bytes:
    return bytes([RP_DONE])


@dataclass(frozen=True)
class Request:
    first: int
    count: int


@dataclass(frozen=True)
class Have:
    placed: np.ndarray  # bool per page


@dataclass(frozen=True)
class Done:
    pass


Message = Request | Have | Done


def read_message(channel: Channel, pages: int) -> Message:
    """Read one return-path message; a malformed one raises MigrationSendError."""
    tag = channel.recv(1)[0]
    if tag == RP_REQUEST:
        _tag, first, count = RUN.unpack(bytes([tag]) + channel.recv(RUN.size - 1))
        if count == 0 or count > MAX_RUN_PAGES or first + count > pages:
            raise MigrationSendError(
                f"return path: the destination asked for pages {first}+{count}, "
                f"outside guest RAM ({pages} pages)")
        return Request(first, count)
    if tag == RP_HAVE:
        _tag, length = COUNT.unpack(bytes([tag]) + channel.recv(COUNT.size - 1))
        expected = (pages + 7) // 8
        if length != expected:
            raise MigrationSendError(
                f"return path: page bitmap of {length} bytes, expected {expected}")
        bits = np.frombuffer(channel.recv(length), dtype=np.uint8)
        placed = np.unpackbits(bits, count=pages, bitorder="little").astype(bool)
        return Have(placed)
    if tag == RP_DONE:
        return Done()
    raise MigrationSendError(f"return path: unknown message type {tag:#04x}")
