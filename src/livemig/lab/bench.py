"""``livemig bench SCENARIO --vmm VMM [--vmm VMM …]``: the same migration on
several QEMU-compatible VMMs, in turn, over their command line and QMP only.

Each run starts a source and a destination of one VMM on the chosen guest
(the built-in one; a workload guest with its knobs; or ``filled``, a guest
that never runs, its RAM all non-zero, written over qtest, for raw
throughput), waits for the guest to run, migrates it over the chosen
transport (optionally TLS, optionally through a relay held to a rate that
counts what crosses it) with the scenario's capabilities, samples
query-migrate every 10 ms (lab/timeline.py; the destination's too in
postcopy, for its block time) and records the final answer and the guest's
pause (the source's STOP to the destination's RESUME). VMMs alternate run
by run. A table gives each VMM's medians and the first VMM's ratios to the
others; ``--json`` keeps every run for ``livemig report``.

Scenarios: ``precopy``, ``multifd``, ``auto-converge``; ``postcopy``
(switched at once, or after the first pass); ``recovery`` (postcopy over TCP through a relay that
cuts the link a moment in, then ``migrate-recover`` and ``migrate``
with ``resume``); ``file`` (save with ``file:``, or ``exec:cat`` on a VMM
older than QEMU 9, then restore into a fresh process). Every run ends with
the destination's RAM checked against the guest's invariant: a VMM that
migrates wrongly fails the bench instead of reporting a figure.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..guest.dirty import DirtyParams, image
from . import vcpu_time
from .certs import x509_dirs
from .checks import check_ab_ram, check_dirty_ram
from .link import Link
from .timeline import Timeline, run_record, write_results
from .vmm import (
    LIVEMIG_BINARY,
    QEMU_BINARY,
    LabError,
    QtestClient,
    Vm,
    VmLauncher,
    VmmKind,
    find_binary,
    incoming_uri,
    qtest_listener,
    source_uri,
    wait_until,
)

POLL_S = 0.01
MiB = 1 << 20
# recovery: postcopy is held to this rate until the link is cut and
# recovered (so that there is a postcopy to interrupt), cut this long after
# the source says postcopy-active.
RECOVERY_POSTCOPY_BANDWIDTH = 50_000_000
CUT_AFTER_S = 0.3
TERMINAL = ("completed", "failed", "cancelled")


class Options(NamedTuple):
    """What every VMM of one bench runs with."""

    accel: str = "tcg"
    ram: str = "150M"
    bandwidth: int = 1_000_000_000      # max-bandwidth, bytes/s
    downtime: int = 300                 # downtime-limit, ms
    timeout: float = 300.0
    transport: str = "unix"             # unix or tcp (recovery, TLS, a link rate: tcp)
    guest: DirtyParams | None = None    # None: the built-in guest
    filled: bool = False                # a guest that never runs, RAM all 0x5a (qtest)
    caps: tuple[str, ...] = ()          # more capabilities, on both sides
    params: tuple[tuple[str, Any], ...] = ()   # more migrate-set-parameters, both sides
    dst_args: tuple[str, ...] = ()      # more command-line arguments, destination
    switch: str = "now"                 # postcopy: "now" or "after-first-pass"
    link_rate: int = 0                  # bytes/s of a relay in between (0: none)
    tls: bool = False                   # TLS with x509 credentials made for the run
    poll_s: float = POLL_S              # query-migrate every this often (GIL time for livemig)
    save_dir: str | None = None         # file: the folder of the saved image (lab's own)

    @property
    def over_tcp(self) -> bool:
        return self.transport == "tcp" or self.tls or self.link_rate > 0

    def as_json(self) -> dict[str, Any]:
        out = self._asdict()
        out["guest"] = "ab" if self.guest is None else {"dirty": asdict(self.guest)}
        out["params"] = dict(self.params)
        return out


class Scenario(NamedTuple):
    src_caps: tuple[str, ...]
    dst_caps: tuple[str, ...]
    flow: str       # live, postcopy, recovery or file


POSTCOPY_DST = ("postcopy-ram", "postcopy-blocktime")
SCENARIOS: dict[str, Scenario] = {
    "precopy": Scenario((), (), "live"),
    "postcopy": Scenario(("postcopy-ram",), POSTCOPY_DST, "postcopy"),
    "recovery": Scenario(("postcopy-ram",), POSTCOPY_DST, "recovery"),
    "multifd": Scenario(("multifd",), ("multifd",), "live"),
    "auto-converge": Scenario(("auto-converge",), (), "live"),
    "file": Scenario((), (), "file"),
}


def _peak(key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    """The highest value of a timeline series (None: never reported)."""
    def measure(run: dict[str, Any]) -> float | None:
        values = [s[key] for s in run["timeline"] if s.get(key) is not None]
        return max(values) / scale if values else None
    return measure


def _extra(key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    def measure(run: dict[str, Any]) -> float | None:
        value = run.get("extra", {}).get(key)
        return None if value is None else value / scale
    return measure


# (name, unit, the figure of one run, or None where the scenario has none)
METRICS: tuple[tuple[str, str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("total-time", "ms", lambda r: r["result"].get("total-time")),
    ("downtime", "ms", lambda r: r["result"].get("downtime")),
    ("guest pause", "ms",
     lambda r: (r["pause"][1] - r["pause"][0]) * 1000 if r["pause"] else None),
    ("transferred", "MiB", lambda r: r["result"].get("ram", {}).get("transferred", 0) / MiB),
    ("passes", "", lambda r: r["result"].get("ram", {}).get("dirty-sync-count", 0)),
    ("setup-time", "ms", lambda r: r["result"].get("setup-time")),
    ("throughput", "Mb/s", lambda r: r["result"].get("ram", {}).get("mbps")),
    ("RAM moved per second", "GB/s", _extra("ram-bytes-per-s", 1e9)),
    ("bytes on the link", "MB", _extra("link-bytes", 1e6)),
    ("peak throttle", "%", _peak("cpu-throttle-percentage")),
    ("peak dirty-limit sleep", "ms", _peak("dirty-limit-throttle-time-per-round", 1000)),
    ("postcopy block time", "ms", _extra("blocktime-ms")),
    ("postcopy requests", "", lambda r: r["result"].get("ram", {}).get("postcopy-requests")
     if "blocktime-ms" in r.get("extra", {}) else None),
    ("paused by the cut", "ms", _extra("paused-ms")),
    ("switch to completed", "ms", _extra("postcopy-ms")),
    ("vCPU asleep after the switch", "ms", _extra("vcpu-asleep-ms")),
    ("fault latency mean", "us", _extra("fault-mean-us")),
    ("fault latency p99", "us", _extra("fault-p99-us")),
    ("restore", "ms", _extra("restore-ms")),
    ("file size", "MiB", _extra("file-bytes", MiB)),
)


def vmm_kind(name: str, accel: str) -> VmmKind:
    """``livemig``, ``qemu`` / ``qemu-system-x86_64``, or a path."""
    binary = {"livemig": LIVEMIG_BINARY, "qemu": QEMU_BINARY}.get(name, name)
    found = find_binary(binary)
    if found is None:
        raise LabError(f"--vmm {name}: {binary} not found")
    label = "livemig" if Path(found).name == LIVEMIG_BINARY else Path(found).name
    return VmmKind(label, found, accel)


def _supports(vm: Vm, caps: tuple[str, ...]) -> str | None:
    known = {c["capability"] for c in vm.cmd("query-migrate-capabilities")}
    missing = [c for c in caps if c not in known]
    return f"has no {', '.join(missing)}" if missing else None


def _set_caps(vm: Vm, caps: tuple[str, ...]) -> None:
    if caps:
        vm.cmd("migrate-set-capabilities",
               capabilities=[{"capability": c, "state": True} for c in caps])


def _has_file_uri(vm: Vm) -> bool:
    """livemig, or QEMU 9 and later: ``file:`` URIs."""
    version = vm.cmd("query-version")
    return (str(version.get("package", "")).startswith("livemig")
            or int(version.get("qemu", {}).get("major", 0)) >= 9)


FILL = 0x5a   # a filled guest's every byte


class _Pair:
    """A source (and, but for ``file``, a destination) on the chosen guest,
    with TLS credentials if asked for."""

    def __init__(self, lab: VmLauncher, kind: VmmKind, opts: Options) -> None:
        self.lab, self.kind, self.opts = lab, kind, opts
        self.image: Path | None = None
        self.ram_bytes = 0
        self._qtest: QtestClient | None = None
        if opts.guest is not None:
            self.image = lab.workdir / "dirty.img"
            self.image.write_bytes(image(opts.guest))
        self.tls: tuple[Path, Path] | None = None
        if opts.tls:
            self.tls = x509_dirs(lab.workdir / "pki")

    def _objects(self, endpoint: str) -> list[str]:
        if self.tls is None:
            return []
        folder = self.tls[0] if endpoint == "server" else self.tls[1]
        return ["-object", f"tls-creds-x509,id=tls0,endpoint={endpoint},dir={folder}"]

    def start(self, name: str, extra: list[str] | None = None) -> Vm:
        """The source (``src``), or a destination; a filled source is
        stopped (-S) with a qtest connection that fills its RAM."""
        args = [*self._objects("client" if name == "src" else "server"), *(extra or [])]
        if self.opts.filled and name == "src":
            path = self.lab.workdir / "fill.qtest"
            listener = qtest_listener(path)
            vm = self.lab.start(self.kind, name, ram=self.opts.ram, boot=False,
                                extra=["-S", "-qtest", f"unix:{path}", *args])
            listener.settimeout(60)
            self._qtest = QtestClient(listener.accept()[0])
            listener.close()
            self.ram_bytes = int(vm.cmd("query-memory-size-summary")["base-memory"])
            if (answer := self._qtest.command(f"memset 0 {self.ram_bytes} {FILL:#x}")) != "OK":
                raise LabError(f"{self.kind.label}: qtest memset: {answer}")
            return vm
        return self.lab.start(self.kind, name, ram=self.opts.ram, image=self.image,
                              boot=not self.opts.filled, extra=args)

    def configure(self, vm: Vm, caps: tuple[str, ...], source: bool) -> None:
        """Capabilities and parameters, the same on both sides (multifd's
        channels and compression must match), TLS's credentials; the
        source's rate and downtime limits."""
        _set_caps(vm, ("events", *caps) if source else caps)
        params = dict(self.opts.params)
        if self.tls is not None:
            params["tls-creds"] = "tls0"
            if source:
                params["tls-hostname"] = "localhost"
        if source:
            params.update({"max-bandwidth": self.opts.bandwidth,
                           "downtime-limit": self.opts.downtime})
        if params:
            vm.cmd("migrate-set-parameters", **params)

    def wait_running(self, vm: Vm) -> None:
        """The built-in guest has swept its RAM once, a workload guest has
        written its set once ('B' both); a filled guest never runs."""
        if not self.opts.filled:
            vm.wait_serial(b"B", timeout=120 if self.kind.accel == "tcg" else 300)

    def check(self, dst: Vm) -> None:
        """Stop the destination and check its RAM against the guest's invariant."""
        if self._qtest is not None:
            self._qtest.close()
            self._qtest = None
        dst.cmd("stop")
        if self.opts.filled:
            page = bytes([FILL]) * 4096
            wrong = [a for a in (0, self.ram_bytes // 2, self.ram_bytes - 4096)
                     if dst.pmem(a, 4096) != page]
            if wrong:
                raise LabError(f"{self.kind.label}: the destination's RAM is wrong at "
                               f"{', '.join(hex(a) for a in wrong)}")
            return
        check = check_ab_ram(dst) if self.opts.guest is None else check_dirty_ram(dst)
        if not check.ok:
            raise LabError(f"{self.kind.label}: the destination's RAM is wrong: "
                           f"{check.describe()}")



Step = Callable[[dict[str, Any], dict[str, Any] | None, float], None]


def _follow(src: Vm, dst: Vm | None, timeline: Timeline, opts: Options, label: str,
            step: Step | None = None) -> dict[str, Any]:
    """Poll until the migration ends; its final answer, with its times."""
    while True:
        info = src.cmd("query-migrate")
        dinfo = dst.cmd("query-migrate") if dst is not None else None
        timeline.sample(info, dinfo)
        if info["status"] in TERMINAL:
            break
        if step is not None:
            step(info, dinfo, timeline.samples[-1]["t"])
        if timeline.samples[-1]["t"] > opts.timeout:
            src.cmd("migrate_cancel")
            raise LabError(f"{label}: still {info['status']} after {opts.timeout:g} s")
        time.sleep(opts.poll_s)
    if info["status"] != "completed":
        raise LabError(f"{label}: migration {info['status']}: {info.get('error-desc', '')}")
    # QEMU 7.2 (multifd) can say completed a moment before its times are
    # filled in: the final answer is the first one that has them.
    for _ in range(200):
        if info.get("total-time") and "downtime" in info:
            break
        time.sleep(POLL_S)
        info = src.cmd("query-migrate")
    return info


class _Recovery:
    """The recovery scenario's steps, taken from the poll loop: cut the
    link ``CUT_AFTER_S`` into postcopy; once both sides are paused, recover
    over a unix socket and lift the postcopy rate; note when it runs again."""

    def __init__(self, lab: VmLauncher, src: Vm, dst: Vm, link: Link) -> None:
        self.lab, self.src, self.dst, self.link = lab, src, dst, link
        self.active_at: float | None = None
        self.cut_at: float | None = None
        self.back_at: float | None = None
        self.resumed = False

    def __call__(self, info: dict[str, Any], dinfo: dict[str, Any] | None, t: float) -> None:
        status = info["status"]
        if self.active_at is None:
            if status == "postcopy-active":
                self.active_at = t
        elif self.cut_at is None:
            if t - self.active_at >= CUT_AFTER_S:
                self.link.cut(0)
                self.cut_at = t
        elif not self.resumed:
            if status == "postcopy-paused" and (dinfo or {}).get("status") == "postcopy-paused":
                uri = f"unix:{self.lab.workdir / 'recover.sock'}"
                self.dst.cmd("migrate-recover", uri=uri)
                self.src.cmd("migrate", uri=uri, resume=True)
                self.src.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
                self.resumed = True
        elif self.back_at is None and status == "postcopy-active":
            self.back_at = t

    def paused_ms(self, label: str) -> float:
        if self.cut_at is None or self.back_at is None:
            raise LabError(f"{label}: postcopy ended before the link was cut "
                           f"(cut {self.cut_at}, back {self.back_at})")
        return (self.back_at - self.cut_at) * 1000


def entered_postcopy(samples: list[dict[str, Any]], final: dict[str, Any]) -> bool:
    """Whether a run's source ever was in postcopy: a sampled status says
    so, or (a postcopy shorter than one poll) it sent bytes in postcopy."""
    return (any(str(s.get("status", "")).startswith("postcopy") for s in samples)
            or final.get("ram", {}).get("postcopy-bytes", 0) > 0)


def _live_run(pair: _Pair, scenario: Scenario) -> dict[str, Any] | str:
    kind, opts = pair.kind, pair.opts
    postcopy = scenario.flow in ("postcopy", "recovery")
    incoming = incoming_uri(pair.lab.workdir, "tcp" if scenario.flow == "recovery"
                            or opts.over_tcp else opts.transport)
    src = pair.start("src")
    # The destination listens once it is configured (TLS's credentials).
    dst = pair.start("dst", extra=["-incoming", "defer", *opts.dst_args])
    src_caps, dst_caps = (*scenario.src_caps, *opts.caps), (*scenario.dst_caps, *opts.caps)
    why = _supports(src, src_caps) or _supports(dst, dst_caps)
    if why is not None:
        return why
    pair.configure(dst, dst_caps, source=False)
    pair.configure(src, src_caps, source=True)
    dst.cmd("migrate-incoming", uri=incoming)
    uri = source_uri(dst, incoming)
    relay: Link | None = None
    if opts.link_rate:
        relay = Link(int(uri.rsplit(":", 1)[1]), rate=opts.link_rate)
        uri = relay.uri
    recovery: _Recovery | None = None
    if scenario.flow == "recovery":
        link = Link(int(uri.rsplit(":", 1)[1]))
        uri = link.uri
        recovery = _Recovery(pair.lab, src, dst, link)
        src.cmd("migrate-set-parameters",
                **{"max-postcopy-bandwidth": RECOVERY_POSTCOPY_BANDWIDTH})
    pair.wait_running(src)
    timeline = Timeline()
    src.cmd("migrate", uri=uri)
    switched: list[float] = []
    vcpu_at_switch: list[vcpu_time.VcpuSample | None] = []
    if postcopy and opts.switch == "now":
        src.cmd("migrate-start-postcopy")
        switched.append(timeline.elapsed())
        vcpu_at_switch.append(vcpu_time.sample(dst.process.pid))
    step: Step | None = recovery
    if postcopy and opts.switch == "after-first-pass":
        def step(info: dict[str, Any], dinfo: dict[str, Any] | None, t: float) -> None:
            # The first pass has ended when a sync beyond the one at the start is counted.
            if not switched and info.get("ram", {}).get("dirty-sync-count", 0) >= 2:
                src.cmd("migrate-start-postcopy")
                switched.append(t)
                vcpu_at_switch.append(vcpu_time.sample(dst.process.pid))
            if recovery is not None:
                recovery(info, dinfo, t)
    info = _follow(src, dst if postcopy else None, timeline, opts, kind.label, step)
    pause = None
    extra: dict[str, float] = {}
    if opts.filled:   # a guest that never ran neither stops nor resumes
        wait_until(lambda: dst.cmd("query-migrate").get("status") == "completed", 60,
                   "the destination to complete")
        extra["ram-bytes-per-s"] = pair.ram_bytes * 1000 / max(info.get("total-time", 0), 1)
    else:
        resumed = dst.wait_event("RESUME", timeout=60)
        pause = (timeline.since_start(src.wait_event("STOP", timeout=10)),
                 timeline.since_start(resumed))
    if relay is not None:
        extra["link-bytes"] = float(relay.bytes_forward())
        relay.close()
    if recovery is not None:
        recovery.link.close()
    if postcopy and not entered_postcopy(timeline.samples, info):
        # It completed by precopy before the switch (a quick VMM at a high
        # max-bandwidth): no postcopy figure, rather than a block time of 0.
        extra["completed-before-switch"] = 1.0
    elif postcopy:
        done = wait_until(lambda: (d := dst.cmd("query-migrate"))["status"] == "completed"
                          and d, 60, "the destination to complete")
        extra["blocktime-ms"] = float(done.get("postcopy-blocktime", 0))
        if switched:
            extra["postcopy-ms"] = (timeline.samples[-1]["t"] - switched[0]) * 1000
            # The same measure of waiting on both VMMs (lab/vcpu_time.py),
            # less the switchover's pause, when the guest was not to run.
            held = max(pause[1] - switched[0], 0.0) if pause else 0.0
            asleep = vcpu_time.asleep_ms(vcpu_at_switch[0],
                                         vcpu_time.sample(dst.process.pid), held)
            if asleep is not None:
                extra["vcpu-asleep-ms"] = asleep
        latency = done.get("livemig-fault-latency") or {}
        if latency.get("count"):
            extra["fault-mean-us"] = float(latency["mean-us"])
            extra["fault-p99-us"] = float(latency["p99-us"])
    pair.check(dst)
    if recovery is not None:
        extra["paused-ms"] = recovery.paused_ms(kind.label)
    return run_record(kind.label, Path(kind.binary).name, kind.accel, timeline, info, pause,
                      extra)


def _file_run(pair: _Pair) -> dict[str, Any] | str:
    """Save to a file, then restore into a fresh process: the restore's
    time is from starting that process to its migration's completion."""
    kind, opts = pair.kind, pair.opts
    folder = Path(opts.save_dir) if opts.save_dir else pair.lab.workdir
    saved = folder / f"livemig-bench-{uuid.uuid4().hex}.mig"
    try:
        src = pair.start("src")
        has_file = _has_file_uri(src)
        if (why := _supports(src, opts.caps)) is not None:
            return why
        pair.configure(src, opts.caps, source=True)
        pair.wait_running(src)
        timeline = Timeline()
        src.cmd("migrate", uri=f"file:{saved}" if has_file else f"exec:cat > {saved}")
        info = _follow(src, None, timeline, opts, kind.label)
        if pair.opts.filled:
            pair.check(src)   # what was saved (it closes the qtest connection)
        src.quit()
        started = time.perf_counter()
        # The destination is configured before it reads (mapped-ram, multifd).
        dst = pair.start("dst", extra=["-incoming", "defer"])
        pair.configure(dst, opts.caps, source=False)
        dst.cmd("migrate-incoming", uri=f"file:{saved}" if has_file else f"exec:cat {saved}")
        wait_until(lambda: dst.cmd("query-migrate").get("status") == "completed", opts.timeout,
                   "the restore", interval=0.02)
        restored = time.perf_counter() - started
        pair.check(dst)
        extra = {"restore-ms": restored * 1000,
                 "file-bytes": float(saved.stat().st_size)}
        return run_record(kind.label, Path(kind.binary).name, kind.accel, timeline, info, None,
                          extra)
    finally:
        saved.unlink(missing_ok=True)   # a saved image may be GiBs in /dev/shm


def one_run(kind: VmmKind, scenario: str, opts: Options) -> dict[str, Any] | str:
    """One migration; the run record, or why the VMM cannot run it."""
    lab = VmLauncher()
    try:
        pair = _Pair(lab, kind, opts)
        plan = SCENARIOS[scenario]
        return _file_run(pair) if plan.flow == "file" else _live_run(pair, plan)
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
        medians: list[float | None] = []
        for kind in kinds:
            values = [v for r in runs[kind.label] if (v := measure(r)) is not None]
            medians.append(statistics.median(values) if values else None)
        if all(m is None for m in medians):
            continue            # a figure this scenario does not have
        cells = [f"{m:,.1f} {unit}".strip() if m is not None else "—" for m in medians]
        base = medians[0]
        for other in medians[1:]:
            cells.append(f"{base / other:.2f}x" if base is not None and other else "—")
        view.add_row(name, *cells)
    return view


def bench(scenario: str, vmms: list[str], opts: Options | None = None, runs: int = 3,
          json_path: Path | None = None, console: Console | None = None,
          run: Callable[..., dict[str, Any] | str] = one_run) -> int:
    console = console or Console()
    opts = opts or Options()
    if scenario not in SCENARIOS:
        console.print(f"[red]unknown scenario {scenario} (known: {', '.join(SCENARIOS)})[/red]")
        return 2
    kinds = [vmm_kind(name, opts.accel) for name in vmms]
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
                outcome = run(kind, scenario, opts)
                if isinstance(outcome, str):
                    unsupported[kind.label] = outcome
                else:
                    results[kind.label].append(outcome)
                progress.advance(task)
    for label, why in unsupported.items():
        console.print(f"[yellow]{label}: {scenario} not supported: {why}[/yellow]")
    console.print(table(scenario, kinds, results))
    if json_path is not None:
        write_results(json_path, scenario, {**opts.as_json(), "runs": runs},
                      [r for k in kinds for r in results[k.label]])
        console.print(f"every run saved to {json_path}")
    return 0
