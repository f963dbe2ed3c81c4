"""Turning a dirty-page mask into stream records, and the reverse checks.

Everything works on runs of pages found with numpy: a pass over 25,000
dirty pages costs a few dozen Python operations per 4 MiB chunk, never one
per page.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..memory import PAGE_SIZE, GuestRam
from ..memory.page_runs import runs
from .codec import CompressedRun, PageRun, ZeroRun

__all__ = ["CHUNK_PAGES", "DOWNTIME_CHUNK_PAGES", "ChunkRecords", "nonzero_pages", "runs"]

CHUNK_PAGES = 1024  # 4 MiB: the unit of rate limiting and cancellation checks
DOWNTIME_CHUNK_PAGES = 16384  # 64 MiB: while the guest is stopped, fewer, larger sends
_WORDS = PAGE_SIZE // 8


def nonzero_pages(ram: GuestRam, first: int, dirty: np.ndarray) -> np.ndarray:
    """Which dirty pages of the chunk at ``first`` are not all zero.

    Only dirty pages are read (a later pass leaves most of a chunk clean).
    A page whose first word is not zero is not a zero page: only the others
    are read in full, so a chunk of data is read once (by the send), not
    twice; the full reads are an OR-reduction, about twice numpy's any().
    """
    words = ram.array[first * PAGE_SIZE:(first + len(dirty)) * PAGE_SIZE]
    pages = words.view(np.uint64).reshape(len(dirty), _WORDS)
    nonzero = dirty & (pages[:, 0] != 0)
    doubtful = np.flatnonzero(dirty & ~nonzero)
    if len(doubtful) == len(dirty):
        return np.bitwise_or.reduce(pages, axis=1) != 0
    if len(doubtful):
        nonzero[doubtful] = np.bitwise_or.reduce(pages[doubtful], axis=1) != 0
    return nonzero


class ChunkRecords:
    """The records for one chunk of a dirty mask: buffers to gather-send.
    ``compress``: each run of non-zero pages goes as one compressed run
    (multifd-compression) instead of as it is."""

    __slots__ = ("buffers", "nbytes", "normal", "zero")

    def __init__(self, ram: GuestRam, first: int, dirty: np.ndarray,
                 detect_zero: bool = True,
                 compress: Callable[[memoryview], bytes] | None = None) -> None:
        if detect_zero:
            nonzero = nonzero_pages(ram, first, dirty)
        else:
            nonzero = np.ones(len(dirty), dtype=bool)
        zero = dirty & ~nonzero
        normal = dirty & nonzero
        self.buffers: list[bytes | memoryview] = []
        for start, count in zip(*runs(zero), strict=True):
            self.buffers.append(ZeroRun(first + int(start), int(count)).encode())
        for start, count in zip(*runs(normal), strict=True):
            page = first + int(start)
            contents = ram.view[page * PAGE_SIZE:(page + int(count)) * PAGE_SIZE]
            if compress is None:
                self.buffers += [PageRun(page, int(count)).encode(), contents]
            else:
                packed = compress(contents)
                self.buffers += [CompressedRun(page, int(count), len(packed)).encode(), packed]
        self.zero = int(zero.sum())
        self.normal = int(normal.sum())
        self.nbytes = sum(len(b) for b in self.buffers)
