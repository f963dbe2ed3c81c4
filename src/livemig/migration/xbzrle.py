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
        """Records for the dirty pages of one chunk: (buffers, zero pages, whole pages).

        Two steps keep it quick: a compare of 8-byte words over the whole
        chunk, then a byte compare of the few words that changed."""
        span = len(dirty)
        pages = first + np.flatnonzero(dirty)
        snap = self._pages[pages]                       # the copy: what is sent is cached
        snap64 = snap.view(np.uint64)
        nonzero = snap64.any(axis=1)
        slots = pages & self._mask
        hit = nonzero & (self._owner[slots] == pages)
        whole = nonzero & ~hit                          # misses; overflows join below
        buffers: list[bytes | memoryview] = []
        hit_rows = np.flatnonzero(hit)
        if len(hit_rows):
            old64 = self._data.view(np.uint64)[slots[hit_rows]]
            rows, words = np.nonzero(snap64[hit_rows] != old64)
            new_words = snap64[hit_rows[rows], words]
            changed = (new_words ^ old64[rows, words]).view(np.uint8).reshape(-1, 8) != 0
            which, byte = np.nonzero(changed)
            page_of = pages[hit_rows[rows[which]]] - first          # page within the chunk
            position = page_of * PAGE_SIZE + words[which] * 8 + byte
            values = new_words.view(np.uint8).reshape(-1, 8)[which, byte]
            # a run: consecutive positions within one page
            breaks = np.flatnonzero((np.diff(position) != 1) | (position[1:] % PAGE_SIZE == 0))
            begin = np.concatenate(([0], breaks + 1)) if len(position) else breaks
            lengths = np.diff(np.append(begin, len(position)))
            offsets = position[begin]
            run_page = offsets // PAGE_SIZE
            cost = np.bincount(run_page, weights=lengths + RUN_COST, minlength=span)
            overflow = cost >= PAGE_SIZE
            if overflow.any():
                whole[np.isin(pages - first, np.flatnonzero(overflow))] = True
                keep_run = ~overflow[run_page]
                values = values[~overflow[page_of]]
                offsets, lengths = offsets[keep_run], lengths[keep_run]
            if len(offsets):
                record = DeltaRun(first, span, len(offsets), len(values))
                buffers += [record.encode(), offsets.astype("<u4").tobytes(),
                            lengths.astype("<u2").tobytes(), values.tobytes()]
            self.stats.pages += int(((cost > 0) & ~overflow).sum())
            self.stats.overflow += int(overflow.sum())
            self.stats.bytes += (sum(len(b) for b in buffers)
                                 + int(overflow.sum()) * PAGE_SIZE)

        for row0, count in _groups(pages, np.flatnonzero(~nonzero)):
            buffers.append(ZeroRun(int(pages[row0]), count).encode())
        rows_whole = np.flatnonzero(whole)
        for row0, count in _groups(pages, rows_whole):
            buffers += [PageRun(int(pages[row0]), count).encode(),
                        memoryview(snap[row0:row0 + count]).cast("B")]
        self._data[slots] = snap
        self._owner[slots] = pages
        self.stats.cache_miss += int((nonzero & ~hit).sum())
        self.stats._checked += int(nonzero.sum())
        return buffers, int((~nonzero).sum()), len(rows_whole)


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
