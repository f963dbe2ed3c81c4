"""livemig's migration stream, version 1 (documented in docs/migration.md).

All integers are little-endian. A stream is a header followed by records;
each record starts with a one-byte tag. Page numbers are guest-physical
page frame numbers (address / page size).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import MigrationReceiveError

MAGIC = b"LVMG"
VERSION = 1

HEADER = struct.Struct("<4sHIQI")      # magic, version, page size, RAM bytes, description length
RUN = struct.Struct("<BQI")            # tag, first page, page count
BLOB = struct.Struct("<BI")            # tag, byte length (JSON follows)

TAG_PAGES = 0x01    # RUN header, then count * page_size bytes of page contents
TAG_ZERO = 0x02     # RUN header only: these pages are all zero
TAG_STATE = 0x03    # BLOB: JSON {"cpu": …, "devices": …}
TAG_SYNC = 0x04     # RUN-shaped, first = pass number, count 0: a dirty sync happened
TAG_END = 0x05      # just the tag: nothing follows
TAG_POSTCOPY_ADVISE = 0x06  # just the tag: postcopy may follow; open the return path
TAG_DISCARD = 0x07  # COUNT header, then count (first u64, pages u64) runs the destination drops
TAG_POSTCOPY_RUN = 0x08     # just the tag: register RAM with userfaultfd and run the guest
TAG_RESUME = 0x09   # just the tag, after a header on a recovery channel

# The return path: destination to source, on the same socket.
RP_REQUEST = 0x41   # RUN-shaped: send these pages first (a vCPU waits for them)
RP_HAVE = 0x42      # COUNT header (byte length), then a little-endian bit per page held
RP_DONE = 0x43      # just the tag: every page is in place; the migration is complete

COUNT = struct.Struct("<BQ")           # tag, count
RANGE = struct.Struct("<QQ")           # first page, page count (DISCARD entries)

MAX_DESCRIPTION = 1 << 20
MAX_STATE = 16 << 20
MAX_RUN_PAGES = 1 << 20
POSTCOPY_MAX_RUN = 1024  # pages per record after switchover: the destination's staging buffer


@dataclass(frozen=True)
class Header:
    page_size: int
    ram_size: int
    description: dict[str, Any]

    def encode(self) -> bytes:
        desc = json.dumps(self.description, sort_keys=True).encode()
        return HEADER.pack(MAGIC, VERSION, self.page_size, self.ram_size, len(desc)) + desc


def decode_header(fixed: bytes) -> tuple[int, int, int]:
    """Check magic and version; return (page size, RAM size, description length)."""
    magic, version, page_size, ram_size, desc_len = HEADER.unpack(fixed)
    if magic != MAGIC:
        raise MigrationReceiveError(f"not a livemig migration stream (magic {magic!r})")
    if version != VERSION:
        raise MigrationReceiveError(f"unsupported stream version {version} (expected {VERSION})")
    if desc_len > MAX_DESCRIPTION:
        raise MigrationReceiveError(f"machine description of {desc_len} bytes is too large")
    return page_size, ram_size, desc_len


def decode_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MigrationReceiveError(f"malformed {what}: {err}") from err
    if not isinstance(value, dict):
        raise MigrationReceiveError(f"malformed {what}: not an object")
    return value


def run_record(tag: int, first: int, count: int) -> bytes:
    return RUN.pack(tag, first, count)


def blob_record(tag: int, value: dict[str, Any]) -> bytes:
    data = json.dumps(value).encode()
    return BLOB.pack(tag, len(data)) + data
