"""Checks on a guest seen from outside (pmemsave), shared by tests and demo:
the built-in guest's walk, and the workload guest's stamp table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..guest import AB_END, AB_START, PAGE
from ..guest.dirty import BLOCK_ADDRESS, BLOCK_SIZE, MIX_MULT, MIX_STEP, Block, read_block
from .vmm import Vm


@dataclass(frozen=True)
class RamCheck:
    """The built-in guest's invariant: every page's first byte equals the one
    before it, except at most one step down by one (where the walk stopped)."""

    pages: int
    bad_pages: list[int]
    edges: int

    @property
    def ok(self) -> bool:
        return not self.bad_pages and self.edges <= 1

    def describe(self) -> str:
        if self.ok:
            where = ("one counter step, where the walk was" if self.edges
                     else "no counter step: a walk had just ended")
            return f"{self.pages} pages consistent: {where}"
        return (f"inconsistent: {len(self.bad_pages)} bad steps (first pages "
                f"{self.bad_pages[:5]}), {self.edges} edges")


def check_ab_ram(vm: Vm) -> RamCheck:
    """Read [1 MiB, 100 MiB) of a stopped ab guest and check its invariant."""
    data = np.frombuffer(vm.pmem(AB_START, AB_END - AB_START), dtype=np.uint8)
    firsts = data[::PAGE].astype(np.int16)
    steps = (firsts[:-1] - firsts[1:]) % 256
    bad = (np.flatnonzero(steps > 1) + 1 + AB_START // PAGE).tolist()
    return RamCheck(len(firsts), bad, int(np.count_nonzero(steps == 1)))


@dataclass(frozen=True)
class DirtyCheck:
    """The workload guest's invariant: every page's stamp equals its entry
    in the guest's stamp table, except at most one page (written, not yet
    recorded when the guest stopped); with whole-page writes, every page's
    fill is what its stamp says it must be."""

    pages: int
    written: int
    mismatched: list[int]
    bad_fill: list[int]

    @property
    def ok(self) -> bool:
        return len(self.mismatched) <= 1 and not self.bad_fill

    def describe(self) -> str:
        if self.ok:
            return (f"{self.pages} pages consistent ({self.written} written, "
                    f"{len(self.mismatched)} in flight)")
        return (f"inconsistent: {len(self.mismatched)} stamps differ from the table "
                f"(first pages {self.mismatched[:5]}), {len(self.bad_fill)} bad fills "
                f"(first {self.bad_fill[:5]})")


_FILL_CHUNK = 4096  # pages whose fill is recomputed per numpy step


def dirty_block(vm: Vm) -> Block:
    """The workload guest's parameter block, read from its RAM."""
    return read_block(vm.pmem(BLOCK_ADDRESS, BLOCK_SIZE))


def dirty_writes(vm: Vm, block: Block | None = None) -> int:
    """How many page writes the workload guest has made (its highest stamp)."""
    block = block or dirty_block(vm)
    table = np.frombuffer(vm.pmem(block.table, block.pages * 4), dtype="<u4")
    return int(table.max())


def check_dirty_ram(vm: Vm) -> DirtyCheck:
    """Check a stopped workload guest's RAM against its stamp table."""
    block = dirty_block(vm)
    table = np.frombuffer(vm.pmem(block.table, block.pages * 4), dtype="<u4")
    data = vm.pmem(block.base, block.pages * PAGE)
    if block.write_bytes == 1:
        stamps = np.frombuffer(data, dtype=np.uint8)[::PAGE]
        wrong = stamps != (table & 0xFF).astype(np.uint8)
    else:
        words = np.frombuffer(data, dtype="<u4").reshape(block.pages, PAGE // 4)
        wrong = words[:, 0] != table
    mismatched = np.flatnonzero(wrong).tolist()
    bad_fill: list[int] = []
    fill = block.write_bytes // 4 - 1
    if block.write_bytes > 4 and fill > 0:
        steps = np.arange(1, fill + 1, dtype=np.uint64)[None, :] * MIX_STEP
        checked = (table != 0) & ~wrong
        for first in range(0, block.pages, _FILL_CHUNK):  # bounds the temporaries
            end = min(first + _FILL_CHUNK, block.pages)
            x = ((table[first:end].astype(np.uint64)[:, None] + steps)
                 & 0xFFFFFFFF).astype(np.uint32)
            x ^= x >> np.uint32(16)
            x *= np.uint32(MIX_MULT)
            x ^= x >> np.uint32(13)
            differs = (words[first:end, 1:fill + 1] != x).any(axis=1) & checked[first:end]
            bad_fill += (np.flatnonzero(differs) + first).tolist()
    return DirtyCheck(block.pages, int(np.count_nonzero(table)), mismatched, bad_fill)


def dirty_write_rate(vm: Vm, seconds: float = 2.0) -> float:
    """The workload guest's page writes per second as MiB/s, over ``seconds``
    (each read of its stamp table is timed at its midpoint)."""
    import time

    block = dirty_block(vm)

    def sample() -> tuple[int, float]:
        before = time.perf_counter()
        writes = dirty_writes(vm, block)
        return writes, (before + time.perf_counter()) / 2

    w0, t0 = sample()
    time.sleep(seconds)  # a measuring window, not a synchronisation
    w1, t1 = sample()
    return (w1 - w0) * PAGE / (1 << 20) / (t1 - t0)
