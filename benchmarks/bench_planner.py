"""The planner's prediction error: plan, then migrate, on livemig and QEMU.

    python benchmarks/bench_planner.py [--runs N] [--accel tcg] [--rates 2 6 12 40 max]
                                       [--link MB/s] [--downtime MS] [--json FILE]
    python benchmarks/bench_planner.py --replay FILE

For each workload guest (sequential, a 4-byte stamp a page, 32 MiB set,
160 MiB RAM so QEMU's page-sampling sees it) at each ``--rates`` value
(MiB/s, from well below the link to well above it): start a source and a
destination, let the guest write its whole set once (``--fresh``: plan at
once, while it still fills it), set ``max-bandwidth`` (``--link``, default
20 MB/s) and ``downtime-limit`` (default 300 ms), run the planner
(lab/planner.py, over the source's QMP), then migrate at once. A migration
still running after ``--timeout`` seconds (default 40; the planner's horizon
is the same) or 40 passes is cancelled and counts as not converging. The
table gives, per VMM and guest, predicted against measured: converges,
passes, total time, downtime; then the error of each figure and whether the
verdict was right; with ``--runs`` above 1, each against the median of its
runs too. Passes are live passes, as the planner counts them:
dirty-sync-count less the syncs that do not end one (at the start, and with
the guest stopped at completion; the same on both VMMs).

With ``--downtime 2000`` the whole working set is left for the stop at the
faster rates, so downtimes are tens of milliseconds rather than a few: the
setting where a downtime error of ±25% can be told from noise.

``--replay FILE`` predicts a saved run's measurements again with today's
model and prints the same table without starting a VM: how the model was
calibrated (docs/planner.md).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import accelerators, arguments, console, kinds
from rich.console import Console
from rich.table import Table

from livemig.guest.dirty import DirtyParams, image
from livemig.lab import VmLauncher, VmmKind, planner, wait_until

WSS_MIB = 32
RAM = "160M"
MAX_PASSES = 40


def extra_syncs(completed: bool) -> int:
    """dirty-sync-count beyond the live passes, on both VMMs: the sync at the
    start, and the one with the guest stopped when it completes."""
    return 2 if completed else 1


def one(kind: VmmKind, rate: float | None, link: int, downtime: int,
        timeout: float, fresh: bool = False, gap: float = 0.0) -> dict[str, Any]:
    lab = VmLauncher()
    try:
        # A dword stamp a page: a one-byte stamp repeats every 256 laps, which
        # content sampling (QEMU's calc-dirty-rate) cannot tell from no write.
        params = DirtyParams(wss_mib=WSS_MIB, rate=rate, write_bytes=4)
        img = lab.workdir / "dirty.img"
        img.write_bytes(image(params))
        sock = lab.workdir / "mig.sock"
        src = lab.start(kind, "src", ram=RAM, image=img)
        dst = lab.start(kind, "dst", ram=RAM, image=img, extra=["-incoming", f"unix:{sock}"])
        wait_until(sock.exists, 30, "the destination socket")
        src.cmd("migrate-set-parameters", **{"max-bandwidth": link, "downtime-limit": downtime})
        src.wait_serial(b"A", timeout=120)  # zeroing done: it writes from now on
        if not fresh:  # a guest that has run a while: its whole set written once
            src.wait_serial(b"B", timeout=120)
        measured = planner.measure(src.cmd)
        plan = planner.plan(measured, planner.settings_of(measured, horizon_s=timeout),
                            policy="qemu")
        predicted = plan.predictions[0]
        time.sleep(gap)  # the experiment's knob: how long after planning it migrates
        src.cmd("migrate", uri=f"unix:{sock}")
        start = time.monotonic()
        while True:
            info = src.cmd("query-migrate")
            syncs = info.get("ram", {}).get("dirty-sync-count", 0)
            if info["status"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - start > timeout or syncs > MAX_PASSES + 1:
                src.cmd("migrate_cancel")
                wait_until(lambda: src.cmd("query-migrate")["status"] == "cancelled", 30,
                           "the cancel")
                break
            time.sleep(0.02)
        done = info["status"] == "completed"
        if info["status"] == "failed":
            raise SystemExit(f"{kind.label}: migration failed: {info.get('error-desc')}")
        for _ in range(100):  # QEMU may say completed a moment before its times
            if not done or (info.get("total-time") and "downtime" in info):
                break
            time.sleep(0.02)
            info = src.cmd("query-migrate")
        _ = dst
        return {"vmm": kind.label, "rate": rate if rate is not None else "max",
                "predicted": predicted.as_json(),
                "measured": {"converges": done,
                             "passes": info.get("ram", {}).get("dirty-sync-count", 0)
                             - extra_syncs(done),
                             "total-time-ms": info.get("total-time", 0) if done else None,
                             "downtime-ms": info.get("downtime") if done else None,
                             "transferred": info.get("ram", {}).get("transferred", 0),
                             "passes-detail": info.get("livemig-passes")},
                "plan": plan.as_json()}
    finally:
        lab.close()


def replay(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Saved runs with their predictions made again by today's model."""
    out = []
    for r in results:
        measured = planner.Measured.from_json(r["plan"]["measured"])
        settings = planner.settings_of(measured, bandwidth=r["plan"]["bandwidth"],
                                       downtime_limit_ms=r["plan"]["downtime-limit"])
        again = planner.plan(measured, settings, policy="qemu")
        out.append({**r, "predicted": again.predictions[0].as_json(), "plan": again.as_json()})
    return out


def error(pred: float | None, real: float | None) -> float | None:
    if pred is None or not real:
        return None
    return (pred - real) / real


def show(results: list[dict[str, Any]]) -> None:
    table = Table(title="livemig plan: predicted / measured (precopy, QEMU's rules)")
    for col in ("VMM", "MiB/s", "converges", "passes", "total ms", "downtime ms",
                "total err", "downtime err", "verdict"):
        table.add_column(col, justify="right")
    total_errs: list[float] = []
    down_errs: list[float] = []
    right = 0
    for r in results:
        p, m = r["predicted"], r["measured"]
        ok = p["converges"] == m["converges"]
        right += ok
        both = p["converges"] and m["converges"]
        te = error(p["total-time-ms"], m["total-time-ms"]) if both else None
        de = error(p["downtime-ms"], m["downtime-ms"]) if both else None
        if te is not None:
            total_errs.append(abs(te))
        if de is not None:
            down_errs.append(abs(de))

        def pair(a: Any, b: Any) -> str:
            return f"{a} / {b}"
        table.add_row(r["vmm"], str(r["rate"]),
                      pair("yes" if p["converges"] else "no", "yes" if m["converges"] else "no"),
                      pair(p["passes"], m["passes"]),
                      pair(f"{p['total-time-ms']:.0f}" if p["converges"] else "—",
                           m["total-time-ms"] if m["converges"] else "—"),
                      pair(f"{p['downtime-ms']:.0f}" if p["converges"] else "—",
                           m["downtime-ms"] if m["converges"] else "—"),
                      f"{te:+.0%}" if te is not None else "",
                      f"{de:+.0%}" if de is not None else "",
                      "right" if ok else "[red]wrong[/red]")
    Console(width=max(console.width, 132)).print(table)  # not cut at 80 columns
    console.print(f"verdicts right: {right}/{len(results)}")
    medians(results)
    for name, errs in (("total time", total_errs), ("downtime", down_errs)):
        if errs:
            within = sum(e <= 0.25 for e in errs)
            console.print(f"{name}: |error| median {statistics.median(errs):.0%}, "
                          f"max {max(errs):.0%}, within 25%: {within}/{len(errs)}")


def medians(results: list[dict[str, Any]]) -> None:
    """Each prediction against the median of the runs of the same VMM and
    guest: at a few ms a downtime varies from run to run by more than the
    model's target, so one run says little."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["vmm"], str(r["rate"])), []).append(r)
    table = Table(title="predicted (median) / measured (median), converging runs")
    for col in ("VMM", "MiB/s", "runs", "total ms", "downtime ms", "total err",
                "downtime err", "measured downtime spread"):
        table.add_column(col, justify="right")
    for (vmm, rate), runs in groups.items():
        done = [r for r in runs if r["predicted"]["converges"] and r["measured"]["converges"]]
        if len(done) < 2:
            continue

        def med(side: str, key: str, done: list[dict[str, Any]] = done) -> float:
            return statistics.median(float(r[side][key]) for r in done)
        pt, mt = med("predicted", "total-time-ms"), med("measured", "total-time-ms")
        pd, md = med("predicted", "downtime-ms"), med("measured", "downtime-ms")
        downs = [r["measured"]["downtime-ms"] for r in done]
        table.add_row(vmm, rate, str(len(done)), f"{pt:.0f} / {mt:.0f}", f"{pd:.1f} / {md:.0f}",
                      f"{(pt - mt) / mt:+.0%}", f"{(pd - md) / md:+.0%}" if md else "",
                      f"{min(downs)} to {max(downs)}")
    if table.row_count:
        Console(width=max(console.width, 132)).print(table)


def main() -> None:
    parser = arguments(__doc__)
    parser.set_defaults(runs=1, accel=["tcg"])
    parser.add_argument("--rates", nargs="+", default=["2", "6", "12", "40", "max"])
    parser.add_argument("--link", type=float, default=20.0, help="max-bandwidth, MB/s")
    parser.add_argument("--downtime", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=40.0)
    parser.add_argument("--vmm", choices=["both", "livemig", "qemu"], default="both")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--fresh", action="store_true",
                        help="plan right after the guest's boot, while it still writes its "
                             "set for the first time (the growth term's case)")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds between planning and migrating (default 0: at once)")
    parser.add_argument("--replay", type=Path, metavar="FILE",
                        help="predict a saved run (--json) again; start no VM")
    args = parser.parse_args()
    if args.replay:
        show(replay(json.loads(args.replay.read_text())))
        return
    results = []
    for accel in accelerators(args.accel):
        ours, theirs = kinds(accel)
        chosen = [k for k, name in ((ours, "livemig"), (theirs, "qemu"))
                  if k is not None and args.vmm in (name, "both")]
        for _ in range(args.runs):
            for rate in args.rates:
                for kind in chosen:
                    r = one(kind, None if rate == "max" else float(rate),
                            int(args.link * 1e6), args.downtime, args.timeout, args.fresh,
                            args.gap)
                    console.print(f"{r['vmm']} {rate}: predicted {r['predicted']}, "
                                  f"measured {r['measured']}")
                    results.append(r)
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
