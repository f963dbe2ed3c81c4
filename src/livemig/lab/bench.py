"""``livemig bench SCENARIO --vmm VMM [--vmm VMM …]``: the same migration on
several QEMU-compatible VMMs, in turn, over their command line and QMP only.

Each run starts a source and a destination of one VMM on the built-in
guest, waits for the guest to run, migrates it over a unix socket with the
scenario's capabilities, samples query-migrate every 10 ms (lab/timeline.py)
and records the final answer and the guest's pause (the source's STOP to
the destination's RESUME). VMMs alternate run by run. A table gives each
VMM's medians and the first VMM's ratios to the others; ``--json`` keeps
every run for ``livemig report``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .timeline import Timeline, run_record, write_results
from .vmm import LIVEMIG_BINARY, QEMU_BINARY, LabError, Vm, VmLauncher, VmmKind, find_binary

POLL_S = 0.01

# scenario: (source capabilities, destination capabilities, switch to postcopy)
SCENARIOS: dict[str, tuple[list[str], list[str], bool]] = {
    "precopy": ([], [], False),
    "postcopy": (["postcopy-ram"], ["postcopy-ram"], True),
    "multifd": (["multifd"], ["multifd"], False),
    "auto-converge": (["auto-converge"], [], False),
}
# Named in the issue and in livemig, but not (yet) run by this engine.
NOT_HERE = {"recovery": "needs a link that breaks mid-postcopy (tests/test_postcopy_*)",
            "file": "saves to a file instead of a destination (benchmarks/bench_file.py)"}

METRICS = (("total-time", "ms", lambda r: r["result"].get("total-time", 0)),
           ("downtime", "ms", lambda r: r["result"].get("downtime", 0)),
           ("guest pause", "ms",
            lambda r: (r["pause"][1] - r["pause"][0]) * 1000 if r["pause"] else 0.0),
           ("transferred", "MiB",
            lambda r: r["result"].get("ram", {}).get("transferred", 0) / (1 << 20)),
           ("passes", "", lambda r: r["result"].get("ram", {}).get("dirty-sync-count", 0)))


def vmm_kind(name: str, accel: str) -> VmmKind:
    """``livemig``, ``qemu`` / ``qemu-system-x86_64``, or a path."""
    binary = {"livemig": LIVEMIG_BINARY, "qemu": QEMU_BINARY}.get(name, name)
    found = find_binary(binary)
    if found is None:
        raise LabError(f"--vmm {name}: {binary} not found")
    label = "livemig" if Path(found).name == LIVEMIG_BINARY else Path(found).name
    return VmmKind(label, found, accel)


def _supports(vm: Vm, caps: list[str]) -> str | None:
    known = {c["capability"] for c in vm.cmd("query-migrate-capabilities")}
    missing = [c for c in caps if c not in known]
    return f"has no {', '.join(missing)}" if missing else None


def one_run(kind: VmmKind, scenario: str, ram: str, bandwidth: int, downtime: int,
            timeout: float) -> dict[str, Any] | str:
    """One migration; the run record, or why the VMM cannot run it."""
    src_caps, dst_caps, switch = SCENARIOS[scenario]
    lab = VmLauncher()
    try:
        sock = lab.workdir / "mig.sock"
        src = lab.start(kind, "src", ram=ram)
        dst = lab.start(kind, "dst", ram=ram, extra=["-incoming", f"unix:{sock}"])
        why = _supports(src, src_caps)
        if why is not None:
            return why
        dst.cmd("migrate-set-capabilities",
                capabilities=[{"capability": c, "state": True} for c in dst_caps])
        src.cmd("migrate-set-capabilities", capabilities=[
            {"capability": c, "state": True} for c in ["events", *src_caps]])
        src.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth,
                                             "downtime-limit": downtime})
        src.wait_serial(b"B", timeout=120 if kind.accel == "tcg" else 300)
        timeline = Timeline()
        src.cmd("migrate", uri=f"unix:{sock}")
        if switch:
            src.cmd("migrate-start-postcopy")
        while True:
            info = src.cmd("query-migrate")
            timeline.sample(info)
            if info["status"] in ("completed", "failed", "cancelled"):
                break
            if timeline.samples[-1]["t"] > timeout:
                src.cmd("migrate_cancel")
                raise LabError(f"{kind.label}: still {info['status']} after {timeout:g} s")
            time.sleep(POLL_S)
        if info["status"] != "completed":
            raise LabError(f"{kind.label}: migration {info['status']}: "
                           f"{info.get('error-desc', '')}")
        # QEMU 7.2 (multifd) can say completed a moment before its times are
        # filled in: the final answer is the first one that has them.
        for _ in range(200):
            if info.get("total-time") and "downtime" in info:
                break
            time.sleep(POLL_S)
            info = src.cmd("query-migrate")
        resumed = dst.wait_event("RESUME", timeout=60)
        pause = (timeline.since_start(src.wait_event("STOP", timeout=10)),
                 timeline.since_start(resumed))
        return run_record(kind.label, Path(kind.binary).name, kind.accel, timeline, info, pause)
    finally:
        lab.close()


def table(scenario: str, kinds: list[VmmKind], runs: dict[str, list[dict[str, Any]]]) -> Table:
    view = Table(title=f"livemig bench {scenario}: medians")
    view.add_column("metric")
    for kind in kinds:
        view.add_column(kind.label, justify="right")
    for other in kinds[1:]:
        view.add_column(f"{kinds[0].label} / {other.label}", justify="right")
    for name, unit, measure in METRICS:
        medians = [statistics.median(measure(r) for r in runs[k.label]) if runs[k.label]
                   else None for k in kinds]
        cells = [f"{m:,.1f} {unit}".strip() if m is not None else "—" for m in medians]
        base = medians[0]
        for other in medians[1:]:
            cells.append(f"{base / other:.2f}x" if base is not None and other else "—")
        view.add_row(name, *cells)
    return view


def bench(scenario: str, vmms: list[str], accel: str = "tcg", runs: int = 3,
          ram: str = "150M", bandwidth: int = 1_000_000_000, downtime: int = 300,
          timeout: float = 300.0, json_path: Path | None = None,
          console: Console | None = None,
          run: Callable[..., dict[str, Any] | str] = one_run) -> int:
    console = console or Console()
    if scenario in NOT_HERE:
        console.print(f"[yellow]{scenario}: not run by livemig bench yet: "
                      f"{NOT_HERE[scenario]}[/yellow]")
        return 0
    if scenario not in SCENARIOS:
        console.print(f"[red]unknown scenario {scenario} (known: "
                      f"{', '.join([*SCENARIOS, *NOT_HERE])})[/red]")
        return 2
    kinds = [vmm_kind(name, accel) for name in vmms]
    results: dict[str, list[dict[str, Any]]] = {k.label: [] for k in kinds}
    unsupported: dict[str, str] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{scenario}: {runs} runs of {len(kinds)} VMMs",
                                 total=runs * len(kinds))
        for _ in range(runs):
            for kind in kinds:
                if kind.label in unsupported:
                    progress.advance(task)
                    continue
                outcome = run(kind, scenario, ram, bandwidth, downtime, timeout)
                if isinstance(outcome, str):
                    unsupported[kind.label] = outcome
                else:
                    results[kind.label].append(outcome)
                progress.advance(task)
    for label, why in unsupported.items():
        console.print(f"[yellow]{label}: {scenario} not supported: {why}[/yellow]")
    console.print(table(scenario, kinds, results))
    if json_path is not None:
        options = {"accel": accel, "ram": ram, "bandwidth": bandwidth,
                   "downtime-limit": downtime, "runs": runs}
        write_results(json_path, scenario, options,
                      [r for k in kinds for r in results[k.label]])
        console.print(f"every run saved to {json_path}")
    return 0
