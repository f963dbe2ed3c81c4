"""Shared pieces of the benchmarks: which VMMs, alternating runs, ratio tables."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from livemig.lab import (
    LIVEMIG_BINARY,
    QEMU_BINARY,
    VmmKind,
    find_binary,
    kvm_usable,
)

console = Console()


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --runs and --accel."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accel", nargs="+", default=["tcg", "kvm"])
    return parser


def kinds(accel: str) -> tuple[VmmKind, VmmKind | None]:
    """livemig and (if installed) QEMU with the same accelerator."""
    livemig = find_binary(LIVEMIG_BINARY)
    if livemig is None:
        raise SystemExit(f"{LIVEMIG_BINARY} is not installed")
    qemu = find_binary(QEMU_BINARY)
    return (VmmKind(f"livemig-{accel}", livemig, accel),
            VmmKind(f"qemu-{accel}", qemu, accel) if qemu else None)


def engine_vmms() -> list[str]:
    """The ``--vmm`` list for the bench engine (lab/bench.py): livemig, then
    QEMU where installed."""
    return ["livemig", *(["qemu-system-x86_64"] if find_binary(QEMU_BINARY) else [])]


def accelerators(requested: list[str]) -> list[str]:
    out = []
    for accel in requested:
        if accel not in ("tcg", "kvm"):
            console.print(f"[yellow]unknown accelerator {accel}: skipped[/yellow]")
            continue
        if accel == "kvm" and (problem := kvm_usable()) is not None:
            console.print(f"[yellow]skipping kvm: {problem}[/yellow]")
            continue
        out.append(accel)
    return out


Sample = dict[str, float]


def alternate(runs: int, livemig: Callable[[], Sample],
              qemu: Callable[[], Sample] | None) -> tuple[list[Sample], list[Sample]]:
    """Run livemig and QEMU in turn ``runs`` times each."""
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for _ in range(runs):
        ours.append(livemig())
        if qemu is not None:
            theirs.append(qemu())
    return ours, theirs


def compare(runs: int, accel: str, sample: Callable[[VmmKind], Sample]
            ) -> tuple[list[Sample], list[Sample]]:
    """``sample`` on livemig and (if installed) QEMU with ``accel``, in turn."""
    ours, theirs = kinds(accel)
    return alternate(runs, lambda: sample(ours),
                     (lambda: sample(theirs)) if theirs is not None else None)


def report(title: str, ours: list[dict[str, float]], theirs: list[dict[str, float]] | None,
           units: dict[str, str]) -> None:
    """Medians of each metric and livemig/QEMU ratios (``theirs`` None: QEMU
    has no equivalent; empty: QEMU is not installed)."""
    table = Table(title=title)
    for column in ("metric", "livemig (median)", "QEMU (median)", "livemig / QEMU"):
        table.add_column(column, justify="right")
    for metric, unit in units.items():
        mine = statistics.median(r[metric] for r in ours)
        if theirs:
            other = statistics.median(r[metric] for r in theirs)
            ratio = f"{mine / other:.2f}x" if other else "n/a"
            table.add_row(metric, f"{mine:,.2f} {unit}", f"{other:,.2f} {unit}", ratio)
        else:
            table.add_row(metric, f"{mine:,.2f} {unit}",
                          "no equivalent" if theirs is None else "not installed", "")
    console.print(table)
