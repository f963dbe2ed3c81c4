"""``livemig``: the user-facing tool (demo, guest images, stream inspector)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import one_numpy_thread
from ..guest import GUESTS, write_image


def _cmd_guest(args: argparse.Namespace) -> int:
    if args.name != "dirty":
        path = write_image(args.output, args.name)
        print(f"wrote {args.name} guest ({path.stat().st_size} bytes) to {path}")
        return 0
    from pathlib import Path

    from ..guest.dirty import DirtyParams, image

    try:
        rate = None if args.rate == "max" else float(args.rate)
        params = DirtyParams(wss_mib=args.wss, rate=rate, pattern=args.pattern,
                             hot_fraction=args.hot_fraction, write_bytes=args.write)
        data = image(params)
    except ValueError as err:
        print(f"livemig guest dirty: {err}", file=sys.stderr)
        return 2
    Path(args.output).write_bytes(data)
    print(f"wrote dirty guest to {args.output}: {args.wss} MiB {args.pattern}, "
          f"{args.rate} MiB/s, {args.write} byte(s) a page; run it with "
          f"-m {-(-params.ram_needed // (1 << 20))}M or more")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..lab.migration_demo import DemoOptions, migration_demo

    return migration_demo(DemoOptions(accel=args.accel, ram=args.ram, bandwidth=args.bandwidth,
                                      downtime_ms=args.downtime, transport=args.transport,
                                      postcopy=args.postcopy, timeout_s=args.timeout,
                                      json_path=args.json, png_path=args.png))


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..guest.dirty import DirtyParams
    from ..lab.bench import Options, bench
    from ..lab.vmm import LabError

    try:
        guest = None
        if args.guest == "dirty":
            guest = DirtyParams(wss_mib=args.wss, rate=None if args.rate == "max"
                                else float(args.rate), pattern=args.pattern,
                                write_bytes=args.write)
        opts = Options(accel=args.accel, ram=args.ram, bandwidth=args.bandwidth,
                       downtime=args.downtime, timeout=args.timeout, transport=args.transport,
                       guest=guest, filled=args.guest == "filled", caps=tuple(args.cap or ()),
                       params=tuple(args.param or ()), dst_args=tuple(args.dst_arg or ()),
                       switch=args.switch, link_rate=args.link_rate or 0, tls=args.tls)
        return bench(args.scenario, args.vmm or ["livemig"], opts, runs=args.runs,
                     json_path=args.json)
    except ValueError as err:
        print(f"livemig bench: {err}", file=sys.stderr)
        return 2
    except LabError as err:
        print(f"livemig bench: {err}", file=sys.stderr)
        return 1


def _param(text: str) -> tuple[str, object]:
    """--param NAME=VALUE: a migrate-set-parameters member; whole numbers and
    on/off/true/false become JSON numbers and booleans, the rest stays text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=VALUE")
    if value.lstrip("-").isdigit():
        return name, int(value)
    flags = {"on": True, "true": True, "off": False, "false": False}
    return name, flags.get(value.lower(), value)


def _cmd_report(args: argparse.Namespace) -> int:
    from ..lab.report import draw
    from ..lab.timeline import read_results
    from ..lab.vmm import LabError

    try:
        draw(read_results(args.results), args.png)
    except LabError as err:
        print(f"livemig report: {err}", file=sys.stderr)
        return 1
    print(f"drawn in {args.png}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from ..lab import planner
    from ..lab.vmm import LabError

    try:
        if args.sink:
            print(f"livemig plan: link probe sink on {args.sink} (Ctrl-C ends it)")
            planner.sink(args.sink)
            return 0
        if not args.qmp:
            print("livemig plan: --qmp SOCKET (or --sink PORT) is needed", file=sys.stderr)
            return 2
        return planner.plan_over_qmp(args.qmp, bandwidth=args.bandwidth, probe=args.probe,
                                     downtime_limit_ms=args.downtime_limit,
                                     policy=args.policy, deadline_ms=args.deadline,
                                     json_path=args.json,
                                     sample_content=not args.no_content_sample)
    except KeyboardInterrupt:
        print("livemig plan: interrupted", file=sys.stderr)
        return 130
    except LabError as err:
        print(f"livemig plan: {err}", file=sys.stderr)
        return 1


def _plan_bandwidth(text: str) -> int | None:
    return None if text == "auto" else _bandwidth(text)


def _bandwidth(text: str) -> int:
    """--bandwidth: bytes/s in QEMU's size syntax (10M, 1G) or a plain or
    scientific number (1000000, 1e9)."""
    from ..errors import LivemigError
    from ..sizes import parse_size

    try:
        return parse_size(text)
    except LivemigError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 2**64:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a bandwidth: bytes per second, e.g. 1e9, 100M or 1G")
    return int(value)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import main as analyze_main

    return analyze_main(args.file, args.json, args.offset)


def _migration_knobs(parser: argparse.ArgumentParser) -> None:
    """What demo and bench both set: the VMs and the migration's limits."""
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm"],
                        help="accelerator for the VMs (default tcg, as QEMU's default)")
    parser.add_argument("--ram", default="150M", help="guest RAM, QEMU syntax (default 150M)")
    parser.add_argument("--bandwidth", type=_bandwidth, default=1_000_000_000,
                        help="max-bandwidth in bytes/s, QEMU's size syntax or a number "
                             "(10M, 1G, 1e9; default 1e9)")
    parser.add_argument("--downtime", type=int, default=300,
                        help="downtime-limit in ms (default 300, QEMU's default)")
    parser.add_argument("--transport", default="unix", choices=["unix", "tcp"],
                        help="migration channel (default unix)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up (cancel the migration) after this many seconds "
                             "(default 300)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livemig", description="livemig: live migration VMM")
    sub = parser.add_subparsers(dest="command", required=True)

    guest = sub.add_parser("guest", help="write a built-in guest image",
                           description="Write a boot image: 'ab' (the reference test's "
                                       "guest) or 'dirty' (a workload guest; its knobs "
                                       "below are for 'dirty' only)")
    guest.add_argument("name", choices=sorted(GUESTS), help="which guest")
    guest.add_argument("--output", "-o", required=True, help="file to write")
    guest.add_argument("--wss", type=int, default=64, help="working set, MiB (default 64)")
    guest.add_argument("--rate", default="max",
                       help="MiB of pages dirtied per second, or 'max' (default)")
    guest.add_argument("--pattern", choices=["sequential", "random", "hotcold"],
                       default="sequential")
    guest.add_argument("--hot-fraction", type=float, default=0.1,
                       help="hotcold: the hot share of the set (default 0.1; it takes "
                            "90%% of writes)")
    guest.add_argument("--write", type=int, default=1,
                       help="bytes written per page: 1, or a multiple of 4 up to 4096 "
                            "(pseudo-random, incompressible)")
    guest.set_defaults(func=_cmd_guest)

    demo = sub.add_parser(
        "demo", help="live-migrate the built-in guest between two livemig VMs",
        description="Start two livemig VMs on the built-in guest, live-migrate the running "
                    "guest from one to the other with a progress bar, print the result as "
                    "QEMU's 'info migrate' does, and check the destination's RAM.")
    _migration_knobs(demo)
    demo.add_argument("--postcopy", action="store_true",
                      help="switch to postcopy at once (migrate-start-postcopy)")
    demo.add_argument("--json", type=Path, metavar="FILE",
                      help="save the run: query-migrate over time and the result")
    demo.add_argument("--png", type=Path, metavar="FILE",
                      help="draw the run (as 'livemig report' does)")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser(
        "bench", help="run one migration scenario on several VMMs in turn and compare",
        description="Run SCENARIO on each --vmm in turn, --runs times, on the built-in guest "
                    "or a workload guest; check the destination's RAM after each run; print "
                    "medians and ratios (the first VMM's to the others'); --json keeps every "
                    "run for 'livemig report'. See docs/benchmarks.md.")
    bench.add_argument("scenario", help="precopy, postcopy, recovery, multifd, auto-converge "
                                        "or file")
    bench.add_argument("--vmm", action="append", metavar="VMM",
                       help="livemig, qemu-system-x86_64, or a path; repeat to compare "
                            "(default livemig)")
    bench.add_argument("--runs", type=int, default=3)
    _migration_knobs(bench)
    bench.add_argument("--guest", default="ab", choices=["ab", "dirty", "filled"],
                       help="the built-in guest (default), a workload guest with the knobs "
                            "below, or filled: a guest that never runs, its RAM all non-zero "
                            "(written over qtest), for raw throughput")
    bench.add_argument("--wss", type=int, default=64, help="dirty: working set, MiB (64)")
    bench.add_argument("--rate", default="max", help="dirty: MiB/s dirtied, or max (default)")
    bench.add_argument("--pattern", choices=["sequential", "random", "hotcold"],
                       default="sequential", help="dirty: which pages it writes")
    bench.add_argument("--write", type=int, default=1, help="dirty: bytes written a page (1)")
    bench.add_argument("--cap", action="append", metavar="NAME",
                       help="one more capability on both sides (repeat)")
    bench.add_argument("--param", action="append", type=_param, metavar="NAME=VALUE",
                       help="one more migrate-set-parameters member, both sides (repeat)")
    bench.add_argument("--dst-arg", action="append", metavar="ARG",
                       help="one more command-line argument for the destination, e.g. "
                            "--dst-arg=-mem-prealloc (repeat)")
    bench.add_argument("--link-rate", type=_bandwidth, metavar="B/s",
                       help="migrate through a relay held to this rate (QEMU's size syntax), "
                            "which counts the bytes that really cross it (tcp)")
    bench.add_argument("--tls", action="store_true",
                       help="TLS on the migration, x509 credentials made for each run (tcp)")
    bench.add_argument("--switch", default="now", choices=["now", "after-first-pass"],
                       help="postcopy and recovery: when to migrate-start-postcopy "
                            "(default now)")
    bench.add_argument("--json", type=Path, metavar="FILE", help="save every run")
    bench.set_defaults(func=_cmd_bench)

    report = sub.add_parser(
        "report", help="draw a saved run (livemig demo --json) as a PNG",
        description="Draw a results file: remaining RAM and throughput over time with the "
                    "passes marked, the guest's pause, status changes, and the headline "
                    "figures, one column per run.")
    report.add_argument("results", type=Path, help="the JSON file (livemig demo --json)")
    report.add_argument("--png", type=Path, required=True, metavar="FILE",
                        help="the picture to write")
    report.set_defaults(func=_cmd_report)

    plan = sub.add_parser(
        "plan", help="predict a migration of a running guest before starting it",
        description="Measure a running guest over its QMP socket (livemig or QEMU: "
                    "calc-dirty-rate, query-* and pmemsave) and predict, for precopy under "
                    "each convergence policy and for postcopy: whether it converges, the "
                    "passes, total time, downtime, bytes sent and postcopy's block time; "
                    "then say what to set. The model is in docs/planner.md.")
    plan.add_argument("--qmp", metavar="SOCKET",
                      help="the source VM's QMP unix socket (no other client may hold it)")
    plan.add_argument("--bandwidth", type=_plan_bandwidth, default=None, metavar="auto|B/s",
                      help="what the link moves, bytes/s (10M, 1G, 1e9); auto (default): "
                           "the VM's max-bandwidth, capped by --probe's figure if given")
    plan.add_argument("--probe", metavar="HOST:PORT",
                      help="measure the link with a short probe to 'livemig plan --sink "
                           "PORT' on the destination host")
    plan.add_argument("--downtime-limit", type=float, metavar="MS",
                      help="plan with this downtime-limit (default: the VM's)")
    plan.add_argument("--policy", choices=["qemu", "auto-postcopy", "deadline"],
                      help="predict this convergence policy only (default: every shipped "
                           "one livemig has; QEMU: its own rules)")
    plan.add_argument("--deadline", type=float, metavar="MS",
                      help="livemig-deadline for the deadline policy (default: the VM's)")
    plan.add_argument("--no-content-sample", action="store_true",
                      help="do not sample RAM for zero pages (pmemsave writes a few files "
                           "in /tmp; use this when the VMM runs on another host)")
    plan.add_argument("--json", type=Path, metavar="FILE", help="save the plan as JSON")
    plan.add_argument("--sink", metavar="[HOST:]PORT",
                      help="run the link probe's sink here instead of planning")
    plan.set_defaults(func=_cmd_plan)

    analyze = sub.add_parser(
        "analyze-migration", help="describe a saved migration stream",
        description="Read a livemig migration stream saved with 'migrate exec:cat>FILE' and "
                    "print its header, a summary per record type and the machine state; "
                    "a malformed stream is reported with its byte offset.")
    analyze.add_argument("file", help="the saved stream")
    analyze.add_argument("--json", action="store_true", help="print the analysis as JSON")
    analyze.add_argument("--offset", type=int, default=0,
                         help="where the stream begins in the file (file:PATH,offset=N)")
    analyze.set_defaults(func=_cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    one_numpy_thread()  # the lab's own numpy, beside the VMs it measures
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
