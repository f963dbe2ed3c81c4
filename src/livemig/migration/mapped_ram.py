"""mapped-ram: a ``file:`` stream in which every page has a fixed place.

From the stream's first byte (the URI's offset), the file holds::

    header    the stream header; its mapped-ram field says where the rest begins
    bitmap    at B (4 KiB-aligned): one bit per page, set when the page's
              contents are in the file (little-endian bit order)
    pages     at P (1 MiB-aligned): page i at P + i * 4096, written in place
              by every pass (a page never sent is a hole)
    records   at E = P + RAM: the rest of the stream (syncs, the state, end)

So a saved image is at most header + bitmap + RAM + state, whatever the
number of passes, and a restore reads each present page once, straight
into guest RAM. A page found zero by a later pass loses its bit: the
restore leaves it zero whatever the file still holds there.

With multifd, ``multifd-channels`` threads write (and, on the destination,
read) at once: as QEMU 9's multifd channels do on a mapped-ram file.
Writes within a pass name distinct pages; the job waits for all of them
(:meth:`MappedRamWriter.flush`) before a page can be written again.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from ..errors import StreamError, StreamTruncated
from ..memory import PAGE_SIZE, GuestRam
from .pages import nonzero_pages, runs

BITMAP_ALIGN = 4096
PAGES_ALIGN = 1 << 20
HEADER_SLACK = 4096  # room the header's own mapped-ram field may take


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


class Layout(NamedTuple):
    """Where the regions begin, in bytes from the stream's first byte."""

    bitmap: int
    pages: int
    records: int

    @classmethod
    def after_header(cls, header_bytes: int, ram_pages: int) -> Layout:
        """The layout for a header of about ``header_bytes`` (before its
        mapped-ram field, for which HEADER_SLACK is left)."""
        bitmap = _align(header_bytes + HEADER_SLACK, BITMAP_ALIGN)
        pages = _align(bitmap + bitmap_bytes(ram_pages), PAGES_ALIGN)
        return cls(bitmap, pages, pages + ram_pages * PAGE_SIZE)

    def to_wire(self) -> dict[str, int]:
        return {"bitmap": self.bitmap, "pages": self.pages, "records": self.records}

    @classmethod
    def from_wire(cls, value: dict[str, int], header_end: int, ram_pages: int,
                  offset: int) -> Layout:
        """Checked: the regions follow the header and each other, in order
        (the codec checked the field's shape)."""
        layout = cls(value["bitmap"], value["pages"], value["records"])
        if not (header_end <= layout.bitmap
                and layout.bitmap + bitmap_bytes(ram_pages) <= layout.pages
                and layout.records == layout.pages + ram_pages * PAGE_SIZE):
            raise StreamError(f"mapped-ram layout {layout.to_wire()} does not fit a RAM of "
                              f"{ram_pages} pages after a header ending at {header_end}",
                              offset)
        return layout


def bitmap_bytes(ram_pages: int) -> int:
    return (ram_pages + 7) // 8


def _pwrite_all(fd: int, data: memoryview, where: int) -> None:
    while len(data):
        done = os.pwrite(fd, data, where)
        data, where = data[done:], where + done


class MappedRamWriter:
    """The source's side: pages written in place (by ``threads`` writers),
    the bitmap at the end."""

    def __init__(self, fd: int, base: int, layout: Layout, ram: GuestRam,
                 threads: int = 1) -> None:
        self._fd, self._base, self.layout, self._ram = fd, base, layout, ram
        self.present = np.zeros(ram.pages, dtype=bool)
        self._pool = (ThreadPoolExecutor(threads, thread_name_prefix="mapped-ram")
                      if threads > 1 else None)
        self._threads = threads
        self._pending: deque[Future[None]] = deque()

    def start_records(self) -> None:
        """Later sequential writes (syncs, state, end) go after the pages."""
        os.lseek(self._fd, self._base + self.layout.records, os.SEEK_SET)

    def write_chunk(self, first: int, dirty: np.ndarray, detect_zero: bool
                    ) -> tuple[int, int, int]:
        """Write the dirty pages of the chunk at ``first`` in place; return
        (zero pages, pages written, bytes written)."""
        if detect_zero:
            nonzero = nonzero_pages(self._ram, first, dirty)
        else:
            nonzero = np.ones(len(dirty), dtype=bool)
        zero = dirty & ~nonzero
        normal = dirty & nonzero
        present = self.present[first:first + len(dirty)]
        present[zero] = False
        present[normal] = True
        view = self._ram.view
        start_of_pages = self._base + self.layout.pages
        for start, count in zip(*runs(normal), strict=True):
            page = first + int(start)
            span = slice(page * PAGE_SIZE, (page + int(count)) * PAGE_SIZE)
            where = start_of_pages + page * PAGE_SIZE
            if self._pool is None:
                _pwrite_all(self._fd, view[span], where)
                continue
            while len(self._pending) >= 2 * self._threads:  # a short queue: the
                self._pending.popleft().result()           # rate limit stays true
            self._pending.append(self._pool.submit(_pwrite_all, self._fd, view[span], where))
        written = int(normal.sum())
        return int(zero.sum()), written, written * PAGE_SIZE

    def flush(self) -> None:
        """Wait until every page handed over so far is in the file (the end
        of a pass); a failed write is raised here."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()

    def finish(self) -> int:
        """Write the bitmap (after the last pass); return its size."""
        self.flush()
        bits = np.packbits(self.present, bitorder="little")
        _pwrite_all(self._fd, memoryview(bits.tobytes()), self._base + self.layout.bitmap)
        return len(bits)


def load(fd: int, base: int, layout: Layout, ram: GuestRam, threads: int = 1) -> int:
    """The destination's side: read the bitmap, then every present page
    straight into RAM (``threads`` readers, each a share of the runs);
    absent pages are made zero. Returns the pages read. A file
    that ends early is a StreamTruncated at the offset (from the stream's
    first byte) where it ends."""
    need = bitmap_bytes(ram.pages)
    bitmap = os.pread(fd, need, base + layout.bitmap)
    if len(bitmap) != need:
        raise StreamTruncated("mapped-ram file ends inside its page bitmap",
                              layout.bitmap + len(bitmap))
    present = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8),
                            bitorder="little")[:ram.pages].astype(bool)
    for start, count in zip(*runs(~present), strict=True):
        ram.zero(int(start) * PAGE_SIZE, int(count) * PAGE_SIZE)
    starts, counts = runs(present)
    # Long runs are cut so that every reader gets a share.
    pieces = [(int(a) + done, min(int(n) - done, _READ_PIECE))
              for a, n in zip(starts, counts, strict=True)
              for done in range(0, int(n), _READ_PIECE)]
    if threads <= 1 or len(pieces) < 2:
        for first, count in pieces:
            _read_pages(fd, base, layout, ram, first, count)
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="mapped-ram") as pool:
            for done in [pool.submit(_read_pages, fd, base, layout, ram, *piece)
                         for piece in pieces]:
                done.result()
    return int(present.sum())


_READ_PIECE = 1024  # pages: 4 MiB a read


def _read_pages(fd: int, base: int, layout: Layout, ram: GuestRam, first: int,
                count: int) -> None:
    where = layout.pages + first * PAGE_SIZE
    target = ram.view[first * PAGE_SIZE:(first + count) * PAGE_SIZE]
    while len(target):
        got = os.preadv(fd, [target], base + where)
        if not got:
            raise StreamTruncated(f"mapped-ram file ends inside page "
                                  f"{(where - layout.pages) // PAGE_SIZE}", where)
        target, where = target[got:], where + got
