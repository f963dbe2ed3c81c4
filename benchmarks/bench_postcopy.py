"""Postcopy migration, livemig against QEMU on the same guest: two runs of
the bench engine (``livemig bench postcopy``, src/livemig/lab/bench.py).

    python benchmarks/bench_postcopy.py [--runs N] [--accel tcg kvm] [--preempt]
        [--max-bandwidth BYTES_PER_S] [--json-dir DIR]

1. The reference test's way: the built-in guest (running), 150 MiB RAM,
   unix socket, postcopy-ram on both sides and postcopy-blocktime on the
   destination; precopy with max-bandwidth above what the link can do (or
   ``--max-bandwidth``: the reference's postcopy scenario uses 100 MB/s-class
   limits, 100000000) and a 1 ms downtime-limit, so it never converges;
   migrate-start-postcopy once the first pass is done. Figures: the
   destination's block time, the time from the switch to completed, page
   requests, and livemig's fault latency (mean, p99; QEMU 7.2 does not
   measure it).
2. The rescue case: precopy held to 50 MB/s and migrate-start-postcopy right
   after migrate (no first pass): total-time is migrate to completed.

--preempt sets postcopy-preempt on both sides (both VMMs). The engine
checks the destination's RAM after every run. The ratio column is
livemig / QEMU; ``--json-dir`` keeps every run for ``livemig report``.
"""

from __future__ import annotations

from pathlib import Path

from common import accelerators, arguments, console, engine_vmms

from livemig.lab.bench import Options, bench

LINK_PLUS = 100_000_000_000  # bytes/s: "higher than the link"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--preempt", action="store_true", help="set postcopy-preempt")
    parser.add_argument("--max-bandwidth", type=int, default=LINK_PLUS)
    parser.add_argument("--json-dir", type=Path)
    args = parser.parse_args()
    caps = ("postcopy-preempt",) if args.preempt else ()
    for accel in accelerators(args.accel):
        for name, opts in (
                ("reference", Options(accel=accel, bandwidth=args.max_bandwidth, downtime=1,
                                      caps=caps, switch="after-first-pass")),
                ("rescue", Options(accel=accel, bandwidth=50_000_000, caps=caps))):
            console.print(f"[bold]postcopy, {name} ({accel}"
                          f"{', postcopy-preempt' if args.preempt else ''})[/bold]")
            bench("postcopy", engine_vmms(), opts, runs=args.runs, console=console,
                  json_path=args.json_dir / f"postcopy-{name}-{accel}.json"
                  if args.json_dir else None)
    console.print("ratio = livemig / QEMU: below 1 is better")


if __name__ == "__main__":
    main()
