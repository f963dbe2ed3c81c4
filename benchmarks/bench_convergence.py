"""Convergence, livemig against QEMU: auto-converge, livemig's policies,
and calc-dirty-rate accuracy.

    python benchmarks/bench_convergence.py [--runs N] [--rate MiB/s] [--link MB/s]

1. A workload guest (sequential, one byte a page, 64 MiB set) dirtying at
   ``--rate`` (default 40 MiB/s), about twice ``--link`` (max-bandwidth,
   default 20 MB/s), tcg, unix socket: with auto-converge, time to complete,
   the final throttle and the downtime, livemig vs QEMU. Then livemig's
   ``auto-postcopy`` and ``deadline`` (deadline: 10 s) policies, and the
   ``dirty-limit`` capability (vcpu-dirty-limit 5 MB/s, period 500 ms), on
   the same guest (QEMU 7.2 has no equivalent: livemig alone).
2. calc-dirty-rate (page-sampling, 3 s, 16384 pages/GiB) on workload guests
   paced at 8 and 20 MiB/s in 160 MiB (a dword stamp a page, so a page
   rewritten a lap later differs): error against the known rate.

livemig and QEMU run in turn; the ratio column is livemig / QEMU.
"""

from __future__ import annotations

import time
from typing import Any

from common import alternate, arguments, console, kinds, report

from livemig.guest.dirty import DirtyParams, image
from livemig.lab import Vm, VmLauncher, VmmKind, wait_until


def _start(lab: VmLauncher, kind: VmmKind, name: str, params: DirtyParams, ram: str,
           extra: list[str] | None = None) -> Vm:
    path = lab.workdir / f"dirty-{params.rate}-{params.write_bytes}.img"
    if not path.exists():
        path.write_bytes(image(params))
    return lab.start(kind, name, ram=ram, image=path, extra=extra)


def converge(kind: VmmKind, rate: float, link: int, caps: list[str],
             params: dict[str, Any]) -> dict[str, float]:
    """One migration of the workload guest; the figures."""
    lab = VmLauncher()
    try:
        guest = DirtyParams(wss_mib=64, rate=rate)
        sock = lab.workdir / "mig.sock"
        src = _start(lab, kind, "src", guest, "72M")
        dst = _start(lab, kind, "dst", guest, "72M", ["-incoming", f"unix:{sock}"])
        wait_until(sock.exists, 30, "the destination socket")
        for vm in (src, dst) if "postcopy-ram" in caps else (src,):
            vm.cmd("migrate-set-capabilities",
                   capabilities=[{"capability": c, "state": True} for c in caps])
        src.cmd("migrate-set-parameters", **{"max-bandwidth": link, **params})
        src.wait_serial(b"B", timeout=120)  # every page of the set written once
        throttle = sleep_us = 0

        def done() -> dict[str, Any] | None:
            nonlocal throttle, sleep_us
            info = src.cmd("query-migrate")
            throttle = max(throttle, info.get("cpu-throttle-percentage", 0))
            sleep_us = max(sleep_us, info.get("dirty-limit-throttle-time-per-round", 0))
            if info["status"] == "failed":
                raise SystemExit(f"{kind.label}: failed: {info.get('error-desc')}")
            return info if info["status"] == "completed" else None

        started = time.perf_counter()
        src.cmd("migrate", uri=f"unix:{sock}")
        info = wait_until(done, 600, "the migration", interval=0.05)
        wall = time.perf_counter() - started
        return {"total-time": info["total-time"] / 1000, "wall": wall,
                "downtime": info["downtime"], "throttle": throttle,
                "limit sleep": sleep_us / 1000, "passes": info["ram"]["dirty-sync-count"]}
    finally:
        lab.close()


def dirty_rate_error(kind: VmmKind) -> dict[str, float]:
    """calc-dirty-rate on two paced guests at once: % error against each rate."""
    lab = VmLauncher()
    try:
        vms = {rate: _start(lab, kind, f"g{rate}",
                            DirtyParams(wss_mib=64, rate=rate, write_bytes=4), "160M")
               for rate in (8, 20)}
        for vm in vms.values():
            vm.wait_serial(b"A", timeout=120)
        for vm in vms.values():
            vm.cmd("calc-dirty-rate", **{"calc-time": 3, "sample-pages": 16384})
        out = {}
        for rate, vm in vms.items():
            answer = wait_until(lambda vm=vm: (q := vm.cmd("query-dirty-rate"))["status"]
                                == "measured" and q, 30, "the measurement")
            out[f"error @{rate} MiB/s"] = abs(answer["dirty-rate"] - rate) / rate * 100
        return out
    finally:
        lab.close()


def main() -> None:
    parser = arguments(__doc__)
    parser.set_defaults(runs=3)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--link", type=float, default=20.0, help="max-bandwidth, MB/s")
    args = parser.parse_args()
    link = int(args.link * 1e6)
    ours, theirs = kinds("tcg")
    units = {"total-time": "s", "wall": "s", "downtime": "ms", "throttle": "%",
             "limit sleep": "ms", "passes": ""}
    auto = ["auto-converge"]
    a, b = alternate(args.runs, lambda: converge(ours, args.rate, link, auto, {}),
                     (lambda: converge(theirs, args.rate, link, auto, {})) if theirs else None)
    report(f"auto-converge: guest at {args.rate:g} MiB/s, link {args.link:g} MB/s", a, b, units)
    for name, caps, params in (
            ("auto-postcopy", ["postcopy-ram"], {"livemig-convergence-policy": "auto-postcopy"}),
            ("deadline 10 s", [], {"livemig-convergence-policy": "deadline",
                                   "livemig-deadline": 10_000}),
            ("dirty-limit 5 MB/s", ["dirty-limit"], {"vcpu-dirty-limit": 5,
                                                      "x-vcpu-dirty-limit-period": 500})):
        a, _ = alternate(args.runs, lambda caps=caps, params=params:
                         converge(ours, args.rate, link, caps, params), None)
        report(f"livemig {name}: guest at {args.rate:g} MiB/s, link {args.link:g} MB/s "
               "(QEMU has no equivalent)", a, None, units)
    a, b = alternate(args.runs, lambda: dirty_rate_error(ours),
                     (lambda: dirty_rate_error(theirs)) if theirs else None)
    report("calc-dirty-rate, page-sampling, error against the known rate", a, b,
           {"error @8 MiB/s": "%", "error @20 MiB/s": "%"})
    console.print("ratio = livemig / QEMU: below 1 is better for times")


if __name__ == "__main__":
    main()
