"""The workload guest: a boot sector that dirties a working set at a chosen
rate and pattern (dirty_bootsect.S says what it does, step by step).

Its knobs are a parameter block at a fixed offset of the sector; this module
reads and writes that block. The block is also guest RAM, so a check can
read it back from a running or migrated guest and know what it is looking at.

Layout (version 1, little-endian), at sector offset 0x1da (guest 0x7dda):

=======  ====  ===========  ================================================
offset   size  field        meaning
=======  ====  ===========  ================================================
0x00     4     magic        ``LVDG``
0x04     1     version      1
0x05     1     pattern      0 sequential, 1 random, 2 hotcold
0x06     2     write_bytes  1 (a one-byte stamp) or 4..4096, a multiple of 4
0x08     4     base         first byte of the working set (1 MiB)
0x0c     4     pages        pages in the working set
0x10     4     hot_pages    hotcold: the first N pages are hot
0x14     4     hot_thresh   hotcold: P(a write goes to the hot set) * 65536
0x18     4     ticks        TSC ticks per page write (0: as fast as it can)
0x1c     4     table        the stamp table: one u32 per page, right after the
                            set (the guest zeroes both at boot)
0x20     4     rng          xorshift32 state (the seed, then the guest's)
=======  ====  ===========  ================================================
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from importlib import resources

PAGE = 4096
BLOCK_OFFSET = 0x1da                 # in the sector
BLOCK_ADDRESS = 0x7c00 + BLOCK_OFFSET  # in guest memory
_BLOCK = struct.Struct("<4sBBHIIIIIII")
BLOCK_SIZE = _BLOCK.size
MAGIC = b"LVDG"
VERSION = 1
BASE = 1 << 20
PATTERNS = ("sequential", "random", "hotcold")
MIX_STEP = 0x9E3779B9   # the fill: mix(seq + i * MIX_STEP), see dirty_bootsect.S
MIX_MULT = 0x85EBCA6B


@dataclass(frozen=True)
class DirtyParams:
    """What the workload guest does. ``rate``: MiB of pages dirtied per
    second (None: as fast as it can); ``write_bytes``: bytes written per page."""

    wss_mib: int = 64
    rate: float | None = None
    pattern: str = "sequential"
    hot_fraction: float = 0.1        # hotcold: the share of the set that is hot
    hot_probability: float = 0.9     # hotcold: the share of writes that go there
    write_bytes: int = 1
    seed: int = 0x2545F491

    def __post_init__(self) -> None:
        if self.wss_mib < 1 or self.wss_mib > 3000:
            raise ValueError(f"--wss must be 1..3000 MiB, not {self.wss_mib}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"--rate must be positive (or 'max'), not {self.rate}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"--pattern must be one of {', '.join(PATTERNS)}")
        if not 0 < self.hot_fraction < 1:
            raise ValueError(f"--hot-fraction must be between 0 and 1, not {self.hot_fraction}")
        if not 0 < self.hot_probability < 1:
            raise ValueError("the hot probability must be between 0 and 1")
        if self.write_bytes != 1 and (self.write_bytes % 4 or not 4 <= self.write_bytes <= PAGE):
            raise ValueError(f"--write must be 1 or a multiple of 4 up to {PAGE}, "
                             f"not {self.write_bytes}")
        if not self.seed & 0xFFFFFFFF:
            raise ValueError("the seed must not be 0 (xorshift32 would stay at 0)")

    @property
    def pages(self) -> int:
        return self.wss_mib * (1 << 20) // PAGE

    @property
    def hot_pages(self) -> int:
        return max(1, min(self.pages - 1, int(self.pages * self.hot_fraction)))

    @property
    def table(self) -> int:
        return BASE + self.pages * PAGE

    @property
    def ram_needed(self) -> int:
        """The least guest RAM (-m) that holds the set and its table."""
        return self.table + self.pages * 4


def image(params: DirtyParams, tsc_hz: float | None = None) -> bytes:
    """The boot sector for ``params``; ``tsc_hz`` (measured if None and a rate
    is asked for) turns the rate into TSC ticks per page write."""
    sector = bytearray(resources.files(__package__).joinpath("dirty_bootsect.bin")
                       .read_bytes())
    if params.rate is None:
        ticks = 0
    else:
        hz = tsc_hz if tsc_hz is not None else measure_tsc_hz()
        pages_per_s = params.rate * (1 << 20) / PAGE
        ticks = max(1, round(hz / pages_per_s))
        if ticks >= 1 << 32:
            raise ValueError(f"--rate {params.rate} MiB/s is too slow to pace")
    block = _BLOCK.pack(MAGIC, VERSION, PATTERNS.index(params.pattern), params.write_bytes,
                        BASE, params.pages, params.hot_pages,
                        round(params.hot_probability * 65536), ticks,
                        params.table, params.seed & 0xFFFFFFFF)
    if sector[BLOCK_OFFSET:BLOCK_OFFSET + 4] != MAGIC:
        raise RuntimeError("dirty_bootsect.bin has no parameter block where expected")
    sector[BLOCK_OFFSET:BLOCK_OFFSET + BLOCK_SIZE] = block
    return bytes(sector)


@dataclass(frozen=True)
class Block:
    """A parameter block as read back from an image or from guest RAM."""

    pattern: int
    write_bytes: int
    base: int
    pages: int
    hot_pages: int
    hot_thresh: int
    ticks: int
    table: int
    rng: int


def read_block(data: bytes) -> Block:
    """Parse a parameter block (``data`` starts at it)."""
    fields = _BLOCK.unpack_from(data)
    if fields[0] != MAGIC or fields[1] != VERSION:
        raise ValueError(f"no workload-guest parameter block (magic {fields[0]!r}, "
                         f"version {fields[1]})")
    return Block(*fields[2:])


def measure_tsc_hz(interval: float = 0.2) -> float:
    """The host's TSC rate, as a guest sees it: two ``rdtsc`` run by Unicorn
    (whose rdtsc is the host's, as under QEMU's TCG and KVM), ``interval``
    seconds of wall clock apart."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_EDX

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\x31")  # rdtsc

    def read() -> tuple[int, float]:
        uc.emu_start(0x1000, 0x1002)
        now = time.perf_counter()
        return (uc.reg_read(UC_X86_REG_EDX) << 32) | uc.reg_read(UC_X86_REG_EAX), now

    t0, w0 = read()
    time.sleep(interval)
    t1, w1 = read()
    return (t1 - t0) / (w1 - w0)
