"""Where a local VM's vCPU threads spent a stretch of time, from the
kernel's own per-thread accounting (``/proc/PID/task/TID/schedstat``:
nanoseconds on a CPU, nanoseconds waiting in the run queue).

Why the lab wants it: ``postcopy-blocktime`` is each VMM's own account of
how long its vCPUs waited for missing pages, and two VMMs count it
differently (what they time from, what they leave out). Time a vCPU spent
neither running nor waiting to run is time it slept; measured the same way
on every VMM, it is a figure the two can be compared on. It needs the VMM
on this host and its vCPU threads named (``-name debug-threads=on``, which
the lab passes): ``CPU n/TCG`` or ``CPU n/KVM``, QEMU's names and livemig's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple


class VcpuSample(NamedTuple):
    at: float                # time.monotonic() when taken
    on_cpu_ns: int           # summed over the vCPU threads
    queued_ns: int
    threads: int


def sample(pid: int) -> VcpuSample | None:
    """The vCPU threads' totals now; None if they cannot be read here."""
    on_cpu = queued = threads = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            if not (task / "comm").read_text().startswith("CPU "):
                continue
            cpu, wait, _slices = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # a thread that just ended, or no schedstat in this kernel
        on_cpu += int(cpu)
        queued += int(wait)
        threads += 1
    return VcpuSample(time.monotonic(), on_cpu, queued, threads) if threads else None


def asleep_ms(first: VcpuSample | None, last: VcpuSample | None,
              not_running_s: float = 0.0) -> float | None:
    """Per vCPU, the milliseconds between two samples it spent asleep,
    less ``not_running_s`` during which the guest was not meant to run
    (a switchover's pause). None if either sample is missing."""
    if first is None or last is None or first.threads != last.threads:
        return None
    wall = (last.at - first.at - not_running_s) * first.threads
    busy = (last.on_cpu_ns - first.on_cpu_ns + last.queued_ns - first.queued_ns) / 1e9
    return max(wall - busy, 0.0) * 1000 / first.threads
