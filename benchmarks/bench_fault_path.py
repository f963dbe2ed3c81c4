"""Where a postcopy fault's time goes, step by step, on both sides (livemig).

    python benchmarks/bench_fault_path.py [--runs N] [--accel tcg kvm] [--preempt]

Runs the postcopy case of bench_postcopy (150 MiB running built-in guest,
unix socket, switch after the first pass) with LIVEMIG_TRACE_FAULTS set on
both processes (migration/fault_trace.py), joins the two traces by the
first page of each request, and prints, over every request of every run,
the median and p99 of each step: fault read → request sent (destination),
→ request read (source), → pages sent (source), → record decoded
(destination), → UFFDIO_COPY returned (destination). Both processes share
CLOCK_MONOTONIC, so the cross-process steps are comparable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import accelerators, arguments, console, kinds
from rich.table import Table

from livemig.lab import VmLauncher, VmmKind, wait_until

STEPS = [("fault", "request", "destination: fault read → request sent"),
         ("request", "request-read", "return path: → source read it"),
         ("request-read", "sent", "source: → pages sent"),
         ("sent", "received", "stream: → destination decoded the record"),
         ("received", "read", "destination: → pages read into staging"),
         ("read", "checked", "destination: → checked not placed yet"),
         ("checked", "placed", "destination: → UFFDIO_COPY returned"),
         ("fault", "placed", "total: fault read → placed")]


def _load(path: Path) -> dict[str, dict[int, int]]:
    """step → page → the first time that step happened for that page."""
    out: dict[str, dict[int, int]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        mark = json.loads(line)
        out.setdefault(mark["step"], {}).setdefault(mark["page"], mark["ns"])
    return out


def one_run(kind: VmmKind, lab: VmLauncher, index: int, caps: list[str]) -> dict[str, list[float]]:
    src_trace, dst_trace = (lab.workdir / f"trace-{index}-{side}.jsonl" for side in ("s", "d"))
    sock = lab.workdir / f"fp{index}.sock"
    src = lab.start(kind, f"fp{index}-src", env={"LIVEMIG_TRACE_FAULTS": str(src_trace)})
    dst = lab.start(kind, f"fp{index}-dst", extra=["-incoming", f"unix:{sock}"],
                    env={"LIVEMIG_TRACE_FAULTS": str(dst_trace)})
    try:
        wait_until(sock.exists, 30, "the destination socket")
        for vm in (src, dst):
            vm.cmd("migrate-set-capabilities", capabilities=[
                {"capability": name, "state": True} for name in ["postcopy-ram", *caps]])
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 10**11, "downtime-limit": 1})
        src.wait_serial(b"B", timeout=300)
        src.cmd("migrate", uri=f"unix:{sock}")
        wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0)
                   >= 2, 300, "the end of the first pass", interval=0.002)
        src.cmd("migrate-start-postcopy")
        for vm in (src, dst):
            wait_until(lambda vm=vm: vm.cmd("query-migrate")["status"] == "completed", 120,
                       f"{vm.name} completed", interval=0.01)
    finally:
        src.kill()
        dst.kill()
    marks = {**_load(dst_trace), **_load(src_trace)}
    out: dict[str, list[float]] = {label: [] for _a, _b, label in STEPS}
    for page in marks.get("request-read", {}):
        for a, b, label in STEPS:
            if page in marks.get(a, {}) and page in marks.get(b, {}):
                out[label].append((marks[b][page] - marks[a][page]) / 1000)
    return out


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--preempt", action="store_true", help="set postcopy-preempt")
    args = parser.parse_args()
    caps = ["postcopy-preempt"] if args.preempt else []
    lab = VmLauncher()
    try:
        for accel in accelerators(args.accel):
            kind, _qemu = kinds(accel)
            total: dict[str, list[float]] = {label: [] for _a, _b, label in STEPS}
            for index in range(args.runs):
                for label, values in one_run(kind, lab, index, caps).items():
                    total[label] += values
            table = Table(title=f"postcopy fault path ({accel}"
                                f"{', postcopy-preempt' if args.preempt else ''}), µs")
            for column in ("step", "requests", "median", "p99"):
                table.add_column(column, justify="left" if column == "step" else "right")
            for _a, _b, label in STEPS:
                values = np.array(total[label])
                if len(values):
                    table.add_row(label, str(len(values)), f"{np.median(values):,.0f}",
                                  f"{np.percentile(values, 99):,.0f}")
            console.print(table)
    finally:
        lab.close()


if __name__ == "__main__":
    main()
