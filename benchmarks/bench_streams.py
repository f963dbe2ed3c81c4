"""Migration streams, livemig against QEMU: multifd, compression, TLS.
Runs of the bench engine (``livemig bench``, src/livemig/lab/bench.py),
which checks each destination's RAM.

    python benchmarks/bench_streams.py [--runs N] [--idle-ram 2G] [--only idle|tls|compression]

1. idle: a guest that never runs with all of ``--idle-ram`` non-zero (the
   engine's ``filled`` guest: qtest ``memset``), over tcp loopback, with
   multifd 1, 2 and 4 channels. "RAM moved per second" is guest RAM over
   total-time (both VMMs count the same RAM; QEMU's ``transferred`` counts
   multifd pages before any compression).
2. tls: the same, with TLS (x509 certificates made for each run), one
   stream and multifd 4 channels.
3. compression: the running built-in guest (one changing byte per page)
   through a 50 MB/s link (``max-bandwidth`` 50 MB/s, and the engine's relay
   held to 50 MB/s, since QEMU 7.2's multifd ignores ``max-bandwidth``), with
   none / zlib / zstd (multifd, 2 channels) / xbzrle. "bytes on the link"
   is counted by the relay: what really crossed. ``none`` cannot converge
   at 300 ms on 50 MB/s (the guest dirties 100 MiB in well under a second),
   so every mode runs with downtime-limit ``--downtime`` ms (default 2500),
   the same for both VMMs.

livemig and QEMU run in turn; the ratio column is livemig / QEMU.
"""

from __future__ import annotations

from typing import Any

from common import arguments, console, engine_vmms

from livemig.lab.bench import Options, bench

LINK_PLUS = 100_000_000_000  # bytes/s: "higher than the link"
SLOW_LINK = 50_000_000       # bytes/s: the compression scenario's link
COMPRESSION: dict[str, tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]] = {
    "none": ((), ()),
    "zlib": (("multifd",), (("multifd-channels", 2), ("multifd-compression", "zlib"))),
    "zstd": (("multifd",), (("multifd-channels", 2), ("multifd-compression", "zstd"))),
    "xbzrle": (("xbzrle",), (("xbzrle-cache-size", 256 << 20),)),
}


def main() -> None:
    parser = arguments(__doc__)
    parser.set_defaults(runs=3)
    parser.add_argument("--idle-ram", default="2G")
    parser.add_argument("--downtime", type=int, default=2500)
    parser.add_argument("--only", choices=["idle", "tls", "compression"], nargs="+",
                        default=["idle", "tls", "compression"])
    args = parser.parse_args()
    vmms = engine_vmms()
    idle = Options(ram=args.idle_ram, filled=True, transport="tcp", bandwidth=LINK_PLUS)

    def run(title: str, scenario: str, opts: Options) -> None:
        console.print(f"[bold]{title}[/bold]")
        bench(scenario, vmms, opts, runs=args.runs, console=console)

    if "idle" in args.only:
        for channels in (1, 2, 4):
            run(f"idle {args.idle_ram}, tcp loopback, multifd {channels} channel(s)", "multifd",
                idle._replace(params=(("multifd-channels", channels),)))
    if "tls" in args.only:
        run(f"idle {args.idle_ram}, tcp loopback, TLS x509, one stream", "precopy",
            idle._replace(tls=True))
        run(f"idle {args.idle_ram}, tcp loopback, TLS x509, multifd 4 channels", "multifd",
            idle._replace(tls=True, params=(("multifd-channels", 4),)))
    if "compression" in args.only:
        for mode, (caps, params) in COMPRESSION.items():
            run(f"built-in guest over a 50 MB/s link, {mode}, downtime-limit {args.downtime} ms",
                "precopy", Options(bandwidth=SLOW_LINK, downtime=args.downtime,
                                   link_rate=SLOW_LINK, caps=caps, params=params))
    console.print("ratio = livemig / QEMU: below 1 is better for times and bytes, "
                  "above 1 is better for throughput")


if __name__ == "__main__":
    main()
