"""``livemig demo``: a live migration of the built-in guest (precopy, or
with ``--postcopy`` postcopy after the first pass).

Two livemig processes, driven only by their command lines and QMP exactly
as QEMU would be: the destination waits with ``-incoming``, the source is
told to ``migrate``, and ``query-migrate`` is polled for the progress bar.
Afterwards the destination's RAM is checked against the guest's invariant
and shown to keep running.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..guest import AB_START
from ..hmp_views import migrate_rows
from .checks import check_ab_ram
from .timeline import FORMAT, Timeline, run_record, write_results
from .vmm import (
    LIVEMIG_BINARY,
    LabError,
    Vm,
    VmLauncher,
    VmmKind,
    find_binary,
    incoming_uri,
    source_uri,
    wait_until,
)

MiB = 1 << 20


@dataclass
class DemoOptions:
    accel: str = "tcg"
    ram: str = "150M"
    bandwidth: int = 1_000_000_000      # bytes/s (QEMU's max-bandwidth)
    downtime_ms: int = 300              # QEMU's downtime-limit
    transport: str = "unix"             # unix | tcp
    postcopy: bool = False              # switch to postcopy after the first pass
    timeout_s: float = 300.0            # cancel the migration after this long
    json_path: Path | None = None       # save the run (lab/timeline.py's format)
    png_path: Path | None = None        # and draw it (lab/report.py)


def info_migrate(info: dict[str, Any]) -> Table:
    """query-migrate laid out as QEMU's HMP ``info migrate`` lays it out
    (the rows of livemig.hmp_views, which human-monitor-command prints too)."""
    table = Table(title="info migrate", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in migrate_rows(info):
        table.add_row(key, value)
    return table


def _convergence_hint(ram: dict[str, Any], options: DemoOptions) -> str | None:
    """A line saying why the migration may never end, once the guest is
    seen dirtying RAM about as fast as the link moves it (query-migrate
    samples the dirty rate each second of a pass)."""
    dirty = ram.get("dirty-pages-rate", 0) * ram.get("page-size", 4096)
    moved = ram.get("mbps", 0) * 1e6 / 8
    if not dirty or not moved or dirty < 0.8 * moved:
        return None
    return (f"[yellow]not converging: the guest dirties {dirty / 1e6:.0f} MB/s and the "
            f"link moves {moved / 1e6:.0f} MB/s (--bandwidth: {options.bandwidth / 1e6:.1f} MB/s); "
            f"--postcopy, a larger --bandwidth or --downtime would end it[/yellow]")


def _watch(src: Vm, console: Console, options: DemoOptions,
           timeline: Timeline) -> dict[str, Any]:
    """A progress bar fed by query-migrate until the job ends, each answer
    kept in ``timeline``. After ``timeout_s`` the migration is cancelled and
    LabError raised."""
    started = time.monotonic()
    columns = (TextColumn("[bold]{task.fields[status]:>9}"), BarColumn(bar_width=12),
               TextColumn("{task.fields[moved]:>5}/{task.fields[left]:<5}MiB"),
               TextColumn("pass {task.fields[sync]}"),
               TextColumn("dirty {task.fields[rate]}/s"),
               TextColumn("{task.fields[mbps]:>5} Mb/s"), TimeElapsedColumn())
    hinted = False
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("migrate", total=1.0, status="setup", moved="0", left="?",
                                 sync=0, rate="0p", mbps="0")
        while True:
            info = src.cmd("query-migrate")
            timeline.sample(info)
            ram = info.get("ram", {})
            moved, left = ram.get("transferred", 0), ram.get("remaining", 0)
            done = moved / (moved + left) if moved + left else 0.0
            progress.update(task, completed=done if info["status"] != "completed" else 1.0,
                            status=info["status"], moved=f"{moved / MiB:.0f}",
                            left=f"{left / MiB:.0f}", sync=ram.get("dirty-sync-count", 0),
                            rate=f"{ram.get('dirty-pages-rate', 0)}p",
                            mbps=f"{ram.get('mbps', 0):.0f}")
            if info["status"] in ("completed", "failed", "cancelled"):
                return info
            hint = None if hinted else _convergence_hint(ram, options)
            if hint is not None:
                progress.console.print(hint)
                hinted = True
            if time.monotonic() - started > options.timeout_s:
                src.cmd("migrate_cancel")
                raise LabError(f"gave up after --timeout {options.timeout_s:g} s with the "
                               f"migration {info['status']} (cancelled; the guest runs on "
                               "at the source)")
            # Finer when the run is kept: a timeline wants points.
            time.sleep(0.01 if options.json_path or options.png_path else 0.05)


def migration_demo(options: DemoOptions, console: Console | None = None,
                   workdir: Path | None = None) -> int:
    """Run the demo. From the main thread, its steps run on a thread of
    their own and the main thread only waits: Ctrl-C, SIGTERM or a hang-up
    then stop the VMs and remove the lab folder from there, with one line,
    instead of an exception raised into whatever the steps were doing (the
    QMP client's event loop, a fork's locks)."""
    console = console or Console()
    binary = find_binary(LIVEMIG_BINARY)
    if binary is None:
        console.print(f"[red]{LIVEMIG_BINARY} is not installed[/red]")
        return 1
    kind = VmmKind(f"livemig-{options.accel}", binary, options.accel)
    lab = VmLauncher(workdir)
    if threading.current_thread() is not threading.main_thread():
        try:
            return _steps(options, console, kind, lab)
        finally:
            lab.close()
    stop = threading.Event()
    caught: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        caught.append(signal.Signals(signum).name)
        stop.set()

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in wanted}
    outcome: list[int] = []
    steps = threading.Thread(target=lambda: outcome.append(_steps(options, console, kind, lab)),
                             name="demo", daemon=True)
    try:
        steps.start()
        while steps.is_alive() and not stop.is_set():
            steps.join(0.1)
        if stop.is_set():
            console.quiet = True  # what the steps say from here on is noise
            lab.close()
            why = "Ctrl-C" if caught[0] == "SIGINT" else caught[0]
            print(f"demo interrupted ({why}): its VMs are stopped and its lab folder removed",
                  flush=True)
            return 130
        return outcome[0] if outcome else 1
    finally:
        lab.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _steps(options: DemoOptions, console: Console, kind: VmmKind, lab: VmLauncher) -> int:
    """The demo itself (see migration_demo)."""
    try:
        incoming = incoming_uri(lab.workdir, options.transport)
        console.print(f"[bold]livemig live migration demo[/bold]: built-in guest, "
                      f"{options.ram} RAM, {options.accel}, {options.transport} transport")
        src = lab.start(kind, "source", ram=options.ram)
        dst = lab.start(kind, "destination", ram=options.ram, extra=["-incoming", incoming])
        console.print(f"destination waits in run state [cyan]{dst.status()}[/cyan]")
        with console.status("source guest booting: waiting for its first 'B'"):
            src.wait_serial(b"B", timeout=120 if options.accel == "tcg" else 300)
        console.print(f"source serial: {src.serial().decode()[:40]}  (run state "
                      f"{src.status()})")
        caps = [{"capability": "events", "state": True}]
        if options.postcopy:
            caps.append({"capability": "postcopy-ram", "state": True})
            dst.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": True},
                {"capability": "postcopy-blocktime", "state": True}])
        src.cmd("migrate-set-capabilities", capabilities=caps)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": options.bandwidth,
                                             "downtime-limit": options.downtime_ms})
        timeline = Timeline()
        src.cmd("migrate", uri=source_uri(dst, incoming))
        if options.postcopy:
            src.cmd("migrate-start-postcopy")  # switches at once, as QEMU does
        info = _watch(src, console, options, timeline)
        console.print(info_migrate(info))
        if info["status"] != "completed":
            console.print(f"[red]migration {info['status']}: {info.get('error-desc', '')}[/red]")
            return 1
        if options.postcopy:
            dinfo = wait_until(lambda: (i := dst.cmd("query-migrate"))["status"] ==
                               "completed" and i, 60, "the destination to complete")
            latency = dinfo.get("livemig-fault-latency", {})
            console.print(f"postcopy: blocked {dinfo.get('postcopy-blocktime')} ms, "
                          f"{latency.get('count', 0)} faults, mean "
                          f"{latency.get('mean-us', 0)} us, p99 {latency.get('p99-us', 0)} us")
        resumed = dst.wait_event("RESUME", timeout=60)
        pause = (timeline.since_start(src.wait_event("STOP", timeout=10)),
                 timeline.since_start(resumed))
        _save_run(options, console, kind, timeline, info, pause)
        console.print(f"source is now [cyan]{src.status()}[/cyan], destination "
                      f"[cyan]{dst.status()}[/cyan]")
        before = len(dst.serial())
        with console.status("destination running: waiting for its next 'B'"):
            dst.wait_serial(b"B", timeout=120 if options.accel == "tcg" else 300)
        console.print(f"destination serial keeps going: {dst.serial().decode()[:40]} "
                      f"({len(dst.serial()) - before} new)")
        dst.cmd("stop")
        result = check_ab_ram(dst)
        colour = "green" if result.ok else "red"
        console.print(f"RAM check: [{colour}]{result.describe()}[/{colour}]")
        byte = dst.pmem(AB_START, 1)
        dst.cmd("cont")
        wait_until(lambda: dst.pmem(AB_START, 1) != byte, 60, "the guest to run on")
        console.print("destination guest resumed and keeps writing: [green]OK[/green]")
        src.quit()
        dst.quit()
        return 0 if result.ok else 1
    except LabError as err:
        console.print(f"[red]demo failed: {err}[/red]")
        return 1


def _save_run(options: DemoOptions, console: Console, kind: VmmKind, timeline: Timeline,
              info: dict[str, Any], pause: tuple[float, float]) -> None:
    """--json and --png: the run as data, and drawn (livemig report draws
    the same from the JSON later)."""
    if options.json_path is None and options.png_path is None:
        return
    settings = {"accel": options.accel, "ram": options.ram, "bandwidth": options.bandwidth,
                "downtime-limit": options.downtime_ms, "transport": options.transport,
                "postcopy": options.postcopy}
    results = {"format": FORMAT, "scenario": "demo", "options": settings,
               "runs": [run_record("livemig", Path(kind.binary).name, options.accel, timeline,
                                   info, pause)]}
    if options.json_path is not None:
        write_results(options.json_path, "demo", settings, results["runs"])
        console.print(f"run saved to {options.json_path}")
    if options.png_path is not None:
        from .report import draw
        draw(results, options.png_path)
        console.print(f"run drawn in {options.png_path}")
