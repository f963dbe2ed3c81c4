"""Postcopy migration, livemig against QEMU on the same guest.

    python benchmarks/bench_postcopy.py [--runs N] [--accel tcg kvm] [--preempt]
        [--max-bandwidth BYTES_PER_S]

The built-in guest (running), 150 MiB RAM, unix socket, postcopy-ram on
both sides and postcopy-blocktime on the destination. Precopy runs with
max-bandwidth above what the link can do and a 1 ms downtime-limit (so it
never converges); migrate-start-postcopy comes once the first pass is done.
Medians of: the time from migrate-start-postcopy to ``completed`` on the
source, postcopy-blocktime on the destination, page requests, and (livemig
only: QEMU 7.2 does not measure it) the fault latency from the fault being
read to the page being placed, mean and p99.

Then the rescue case: precopy held to 50 MB/s and migrate-start-postcopy
right after migrate (no first pass): the time from migrate to completed.

--preempt sets postcopy-preempt on both sides (both VMMs). --max-bandwidth
sets precopy's limit for the first case (the reference test's postcopy
scenario uses 100 MB/s-class limits: 100000000).

livemig and QEMU run in turn; the ratio column is livemig / QEMU.
"""

from __future__ import annotations

import time
from typing import Any

from common import accelerators, arguments, compare, console, report, start_pair

from livemig.lab import Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.checks import check_ab_ram

LINK_PLUS = 100_000_000_000  # bytes/s: "higher than the link"


def _caps(vm, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    vm.cmd("migrate-set-capabilities",
           capabilities=[{"capability": name, "state": True} for name in names])


def _finish(kind: VmmKind, src: Vm, dst: Vm, started: float
            ) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Wait for completion on both sides and check the destination's RAM:
    both sides' query-migrate and the ms since ``started``."""
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] in
                      ("completed", "failed") and i, 600, "postcopy", interval=0.002)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if info["status"] != "completed":
        raise SystemExit(f"{kind.label}: migration failed: {info.get('error-desc')}")
    dinfo = wait_until(lambda: (i := dst.cmd("query-migrate"))["status"] == "completed"
                       and i, 120, "the destination")
    dst.cmd("stop")
    if not check_ab_ram(dst).ok:
        raise SystemExit(f"{kind.label}: destination RAM inconsistent")
    return info, dinfo, elapsed_ms


def postcopy_run(kind: VmmKind, lab: VmLauncher, extra_caps: list[str],
                 bandwidth: int) -> dict[str, float]:
    src, dst, uri = start_pair(lab, kind, "postcopy")
    try:
        _caps(src, ["postcopy-ram", *extra_caps])
        _caps(dst, ["postcopy-ram", "postcopy-blocktime", *extra_caps])
        src.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth, "downtime-limit": 1})
        src.wait_serial(b"B", timeout=300)
        src.cmd("migrate", uri=uri)
        wait_until(lambda: src.cmd("query-migrate").get("ram", {}).get("dirty-sync-count", 0)
                   >= 2, 300, "the end of the first pass", interval=0.002)
        started = time.perf_counter()
        src.cmd("migrate-start-postcopy")
        info, dinfo, elapsed_ms = _finish(kind, src, dst, started)
        sample = {"start-postcopy to completed": elapsed_ms,
                  "postcopy-blocktime": float(dinfo.get("postcopy-blocktime", 0)),
                  "postcopy-requests": float(info["ram"]["postcopy-requests"])}
        latency = dinfo.get("livemig-fault-latency")
        if latency and latency.get("count"):
            sample["fault latency mean"] = latency["mean-us"]
            sample["fault latency p99"] = latency["p99-us"]
        return sample
    finally:
        src.kill()
        dst.kill()


def immediate_run(kind: VmmKind, lab: VmLauncher, extra_caps: list[str]) -> dict[str, float]:
    """migrate at 50 MB/s, migrate-start-postcopy at once: migrate to completed."""
    src, dst, uri = start_pair(lab, kind, "postcopy-now")
    try:
        _caps(src, ["postcopy-ram", *extra_caps])
        _caps(dst, ["postcopy-ram", *extra_caps])
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 50_000_000})
        src.wait_serial(b"B", timeout=300)
        started = time.perf_counter()
        src.cmd("migrate", uri=uri)
        src.cmd("migrate-start-postcopy")
        _info, _dinfo, elapsed_ms = _finish(kind, src, dst, started)
        return {"migrate to completed": elapsed_ms}
    finally:
        src.kill()
        dst.kill()


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--preempt", action="store_true", help="set postcopy-preempt")
    parser.add_argument("--max-bandwidth", type=int, default=LINK_PLUS)
    args = parser.parse_args()
    caps = ["postcopy-preempt"] if args.preempt else []
    how = (" + postcopy-preempt" if args.preempt else "") + (
        f", max-bandwidth {args.max_bandwidth / 1e6:g} MB/s"
        if args.max_bandwidth != LINK_PLUS else "")
    lab = VmLauncher()
    units = {"start-postcopy to completed": "ms", "postcopy-blocktime": "ms",
             "postcopy-requests": ""}
    try:
        for accel in accelerators(args.accel):
            a, b = compare(args.runs, accel,
                           lambda kind: postcopy_run(kind, lab, caps, args.max_bandwidth))
            report(f"postcopy{how}, running built-in guest, 150 MiB, unix ({accel})",
                   a, b, units)
            report(f"livemig fault latency, fault read to page placed ({accel})", a, [],
                   {"fault latency mean": "us", "fault latency p99": "us"})
            a, b = compare(args.runs, accel, lambda kind: immediate_run(kind, lab, caps))
            report(f"postcopy{how} at once, precopy held to 50 MB/s ({accel})", a, b,
                   {"migrate to completed": "ms"})
    finally:
        lab.close()
    console.print("ratio = livemig / QEMU: below 1 is better")


if __name__ == "__main__":
    main()
