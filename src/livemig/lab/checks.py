"""Checks on a guest seen from outside (pmemsave), shared by tests and demo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..guest import AB_END, AB_START, PAGE
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
            return f"{self.pages} pages consistent ({self.edges} edge)"
        return (f"inconsistent: {len(self.bad_pages)} bad steps (first pages "
                f"{self.bad_pages[:5]}), {self.edges} edges")


def check_ab_ram(vm: Vm) -> RamCheck:
    """Read [1 MiB, 100 MiB) of a stopped ab guest and check its invariant."""
    data = np.frombuffer(vm.pmem(AB_START, AB_END - AB_START), dtype=np.uint8)
    firsts = data[::PAGE].astype(np.int16)
    steps = (firsts[:-1] - firsts[1:]) % 256
    bad = (np.flatnonzero(steps > 1) + 1 + AB_START // PAGE).tolist()
    return RamCheck(len(firsts), bad, int(np.count_nonzero(steps == 1)))
