"""Precopy migration, livemig against QEMU on the same guest: runs of the
bench engine (``livemig bench precopy``, src/livemig/lab/bench.py), which
checks each destination's RAM.

    python benchmarks/bench_migration.py [--runs N] [--accel tcg kvm] [--idle-ram 2G]
        [--idle-runs N] [--prealloc]

1. The built-in guest (running), 150 MiB RAM, unix socket, max-bandwidth
   above what the link can do, default downtime-limit (300 ms). Its mbps is
   the whole migration's on both VMMs (bytes over total-time less
   setup-time).
2. An idle guest (never started) whose RAM is all non-zero (the engine's
   ``filled`` guest, written over qtest), for raw throughput: "RAM moved
   per second" is guest RAM over total-time.
``--prealloc`` starts every destination (both VMMs, both parts) with
``-mem-prealloc``.

livemig and QEMU run in turn; the ratio column is livemig / QEMU.
"""

from __future__ import annotations

from common import (
    accelerators,
    arguments,
    console,
    engine_vmms,
)

from livemig.lab.bench import Options, bench

LINK_PLUS = 100_000_000_000  # bytes/s: "higher than the link"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--idle-ram", default="2G")
    parser.add_argument("--idle-runs", type=int, default=3)
    parser.add_argument("--prealloc", action="store_true",
                        help="start both idle destinations with -mem-prealloc (their RAM is "
                             "backed before the stream comes, as a first touch per page "
                             "otherwise caps what any destination can take)")
    args = parser.parse_args()
    prealloc = ("-mem-prealloc",) if args.prealloc else ()
    where = ", destinations with -mem-prealloc" if args.prealloc else ""
    for accel in accelerators(args.accel) if args.runs > 0 else []:
        console.print(f"[bold]precopy, running built-in guest, 150 MiB, unix "
                      f"({accel}{where})[/bold]")
        bench("precopy", engine_vmms(), Options(accel=accel, bandwidth=LINK_PLUS,
                                                dst_args=prealloc),
              runs=args.runs, console=console)
    if args.idle_runs > 0:
        console.print(f"[bold]precopy, idle guest with {args.idle_ram} of non-zero RAM, "
                      f"unix{where}[/bold]")
        bench("precopy", engine_vmms(), Options(ram=args.idle_ram, filled=True,
                                                bandwidth=LINK_PLUS, dst_args=prealloc),
              runs=args.idle_runs, console=console)
    console.print("ratio = livemig / QEMU: below 1 is better for times and bytes, "
                  "above 1 is better for throughput")


if __name__ == "__main__":
    main()
