"""livemig's migration stream and return path: every record, both directions.

The format is documented in docs/migration.md. All integers are
little-endian; every record starts with a one-byte tag. Each record is a
small frozen dataclass whose ``encode()`` gives its bytes (for a page run:
its header, the page contents follow from guest RAM). One decoder,
:func:`read_record`, reads any record from a :class:`Reader` and checks it
against :class:`Limits` before anything is returned: a run returned by the
decoder lies inside guest RAM, a state record is a JSON object of bounded
size. Anything else raises :class:`~livemig.errors.StreamError` with the
record's byte offset. Channels carry these records; they never interpret
them.

numpy is imported only by the records that need it (discard lists and the
page bitmap), so importing the codec costs nothing at start-up.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import StreamError, StreamTruncated

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"LVMG"
# 1: livemig 0.1 (untyped state, no UUID); 2: typed state, UUID in the header;
# 3: multifd channels, compressed runs, xbzrle deltas, stream settings in the header;
# 4: the postcopy-preempt channel (announced in the header, begun with PREEMPT_MAGIC);
# 5: the header's shared-ram identity (x-ignore-shared: RAM is not in the stream) and
#    mapped-ram layout (pages at fixed offsets of a file).
VERSION = 5

HEADER = struct.Struct("<4sHIQI")      # magic, version, page size, RAM bytes, JSON length
RUN = struct.Struct("<BQI")            # tag, first page, page count
BLOB = struct.Struct("<BI")            # tag, byte length (JSON follows)
COUNT = struct.Struct("<BQ")           # tag, count
RANGE = struct.Struct("<QQ")           # first page, page count (discard entries)
PACKED = struct.Struct("<BQII")        # tag, first page, page count, byte length
DELTA = struct.Struct("<BQIII")        # tag, first page, page count, runs, data bytes
HELLO = struct.Struct("<4sBB")         # magic, channel index, channel count
CPR = struct.Struct("<4sHI")           # magic, version, JSON length

# Stream records (source to destination).
TAG_PAGES = 0x01
TAG_ZERO = 0x02
TAG_STATE = 0x03
TAG_SYNC = 0x04
TAG_END = 0x05
TAG_POSTCOPY_ADVISE = 0x06
TAG_DISCARD = 0x07
TAG_POSTCOPY_RUN = 0x08
TAG_RESUME = 0x09
TAG_MULTIFD_FLUSH = 0x0A   # main channel: every multifd channel has reached this barrier
TAG_CHANNEL_SYNC = 0x0B    # multifd channel: the barrier; nothing after it until released
TAG_COMPRESSED = 0x0C      # multifd channel: a run of pages, compressed
TAG_DELTA = 0x0D           # main channel: xbzrle deltas against the pages last sent
# Return-path records (destination to source).
TAG_REQUEST = 0x41
TAG_HAVE = 0x42
TAG_DONE = 0x43
TAG_SHARED_RAM_OK = 0x44
TAG_CPR_OK = 0x45          # cpr channel: the descriptors are taken, the main channel may come

CHANNEL_MAGIC = b"LVMC"   # begins a multifd channel (a main channel begins with MAGIC)
PREEMPT_MAGIC = b"LVMP"   # begins the postcopy-preempt channel (requested pages)
CPR_MAGIC = b"LVMR"       # begins the cpr channel (cpr-transfer: descriptors, by name)
CPR_VERSION = 1
MAX_CPR_FDS = 64
MAX_DESCRIPTION = 1 << 20
MAX_STATE = 16 << 20
MAX_RUN_PAGES = 1 << 20
POSTCOPY_MAX_RUN = 1024  # pages per page record after switchover (the staging buffer)
PAGE_BYTES = 4096  # the stream's page size (the header states it; memory.PAGE_SIZE agrees)


# --- reading -----------------------------------------------------------------------


class Reader(Protocol):
    """Exact reads from a stream; ``offset`` counts the bytes consumed."""

    offset: int

    def read(self, size: int) -> bytes: ...

    def readinto(self, view: memoryview) -> None: ...


Fill = Callable[[memoryview], int]


class BufferedReader:
    """Exact reads over a ``fill(view) -> bytes read`` source (0 at EOF).

    Small reads (record headers) are served from a read-ahead buffer, so a
    record costs one system call per buffer-full, not two; a large
    ``readinto`` (page contents) copies what is buffered and lets the rest
    go straight from the socket into the caller's memory.
    """

    def __init__(self, fill: Fill, buffer_size: int = 256 << 10) -> None:
        self._fill = fill
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.offset = 0

    @classmethod
    def over_bytes(cls, data: bytes) -> BufferedReader:
        return cls(io.BytesIO(data).readinto)

    @property
    def buffered(self) -> int:
        return self._end - self._start

    def restart_at(self, offset: int) -> None:
        """Forget what is buffered: the source has been moved to ``offset``
        (a seek of the file under it; mapped-ram's records after its pages)."""
        self._start = self._end = 0
        self.offset = offset

    def _refill(self) -> None:
        self._start = self._end = 0
        got = self._fill(self._view)
        if not got:
            raise StreamTruncated("migration stream ended early", self.offset)
        self._end = got

    def read(self, size: int) -> bytes:
        if size <= self.buffered:
            data = bytes(self._view[self._start:self._start + size])
            self._start += size
            self.offset += size
            return data
        out = bytearray(size)
        self.readinto(memoryview(out))
        return bytes(out)

    def readinto(self, view: memoryview) -> None:
        target = memoryview(view).cast("B")
        while len(target):
            if self.buffered:
                take = min(self.buffered, len(target))
                target[:take] = self._view[self._start:self._start + take]
                self._start += take
                self.offset += take
                target = target[take:]
            elif len(target) >= len(self._buf):
                got = self._fill(target)
                if not got:
                    raise StreamTruncated("migration stream ended early", self.offset)
                self.offset += got
                target = target[got:]
            else:
                self._refill()


# --- limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What a decoded record may name: guest RAM of ``ram_pages`` pages."""

    ram_pages: int
    max_run_pages: int = MAX_RUN_PAGES
    max_state: int = MAX_STATE

    def max_compressed(self, count: int) -> int:
        """The largest compressed form of ``count`` pages worth reading: their
        size plus every method's worst-case expansion, with room to spare."""
        raw = count * PAGE_BYTES
        return raw + raw // 64 + 4096

    def check_run(self, first: int, count: int, what: str, offset: int) -> None:
        """The one "run lies inside guest RAM" check, for every direction."""
        if count == 0 or count > self.max_run_pages or first + count > self.ram_pages:
            raise StreamError(f"{what} {first}+{count} lies outside guest RAM "
                              f"({self.ram_pages} pages)", offset)


# --- JSON payloads -----------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def decode_object(data: bytes, what: str, offset: int | None = None) -> dict[str, Any]:
    """A JSON object, or StreamError: never RecursionError, never NaN or infinity."""
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError as err:
        raise StreamError(f"malformed {what}: nested too deeply", offset) from err
    except (UnicodeDecodeError, ValueError) as err:
        raise StreamError(f"malformed {what}: {err}", offset) from err
    if not isinstance(value, dict):
        raise StreamError(f"malformed {what}: not a JSON object", offset)
    return value


def encode_object(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# --- the header ------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """Begins every stream and every recovery channel."""

    page_size: int
    ram_size: int
    machine: dict[str, Any]
    uuid: str | None = None   # with validate-uuid on a source that has one
    # How the pages travel: {"channels": n, "compression": "none"|"zlib"|"zstd"}
    # with multifd; None on a single channel.
    multifd: dict[str, Any] | None = None
    # postcopy-preempt: a second channel follows (after any multifd ones)
    # that carries the pages the destination asks for after switchover.
    preempt: bool = False
    # x-ignore-shared: RAM is not in the stream; the destination must map
    # the same memory, which this (st_dev, st_ino) of the backend names.
    shared_ram: tuple[int, int] | None = None
    # mapped-ram: where the bitmap, the pages and the later records begin,
    # in bytes from the stream's first byte (migration/mapped_ram.py).
    mapped_ram: dict[str, int] | None = None

    def encode(self) -> bytes:
        shared = list(self.shared_ram) if self.shared_ram is not None else None
        body = encode_object({"machine": self.machine, "uuid": self.uuid,
                              "multifd": self.multifd, "preempt": self.preempt,
                              "shared-ram": shared, "mapped-ram": self.mapped_ram})
        return HEADER.pack(MAGIC, VERSION, self.page_size, self.ram_size, len(body)) + body


def read_header(reader: Reader) -> Header:
    offset = reader.offset
    magic, version, page_size, ram_size, length = HEADER.unpack(reader.read(HEADER.size))
    if magic != MAGIC:
        raise StreamError(f"not a livemig migration stream (magic {magic!r})", offset)
    if version != VERSION:
        raise StreamError(f"unsupported stream version {version} (expected {VERSION})", offset)
    if length > MAX_DESCRIPTION:
        raise StreamError(f"machine description of {length} bytes is too large", offset)
    body = decode_object(reader.read(length), "machine description", offset)
    machine, uuid, multifd = body.get("machine"), body.get("uuid"), body.get("multifd")
    if not isinstance(machine, dict) or not (uuid is None or isinstance(uuid, str)):
        raise StreamError("malformed machine description", offset)
    if multifd is not None and not (
            isinstance(multifd, dict) and type(multifd.get("channels")) is int
            and isinstance(multifd.get("compression"), str)):
        raise StreamError("malformed multifd settings in the header", offset)
    preempt = body.get("preempt", False)
    if type(preempt) is not bool:
        raise StreamError("malformed postcopy-preempt flag in the header", offset)
    shared = body.get("shared-ram")
    if shared is not None and not (
            isinstance(shared, list) and len(shared) == 2
            and all(type(n) is int and 0 <= n < 1 << 64 for n in shared)):
        raise StreamError("malformed shared-ram identity in the header", offset)
    mapped = body.get("mapped-ram")
    if mapped is not None and not (
            isinstance(mapped, dict) and set(mapped) == {"bitmap", "pages", "records"}
            and all(type(n) is int and 0 <= n < 1 << 62 for n in mapped.values())):
        raise StreamError("malformed mapped-ram layout in the header", offset)
    return Header(page_size, ram_size, machine, uuid, multifd, preempt,
                  tuple(shared) if shared is not None else None, mapped)


@dataclass(frozen=True)
class ChannelHello:
    """Begins each multifd channel: which of the ``count`` channels it is."""

    index: int
    count: int

    def encode(self) -> bytes:
        return HELLO.pack(CHANNEL_MAGIC, self.index, self.count)


def read_hello(reader: Reader) -> ChannelHello:
    offset = reader.offset
    magic, index, count = HELLO.unpack(reader.read(HELLO.size))
    if magic != CHANNEL_MAGIC:
        raise StreamError(f"not a livemig multifd channel (magic {magic!r})", offset)
    if index >= count:
        raise StreamError(f"multifd channel {index} of {count} does not exist", offset)
    return ChannelHello(index, count)


def encode_preempt_hello() -> bytes:
    """Begins the postcopy-preempt channel."""
    return PREEMPT_MAGIC


def read_preempt_hello(reader: Reader) -> None:
    offset = reader.offset
    magic = reader.read(len(PREEMPT_MAGIC))
    if magic != PREEMPT_MAGIC:
        raise StreamError(f"not a livemig postcopy-preempt channel (magic {magic!r})", offset)


@dataclass(frozen=True)
class CprState:
    """All of the cpr channel's one message (cpr-transfer): what each
    descriptor passed with it (SCM_RIGHTS, in this order) is, such as
    ``memory-backend:mem0``, the guest RAM of the backend of that id."""

    names: tuple[str, ...]

    def encode(self) -> bytes:
        body = encode_object({"fds": list(self.names)})
        return CPR.pack(CPR_MAGIC, CPR_VERSION, len(body)) + body


def read_cpr_state(reader: Reader, fds: int) -> CprState:
    """The cpr message, checked against the ``fds`` descriptors that came with it."""
    offset = reader.offset
    magic, version, length = CPR.unpack(reader.read(CPR.size))
    if magic != CPR_MAGIC:
        raise StreamError(f"not a livemig cpr channel (magic {magic!r})", offset)
    if version != CPR_VERSION:
        raise StreamError(f"unsupported cpr state version {version} (expected "
                          f"{CPR_VERSION})", offset)
    if length > MAX_DESCRIPTION:
        raise StreamError(f"cpr state of {length} bytes is too large", offset)
    names = decode_object(reader.read(length), "cpr state", offset).get("fds")
    if (not isinstance(names, list) or len(names) > MAX_CPR_FDS
            or not all(isinstance(n, str) and 0 < len(n) <= 256 for n in names)
            or len(set(names)) != len(names)):
        raise StreamError("malformed cpr state: 'fds' must be a list of distinct names",
                          offset)
    if len(names) != fds:
        raise StreamError(f"cpr state names {len(names)} descriptors but {fds} came "
                          "with it", offset)
    return CprState(tuple(names))


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """A run of ``count`` pages from page ``first``."""

    TAG: ClassVar[int]
    first: int
    count: int

    def encode(self) -> bytes:
        return RUN.pack(self.TAG, self.first, self.count)


@dataclass(frozen=True)
class _TagOnly:
    """A record that is its tag alone."""

    TAG: ClassVar[int]

    def encode(self) -> bytes:
        return bytes([self.TAG])


@dataclass(frozen=True)
class PageRun(_Run):
    """``count`` pages from ``first``; their contents follow the record."""

    TAG: ClassVar[int] = TAG_PAGES


@dataclass(frozen=True)
class ZeroRun(_Run):
    """``count`` pages from ``first`` are all zero (nothing follows)."""

    TAG: ClassVar[int] = TAG_ZERO


@dataclass(frozen=True)
class PageRequest(_Run):
    """Return path: send these pages first (a vCPU waits for them)."""

    TAG: ClassVar[int] = TAG_REQUEST


@dataclass(frozen=True)
class Sync:
    """The source synchronised its dirty log (pass number ``count``)."""

    TAG: ClassVar[int] = TAG_SYNC
    count: int

    def encode(self) -> bytes:
        return RUN.pack(self.TAG, self.count, 0)


@dataclass(frozen=True)
class State:
    """The machine's vCPU and device state, as migration/state.py lays it out."""

    TAG: ClassVar[int] = TAG_STATE
    body: dict[str, Any] = field(hash=False)

    def encode(self) -> bytes:
        data = encode_object(self.body)
        return BLOB.pack(self.TAG, len(data)) + data


@dataclass(frozen=True, eq=False)
class Discard:
    """Pages the destination must drop before postcopy: runs (first, count)."""

    TAG: ClassVar[int] = TAG_DISCARD
    table: np.ndarray  # (n, 2) little-endian u64: first, count

    @classmethod
    def from_runs(cls, starts: np.ndarray, lengths: np.ndarray) -> Discard:
        import numpy as np
        table = np.empty((len(starts), 2), dtype="<u8")
        table[:, 0], table[:, 1] = starts, lengths
        return cls(table)

    def encode(self) -> bytes:
        return COUNT.pack(self.TAG, len(self.table)) + self.table.tobytes()

    def runs(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self.table.tolist()]

    def mask(self, pages: int) -> np.ndarray:
        """One bool per page: True where the page is to be dropped."""
        import numpy as np
        edges = np.zeros(pages + 1, dtype=np.int64)
        starts = self.table[:, 0].astype(np.int64)
        np.add.at(edges, starts, 1)
        np.add.at(edges, starts + self.table[:, 1].astype(np.int64), -1)
        return np.cumsum(edges[:-1]) > 0


@dataclass(frozen=True)
class PagesHeld:
    """Return path, recovery: one bit per page the destination already has."""

    TAG: ClassVar[int] = TAG_HAVE
    bits: bytes

    @classmethod
    def from_mask(cls, placed: np.ndarray) -> PagesHeld:
        import numpy as np
        return cls(np.packbits(placed, bitorder="little").tobytes())

    def encode(self) -> bytes:
        return COUNT.pack(self.TAG, len(self.bits)) + self.bits

    def mask(self, pages: int) -> np.ndarray:
        import numpy as np
        raw = np.frombuffer(self.bits, dtype=np.uint8)
        return np.unpackbits(raw, count=pages, bitorder="little").astype(bool)


@dataclass(frozen=True)
class MultifdFlush:
    """Main channel: barrier ``barrier`` was sent on every multifd channel;
    the destination lets no channel past it until all have reached it."""

    TAG: ClassVar[int] = TAG_MULTIFD_FLUSH
    barrier: int

    def encode(self) -> bytes:
        return COUNT.pack(self.TAG, self.barrier)


@dataclass(frozen=True)
class ChannelSync:
    """Multifd channel: every page before this belongs to barriers up to ``barrier``."""

    TAG: ClassVar[int] = TAG_CHANNEL_SYNC
    barrier: int

    def encode(self) -> bytes:
        return COUNT.pack(self.TAG, self.barrier)


@dataclass(frozen=True)
class CompressedRun:
    """``count`` pages from ``first``, as ``length`` compressed bytes that follow
    (the method is the stream's, from the header)."""

    TAG: ClassVar[int] = TAG_COMPRESSED
    first: int
    count: int
    length: int

    def encode(self) -> bytes:
        return PACKED.pack(self.TAG, self.first, self.count, self.length)


@dataclass(frozen=True)
class DeltaRun:
    """xbzrle: changes to pages ``first`` .. ``first + count`` against the copy
    last sent. ``runs`` little-endian u32 byte offsets (from the first page),
    then ``runs`` u16 lengths, then ``data`` bytes of new contents follow."""

    TAG: ClassVar[int] = TAG_DELTA
    first: int
    count: int
    runs: int
    data: int

    def encode(self) -> bytes:
        return DELTA.pack(self.TAG, self.first, self.count, self.runs, self.data)

    @property
    def body_size(self) -> int:
        return self.runs * 6 + self.data


@dataclass(frozen=True)
class End(_TagOnly):
    """The stream is complete."""

    TAG: ClassVar[int] = TAG_END


@dataclass(frozen=True)
class PostcopyAdvise(_TagOnly):
    """The source may switch to postcopy: the destination prepares userfaultfd."""

    TAG: ClassVar[int] = TAG_POSTCOPY_ADVISE


@dataclass(frozen=True)
class PostcopyRun(_TagOnly):
    """Switchover: register RAM with userfaultfd and run the guest."""

    TAG: ClassVar[int] = TAG_POSTCOPY_RUN


@dataclass(frozen=True)
class Resume(_TagOnly):
    """After a header: this channel recovers a paused postcopy."""

    TAG: ClassVar[int] = TAG_RESUME


@dataclass(frozen=True)
class Done(_TagOnly):
    """Return path: every page is in place; the migration is complete."""

    TAG: ClassVar[int] = TAG_DONE


@dataclass(frozen=True)
class SharedRamAccepted(_TagOnly):
    """Return path, after a header with shared-ram: this destination maps
    that very memory, so the source may stop its guest and hand it over."""

    TAG: ClassVar[int] = TAG_SHARED_RAM_OK


@dataclass(frozen=True)
class CprAccepted(_TagOnly):
    """cpr channel, destination to source: the descriptors are mapped and
    the main channel listens; the source may connect to it."""

    TAG: ClassVar[int] = TAG_CPR_OK


StreamRecord = (PageRun | ZeroRun | Sync | State | End | PostcopyAdvise | Discard
                | PostcopyRun | Resume | MultifdFlush | ChannelSync | CompressedRun | DeltaRun)
ReturnRecord = PageRequest | PagesHeld | Done | SharedRamAccepted | CprAccepted


# --- decoding ----------------------------------------------------------------------------------


def _run(cls: type, what: str) -> Callable[[Reader, Limits, int], Any]:
    def decode(reader: Reader, limits: Limits, offset: int) -> Any:
        _tag, first, count = RUN.unpack(bytes([cls.TAG]) + reader.read(RUN.size - 1))
        limits.check_run(first, count, what, offset)
        return cls(first, count)
    return decode


def _sync(reader: Reader, limits: Limits, offset: int) -> Sync:
    _tag, count, zero = RUN.unpack(bytes([TAG_SYNC]) + reader.read(RUN.size - 1))
    if zero:
        raise StreamError("malformed sync record", offset)
    return Sync(count)


def _barrier(cls: type) -> Callable[[Reader, Limits, int], Any]:
    def decode(reader: Reader, limits: Limits, offset: int) -> Any:
        _tag, barrier = COUNT.unpack(bytes([cls.TAG]) + reader.read(COUNT.size - 1))
        return cls(barrier)
    return decode


def _compressed(reader: Reader, limits: Limits, offset: int) -> CompressedRun:
    _tag, first, count, length = PACKED.unpack(bytes([TAG_COMPRESSED])
                                               + reader.read(PACKED.size - 1))
    limits.check_run(first, count, "compressed run", offset)
    if length > limits.max_compressed(count):
        raise StreamError(f"compressed run of {length} bytes for {count} pages is too large",
                          offset)
    return CompressedRun(first, count, length)


def _delta(reader: Reader, limits: Limits, offset: int) -> DeltaRun:
    _tag, first, count, runs, data = DELTA.unpack(bytes([TAG_DELTA])
                                                  + reader.read(DELTA.size - 1))
    limits.check_run(first, count, "xbzrle run", offset)
    span = count * PAGE_BYTES
    if runs > span or data > span or (runs == 0) != (data == 0):
        raise StreamError(f"xbzrle run of {runs} changes, {data} bytes, does not fit "
                          f"{count} pages", offset)
    return DeltaRun(first, count, runs, data)


def _state(reader: Reader, limits: Limits, offset: int) -> State:
    _tag, length = BLOB.unpack(bytes([TAG_STATE]) + reader.read(BLOB.size - 1))
    if length > limits.max_state:
        raise StreamError(f"state record of {length} bytes is too large", offset)
    return State(decode_object(reader.read(length), "device state", offset))


def _discard(reader: Reader, limits: Limits, offset: int) -> Discard:
    import numpy as np
    _tag, count = COUNT.unpack(bytes([TAG_DISCARD]) + reader.read(COUNT.size - 1))
    if count > limits.ram_pages:
        raise StreamError(f"discard list of {count} runs is too long", offset)
    table = np.frombuffer(reader.read(count * RANGE.size), dtype="<u8").reshape(count, 2)
    starts, lengths = table[:, 0], table[:, 1]
    ends = starts + lengths  # u64: wraps for absurd values, caught by ends < starts
    if count and ((lengths == 0).any() or (ends > limits.ram_pages).any()
                  or (ends < starts).any()):
        raise StreamError("discard list names pages outside guest RAM", offset)
    return Discard(table)


def _have(reader: Reader, limits: Limits, offset: int) -> PagesHeld:
    _tag, length = COUNT.unpack(bytes([TAG_HAVE]) + reader.read(COUNT.size - 1))
    expected = (limits.ram_pages + 7) // 8
    if length != expected:
        raise StreamError(f"return path: page bitmap of {length} bytes, expected {expected}",
                          offset)
    return PagesHeld(reader.read(length))


def _bare_decoder(cls: type) -> Callable[[Reader, Limits, int], Any]:
    return lambda _reader, _limits, _offset: cls()


STREAM_DECODERS: dict[int, Callable[[Reader, Limits, int], Any]] = {
    TAG_PAGES: _run(PageRun, "page run"),
    TAG_ZERO: _run(ZeroRun, "zero run"),
    TAG_SYNC: _sync,
    TAG_STATE: _state,
    TAG_END: _bare_decoder(End),
    TAG_POSTCOPY_ADVISE: _bare_decoder(PostcopyAdvise),
    TAG_DISCARD: _discard,
    TAG_POSTCOPY_RUN: _bare_decoder(PostcopyRun),
    TAG_RESUME: _bare_decoder(Resume),
    TAG_MULTIFD_FLUSH: _barrier(MultifdFlush),
    TAG_CHANNEL_SYNC: _barrier(ChannelSync),
    TAG_COMPRESSED: _compressed,
    TAG_DELTA: _delta,
}
RETURN_DECODERS: dict[int, Callable[[Reader, Limits, int], Any]] = {
    TAG_REQUEST: _run(PageRequest, "return path: the destination asked for pages"),
    TAG_HAVE: _have,
    TAG_DONE: _bare_decoder(Done),
    TAG_SHARED_RAM_OK: _bare_decoder(SharedRamAccepted),
    TAG_CPR_OK: _bare_decoder(CprAccepted),
}


def _read(reader: Reader, limits: Limits,
          decoders: dict[int, Callable[[Reader, Limits, int], Any]], what: str) -> Any:
    offset = reader.offset
    tag = reader.read(1)[0]
    decoder = decoders.get(tag)
    if decoder is None:
        raise StreamError(f"unknown {what} type {tag:#04x}", offset)
    return decoder(reader, limits, offset)


def read_record(reader: Reader, limits: Limits) -> StreamRecord:
    """The next stream record, checked against ``limits``. For a PageRun the
    caller then reads ``count`` pages of contents from the same reader."""
    return _read(reader, limits, STREAM_DECODERS, "record")


def read_return(reader: Reader, limits: Limits) -> ReturnRecord:
    """The next return-path record, checked against ``limits``."""
    return _read(reader, limits, RETURN_DECODERS, "return-path message")
