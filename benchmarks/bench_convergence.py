"""Convergence, livemig against QEMU: auto-converge, livemig's policies,
and calc-dirty-rate accuracy.

    python benchmarks/bench_convergence.py [--runs N] [--rate MiB/s] [--link MB/s]

1. Runs of the bench engine (``livemig bench``, src/livemig/lab/bench.py),
   which checks each destination's RAM: a workload guest (sequential, one
   byte a page, 64 MiB set, 72 MiB RAM) dirtying at ``--rate`` (default
   40 MiB/s), about twice ``--link`` (max-bandwidth, default 20 MB/s), tcg,
   unix socket, migrated once it has written its set: with auto-converge,
   total-time, the peak throttle and the downtime, livemig vs QEMU. Then
   livemig's ``auto-postcopy`` and ``deadline`` (deadline: 10 s) policies,
   and the ``dirty-limit`` capability (vcpu-dirty-limit 5 MB/s, period
   500 ms), on the same guest (QEMU 7.2 has no equivalent: livemig alone).
2. calc-dirty-rate (page-sampling, 3 s, 16384 pages/GiB) on workload guests
   paced at 8 and 20 MiB/s in 160 MiB (a dword stamp a page, so a page
   rewritten a lap later differs): error against the known rate.

livemig and QEMU run in turn; the ratio column is livemig / QEMU.
"""

from __future__ import annotations

from common import alternate, arguments, console, engine_vmms, kinds, report

from livemig.guest.dirty import DirtyParams, image
from livemig.lab import Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.bench import Options, bench


def _start(lab: VmLauncher, kind: VmmKind, name: str, params: DirtyParams, ram: str,
           extra: list[str] | None = None) -> Vm:
    path = lab.workdir / f"dirty-{params.rate}-{params.write_bytes}.img"
    if not path.exists():
        path.write_bytes(image(params))
    return lab.start(kind, name, ram=ram, image=path, extra=extra)


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
    guest = Options(guest=DirtyParams(wss_mib=64, rate=args.rate), ram="72M", bandwidth=link)
    where = f"guest at {args.rate:g} MiB/s, link {args.link:g} MB/s"
    console.print(f"[bold]auto-converge: {where}[/bold]")
    bench("auto-converge", engine_vmms(), guest, runs=args.runs, console=console)
    for name, caps, params in (
            ("auto-postcopy", ("postcopy-ram",),
             (("livemig-convergence-policy", "auto-postcopy"),)),
            ("deadline 10 s", (), (("livemig-convergence-policy", "deadline"),
                                   ("livemig-deadline", 10_000))),
            ("dirty-limit 5 MB/s", ("dirty-limit",), (("vcpu-dirty-limit", 5),
                                                      ("x-vcpu-dirty-limit-period", 500)))):
        console.print(f"[bold]livemig {name}: {where} (QEMU has no equivalent)[/bold]")
        bench("precopy", ["livemig"], guest._replace(caps=caps, params=params),
              runs=args.runs, console=console)
    a, b = alternate(args.runs, lambda: dirty_rate_error(ours),
                     (lambda: dirty_rate_error(theirs)) if theirs else None)
    report("calc-dirty-rate, page-sampling, error against the known rate", a, b,
           {"error @8 MiB/s": "%", "error @20 MiB/s": "%"})
    console.print("ratio = livemig / QEMU: below 1 is better for times")


if __name__ == "__main__":
    main()
