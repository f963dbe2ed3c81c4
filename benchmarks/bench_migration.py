"""Precopy migration, livemig against QEMU on the same guest.

    python benchmarks/bench_migration.py [--runs N] [--accel tcg kvm] [--idle-ram 2G]
        [--prealloc]

1. The built-in guest (running), 150 MiB RAM, unix socket, max-bandwidth
   above what the link can do, default downtime-limit (300 ms): the bench
   engine's precopy scenario (``livemig bench precopy``,
   src/livemig/lab/bench.py), which checks the destination's RAM after each
   run. Its mbps is the whole migration's on both VMMs (bytes over
   total-time less setup-time).
2. An idle guest (never started, -S) whose RAM is all non-zero (filled with
   qtest ``memset``, which the engine does not do), for raw throughput:
   MB/s = transferred / total-time.
``--prealloc`` starts every destination (both VMMs, both parts) with
``-mem-prealloc``.

livemig and QEMU run in turn; the ratio column is livemig / QEMU.
"""

from __future__ import annotations

import time

from common import (
    accelerators,
    alternate,
    arguments,
    console,
    engine_vmms,
    kinds,
    report,
)

from livemig.lab import QtestClient, VmLauncher, VmmKind, qtest_listener, wait_until
from livemig.lab.bench import Options, bench

LINK_PLUS = 100_000_000_000  # bytes/s: "higher than the link"


def _migrate(src, dst, uri: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    src.cmd("migrate-set-parameters", **{"max-bandwidth": LINK_PLUS})
    started = time.perf_counter()
    src.cmd("migrate", uri=uri)
    info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] in
                      ("completed", "failed") and i, 600, "the migration", interval=0.005)
    if info["status"] != "completed":
        raise SystemExit(f"{src.kind.label}: migration failed: {info.get('error-desc')}")
    info["wall"] = time.perf_counter() - started
    wait_until(lambda: dst.cmd("query-migrate").get("status") == "completed", 120,
               "the destination")
    return info


def idle_guest(kind: VmmKind, lab: VmLauncher, ram: str, size: int,
               prealloc: bool = False) -> dict[str, float]:
    uri = f"unix:{lab.workdir / 'idle.sock'}"
    qtest_path = lab.workdir / "idle.qtest"
    listener = qtest_listener(qtest_path)
    src = lab.start(kind, "isrc", ram=ram, boot=False, extra=["-S", "-qtest", f"unix:{qtest_path}"])
    listener.settimeout(60)
    conn, _ = listener.accept()
    qtest = QtestClient(conn)
    dst = lab.start(kind, "idst", ram=ram, boot=False,
                    extra=["-incoming", uri, *(["-mem-prealloc"] if prealloc else [])])
    wait_until((lab.workdir / "idle.sock").exists, 30, "the destination socket")
    try:
        answer = qtest.command(f"memset 0 {size} 0x5a")
        if answer != "OK":
            raise SystemExit(f"{kind.label}: qtest memset: {answer}")
        info = _migrate(src, dst, uri)
        transferred = info["ram"]["transferred"]
        return {"total-time": info["total-time"], "MB/s": transferred / 1e6 /
                (info["total-time"] / 1000), "mbps": info["ram"]["mbps"]}
    finally:
        qtest.close()
        src.kill()
        dst.kill()


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--idle-ram", default="2G")
    parser.add_argument("--idle-runs", type=int, default=3)
    parser.add_argument("--prealloc", action="store_true",
                        help="start both idle destinations with -mem-prealloc (their RAM is "
                             "backed before the stream comes, as a first touch per page "
                             "otherwise caps what any destination can take)")
    args = parser.parse_args()
    lab = VmLauncher()
    try:
        for accel in accelerators(args.accel) if args.runs > 0 else []:
            where = ", destinations with -mem-prealloc" if args.prealloc else ""
            console.print(f"[bold]precopy, running built-in guest, 150 MiB, unix "
                          f"({accel}{where})[/bold]")
            bench("precopy", engine_vmms(), Options(
                accel=accel, bandwidth=LINK_PLUS,
                dst_args=("-mem-prealloc",) if args.prealloc else ()), runs=args.runs,
                console=console)
        if args.idle_runs <= 0:
            return
        ours, theirs = kinds("tcg")
        size = int(args.idle_ram.rstrip("G")) << 30
        a, b = alternate(args.idle_runs,
                         lambda: idle_guest(ours, lab, args.idle_ram, size, args.prealloc),
                         (lambda: idle_guest(theirs, lab, args.idle_ram, size, args.prealloc))
                         if theirs else None)
        where = ", destinations with -mem-prealloc" if args.prealloc else ""
        report(f"precopy, idle guest with {args.idle_ram} of non-zero RAM, unix{where}", a, b,
               {"total-time": "ms", "MB/s": "MB/s", "mbps": "Mb/s"})
    finally:
        lab.close()
    console.print("ratio = livemig / QEMU: below 1 is better for times and bytes, "
                  "above 1 is better for throughput")


if __name__ == "__main__":
    main()
