"""xbzrle: send a page again as its changes against the copy last sent.

The source keeps a cache of ``xbzrle-cache-size`` bytes of pages as they
were last sent, one slot per page number modulo the slot count (a
direct-mapped cache, as QEMU's). From the second pass on, as QEMU does, a
dirty page that is in the cache goes as the runs of bytes that differ from
the cached copy; a page not in the cache (a miss) goes whole, and enters
the cache; a page whose runs would cost a page or more (an overflow) goes
whole. A page written but unchanged costs nothing. The destination's RAM
already holds the copy last sent, so it needs no cache: it writes the new
bytes in place.

Everything works on whole chunks with numpy: one snapshot copy of the
chunk's dirty pages (so the bytes sent, the bytes cached and the bytes
compared are the same, whatever the guest writes meanwhile), one compare,
one run search over the whole chunk.

Wire form (codec.DeltaRun): per chunk, u32 byte offsets of the runs from
the chunk's first page, u16 run lengths (a run never crosses a page), then
the runs' new bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import StreamError
from ..memory import PAGE_SIZE, GuestRam
from .codec import DeltaRun, PageRun, Reader, ZeroRun

RUN_COST = 6  # bytes of overhead per run: u32 offset, u16 length


@dataclass
class XbzrleStats:
    """query-migrate's ``xbzrle-cache``, in QEMU's names and units."""

    cache_size: int = 0
    bytes: int = 0
    pages: int = 0
    cache_miss: int = 0
    cache_miss_rate: float = 0.0
    encoding_rate: float = 0.0
    overflow: int = 0
    # the period behind the rates (one pass)
    _checked: int = 0
    _period_miss: int = 0
    _period_pages: int = 0
    _period_bytes: int = 0

    def end_period(self) -> None:
        """At each dirty sync, as QEMU's rates: over the pass just ended."""
        if self._checked:
            self.cache_miss_rate = (self.cache_miss - self._period_miss) / self._checked
        pages, sent = self.pages - self._period_pages, self.bytes - self._period_bytes
        self.encoding_rate = pages * PAGE_SIZE / sent if pages and sent else 0.0
        self._checked = 0
        self._period_miss, self._period_pages = self.cache_miss, self.pages
        self._period_bytes = self.bytes

    def to_qmp(self) -> dict[str, object]:
        return {"cache-size": self.cache_size, "bytes": self.bytes, "pages": self.pages,
                "cache-miss": self.cache_miss,
                "cache-miss-rate": round(self.cache_miss_rate, 6),
                "encoding-rate": round(self.encoding_rate, 6), "overflow": self.overflow}


class XbzrleEncoder:
    """The source's cache and the encoding of one chunk at a time."""

    def __init__(self, ram: GuestRam, cache_size: int) -> None:
        self._ram = ram
        self.stats = XbzrleStats(cache_size=cache_size)
        self._pages = ram.array.reshape(ram.pages, PAGE_SIZE)
        self.resize(cache_size)

    def resize(self, cache_size: int) -> None:
        """A new, empty cache (xbzrle-cache-size changed, or the start)."""
        slots = max(1, cache_size // PAGE_SIZE)  # a power of two: params checks it
        self._mask = slots - 1
        self._data = np.zeros((slots, PAGE_SIZE), dtype=np.uint8)  # pages on first touch
        self._owner = np.full(slots, -1, dtype=np.int64)
        self.stats.cache_size = cache_size

    def chunk(self, first: int, dirty: np.ndarray) -> tuple[list[bytes | memoryview], int, int]:
        """Records for the dirty pages of one chunk: (buffers, zero pages, whole pages)."""
        pages = first + np.flatnonzero(dirty)
        snap = self._pages[pages]                       # the copy: what is sent is cached
        nonzero = snap.view(np.uint64).any(axis=1)
        slots = pages & self._mask
        hit = nonzero & (self._owner[slots] == pages)
        miss_count = int((nonzero & ~hit).sum())

        whole = nonzero & ~hit                          # misses, and overflows below
        buffers: list[bytes | memoryview] = []
        delta_bytes = 0
        hit_rows = np.flatnonzero(hit)
        if len(hit_rows):
            changed = snap[hit_rows] != self._data[slots[hit_rows]]
            edges = np.diff(changed.view(np.int8), axis=1, prepend=0, append=0)
            rows, starts = np.nonzero(edges == 1)
            _rows, ends = np.nonzero(edges == -1)
            lengths = ends - starts
            cost = np.bincount(rows, weights=lengths + RUN_COST, minlength=len(hit_rows))
            overflow = cost >= PAGE_SIZE
            whole[hit_rows[overflow]] = True
            keep = ~overflow[rows]
            rows, starts, lengths = rows[keep], starts[keep], lengths[keep]
            encoded = int(((cost > 0) & ~overflow).sum())
            if len(rows):
                offsets = (pages[hit_rows[rows]] - first) * PAGE_SIZE + starts
                data = snap[hit_rows][changed & ~overflow[:, None]]
                record = DeltaRun(first, len(dirty), len(rows), len(data))
                buffers += [record.encode(), offsets.astype("<u4").tobytes(),
                            lengths.astype("<u2").tobytes(), data.tobytes()]
                delta_bytes = sum(len(b) for b in buffers)
            self.stats.pages += encoded
            self.stats.overflow += int(overflow.sum())
            self.stats.bytes += delta_bytes + int(overflow.sum()) * PAGE_SIZE

        zero = ~nonzero
        for row0, count in _groups(pages, np.flatnonzero(zero)):
            buffers.append(ZeroRun(int(pages[row0]), count).encode())
        rows_whole = np.flatnonzero(whole)
        for row0, count in _groups(pages, rows_whole):
            buffers += [PageRun(int(pages[row0]), count).encode(),
                        memoryview(snap[row0:row0 + count]).cast("B")]
        self._data[slots] = snap
        self._owner[slots] = pages
        self.stats.cache_miss += miss_count
        self.stats._checked += int(nonzero.sum())
        return buffers, int(zero.sum()), len(rows_whole)


def _groups(pages: np.ndarray, rows: np.ndarray) -> list[tuple[int, int]]:
    """(first row, count) of each run of ``rows`` whose page numbers are consecutive."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(pages[rows]) != 1) + 1
    return [(int(group[0]), len(group)) for group in np.split(rows, breaks)]


def apply_delta(ram: GuestRam, record: DeltaRun, reader: Reader) -> None:
    """The destination: read a DeltaRun's body and write its bytes in place."""
    offset = reader.offset
    offsets = np.frombuffer(reader.read(record.runs * 4), dtype="<u4").astype(np.int64)
    lengths = np.frombuffer(reader.read(record.runs * 2), dtype="<u2").astype(np.int64)
    data = np.frombuffer(reader.read(record.data), dtype=np.uint8)
    span = record.count * PAGE_SIZE
    if record.runs and ((lengths == 0).any() or int(lengths.sum()) != record.data
                        or int((offsets + lengths).max()) > span):
        raise StreamError("malformed xbzrle run: its changes do not fit its pages", offset)
    if not record.runs:
        return
    begins = np.cumsum(lengths) - lengths
    positions = np.repeat(offsets - begins, lengths) + np.arange(record.data)
    base = record.first * PAGE_SIZE
    # Safe: the codec checked the run lies in RAM; positions < span was checked above.
    ram.array[base:base + span][positions] = data
