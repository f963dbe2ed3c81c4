"""``livemig plan``: measure a running guest over QMP, predict how each way
of migrating it would go (lab/plan_model.py), and say what to set.

It needs only QMP commands QEMU 7.2 has too (query-memory-size-summary,
query-version, query-kvm, query-migrate-parameters/-capabilities,
calc-dirty-rate, query-dirty-rate, pmemsave), so it plans for livemig and
QEMU alike. pmemsave writes into a folder of this host: the zero-page share
is sampled only when the VMM runs here; otherwise every page counts as not
zero, and the plan says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table

from . import plan_model as model
from .vmm import LabError

Cmd = Callable[..., Any]

# Measured on this project's machines (2 cores, tcg; benchmarks/bench_planner.py
# and docs/planner.md): the fixed part of a switchover, the time to the first
# page, the rate of an unthrottled copy, the zero-page scan rate, a postcopy
# fault's wait (docs/benchmarks.md) and QEMU's rate-limit slot. kvm uses the
# tcg figures: what they measure is the VMM's work, not the guest's.
_LIVEMIG = model.VmmCosts("livemig", switchover_s=0.0015, setup_s=0.008, full_speed=6e9,
                          zero_scan=2e9, fault_s=0.0012)
_QEMU = model.VmmCosts("QEMU 7.2", switchover_s=0.003, setup_s=0.01, full_speed=4e9,
                       zero_scan=4e9, fault_s=0.0002, check_slot_s=0.1)
COSTS: dict[tuple[str, str], model.VmmCosts] = {
    ("livemig", "tcg"): _LIVEMIG, ("livemig", "kvm"): _LIVEMIG,
    ("qemu", "tcg"): _QEMU, ("qemu", "kvm"): _QEMU,
}
WINDOWS_S = (1, 3)          # calc-dirty-rate windows: the rate, and whether the set saturates
SAMPLE_PAGES = 16384        # calc-dirty-rate's most, per GiB: the steadiest estimate
CONTENT_CHUNKS = 256        # pmemsave samples for the zero-page share …
CONTENT_CHUNK = 64 << 10    # … of 16 pages each
LOW_RAM_END = 3 << 30       # sample below here: above, a PC has its PCI hole
QEMU_MIN_SAMPLED_BLOCK = 128 << 20  # QEMU's page-sampling skips smaller RAM blocks


@dataclass
class Measured:
    """What the planner read of the guest and the VMM."""

    vmm: str                 # "livemig" or "qemu"
    accel: str
    ram: int
    nonzero: float
    sampled_content: bool
    windows: list[tuple[float, float]]  # (seconds, bytes dirtied)
    params: dict[str, Any]
    caps: dict[str, bool]
    link: float | None       # bytes/s measured by --probe, or given
    notes: list[str] = field(default_factory=list)
    growth: float = 0.0      # bytes/s of zero RAM written for the first time
    profile: tuple[float, ...] = ()   # share of non-zero pages per sampled slice

    def guest(self) -> model.Guest:
        # The samples cover RAM below LOW_RAM_END only: above it, where the
        # content lies is not known, and the model spreads it evenly.
        profile = self.profile if self.ram <= LOW_RAM_END else ()
        return model.Guest(self.ram, self.nonzero,
                           model.DirtyCurve(tuple(self.windows), self.ram), self.growth,
                           profile)

    def as_json(self) -> dict[str, Any]:
        return {"vmm": self.vmm, "accel": self.accel, "ram": self.ram,
                "nonzero": int(self.nonzero), "nonzero-growth": int(self.growth),
                "sampled-content": self.sampled_content,
                "dirty-windows": [{"seconds": t, "bytes": int(b)} for t, b in self.windows],
                "parameters": self.params, "capabilities": self.caps, "link": self.link,
                "notes": self.notes, "content-profile": [round(x, 4) for x in self.profile]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measured:
        """A plan's measurements read back (``livemig plan --json``), to plan
        again with other settings or another model."""
        return cls(data["vmm"], data["accel"], int(data["ram"]), float(data["nonzero"]),
                   bool(data["sampled-content"]),
                   [(float(w["seconds"]), float(w["bytes"])) for w in data["dirty-windows"]],
                   dict(data["parameters"]), dict(data["capabilities"]), data.get("link"),
                   list(data.get("notes", [])), float(data.get("nonzero-growth", 0)),
                   tuple(float(x) for x in data.get("content-profile", ())))


def _calc_dirty(cmd: Cmd, seconds: int, mode: str, timeout: float) -> float:
    """Bytes dirtied in a window of ``seconds`` (calc-dirty-rate in ``mode``)."""
    args: dict[str, Any] = {"calc-time": seconds, "mode": mode}
    if mode == "page-sampling":
        args["sample-pages"] = SAMPLE_PAGES
    cmd("calc-dirty-rate", **args)
    deadline = time.monotonic() + seconds + timeout
    while True:
        answer = cmd("query-dirty-rate")
        if answer.get("status") == "measured":
            rate = float(answer["dirty-rate"])
            if mode == "page-sampling" and rate > 0:
                rate += 0.5  # QEMU truncates to whole MiB/s: the mean of what it cut
            return rate * seconds * (1 << 20)
        if time.monotonic() > deadline:
            raise LabError(f"calc-dirty-rate of {seconds} s gave no answer "
                           f"(status {answer.get('status')})")
        time.sleep(0.05)


class Content(NamedTuple):
    """What the pmemsave samples found: how much, and where."""

    nonzero: float                 # bytes of RAM not zero
    profile: tuple[float, ...]     # the share of non-zero pages in each slice


def _nonzero(cmd: Cmd, ram: int) -> Content | None:
    """Bytes of RAM not zero, and where, from CONTENT_CHUNKS pmemsave
    samples spread evenly (one in each equal slice); None if pmemsave can't
    write here."""
    import numpy as np

    end = min(ram, LOW_RAM_END)
    folder = Path(tempfile.mkdtemp(prefix="livemig-plan-"))
    os.chmod(folder, 0o777)  # a VMM running as another user writes here too
    try:
        slice_size = end // CONTENT_CHUNKS
        nonzero = total = 0
        profile = []
        for i in range(CONTENT_CHUNKS):
            start = i * slice_size + (slice_size - CONTENT_CHUNK) // 2
            start -= start % model.PAGE
            path = folder / f"s{i}"
            try:
                cmd("pmemsave", val=start, size=CONTENT_CHUNK, filename=str(path))
                data = path.read_bytes()
            except (LabError, OSError):
                return None
            path.unlink()
            pages = np.frombuffer(data, dtype=np.uint64).reshape(-1, model.PAGE // 8)
            here = int(pages.any(axis=1).sum())
            profile.append(here / len(pages))
            nonzero += here
            total += len(pages)
        return Content(ram * nonzero / total, tuple(profile))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(cmd: Cmd, link: float | None = None, sample_content: bool = True,
            windows: tuple[int, ...] = WINDOWS_S, timeout: float = 30.0) -> Measured:
    """Read the VMM's settings and measure the guest (about sum(windows) s)."""
    status = cmd("query-migrate").get("status")
    if status not in (None, "none", "completed", "failed", "cancelled"):
        raise LabError(f"a migration is {status}: plan before migrating")
    version = cmd("query-version")
    vmm = "livemig" if str(version.get("package", "")).startswith("livemig") else "qemu"
    accel = "kvm" if cmd("query-kvm").get("enabled") else "tcg"
    ram = int(cmd("query-memory-size-summary")["base-memory"])
    params = cmd("query-migrate-parameters")
    caps = {c["capability"]: bool(c["state"]) for c in cmd("query-migrate-capabilities")}
    notes: list[str] = []
    if vmm == "qemu" and ram < QEMU_MIN_SAMPLED_BLOCK:
        notes.append("QEMU's calc-dirty-rate skips RAM blocks under 128 MiB: with this "
                     "guest's RAM it reads 0, so the dirty rate is not known")
    # livemig counts every page written (its dirty tracking); QEMU 7.2's
    # dirty-bitmap mode ends the process under tcg, so QEMU is sampled:
    # by content, which misses a page rewritten with the bytes it had.
    mode = "dirty-bitmap" if vmm == "livemig" else "page-sampling"
    # RAM that is not zero, sampled before and after the dirty-rate windows:
    # a guest still writing fresh memory (booting, a growing heap) has more
    # by the time its first pass runs.
    first = _timed_nonzero(cmd, ram) if sample_content else None
    points = [(float(s), _calc_dirty(cmd, s, mode, timeout)) for s in windows]
    if model.DirtyCurve(tuple(points), ram).saturated:
        notes.append(f"the guest rewrites its whole working set (~{points[0][1] / (1 << 20):.0f}"
                     f" MiB) within {points[0][0]:g} s, calc-dirty-rate's shortest window: over "
                     "shorter passes it may dirty faster than that, so a faster link it "
                     "advises is a lower bound")
    second = _timed_nonzero(cmd, ram) if first is not None else None
    if first is None or second is None:
        notes.append("zero pages not sampled (pmemsave did not write here): every page "
                     "counts as not zero, so the first pass is an upper bound")
        return Measured(vmm, accel, ram, ram, False, points, params, caps, link, notes)
    (t0, c0), (t1, c1) = first, second
    growth = max(0.0, (c1.nonzero - c0.nonzero) / (t1 - t0))
    return Measured(vmm, accel, ram, c1.nonzero, True, points, params, caps, link, notes,
                    growth, c1.profile)


def _timed_nonzero(cmd: Cmd, ram: int) -> tuple[float, Content] | None:
    """(when, what is not zero): the sample and the middle of its time."""
    start = time.monotonic()
    content = _nonzero(cmd, ram)
    return None if content is None else ((start + time.monotonic()) / 2, content)


def settings_of(m: Measured, bandwidth: float | None = None,
                downtime_limit_ms: float | None = None, deadline_ms: float | None = None,
                horizon_s: float = 300.0) -> model.Settings:
    """The model's settings from the VMM's parameters, with overrides."""
    p = m.params
    bw = float(p.get("max-bandwidth") or 0) or float("inf")
    for other in (bandwidth, m.link):
        if other:
            bw = min(bw, other)
    if bw == float("inf"):
        raise LabError("no bandwidth: max-bandwidth is 0 (unlimited) and no --bandwidth "
                       "or --probe says what the link moves")
    return model.Settings(
        bandwidth=bw,
        downtime_limit_ms=float(downtime_limit_ms if downtime_limit_ms is not None
                                else p.get("downtime-limit", 300)),
        auto_converge=m.caps.get("auto-converge", False),
        throttle_initial=int(p.get("cpu-throttle-initial", 20)),
        throttle_increment=int(p.get("cpu-throttle-increment", 10)),
        throttle_trigger=int(p.get("throttle-trigger-threshold", 50)),
        max_throttle=int(p.get("max-cpu-throttle", 99)),
        tailslow=bool(p.get("cpu-throttle-tailslow", False)),
        postcopy_bandwidth=float(p.get("max-postcopy-bandwidth", 0)),
        deadline_ms=float(deadline_ms if deadline_ms is not None
                          else p.get("livemig-deadline", 0)),
        horizon_s=horizon_s)


@dataclass
class Plan:
    measured: Measured
    settings: model.Settings
    costs: model.VmmCosts
    predictions: list[model.Prediction]
    advice: list[str]

    def as_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "measured": self.measured.as_json(),
            "bandwidth": s.bandwidth, "downtime-limit": s.downtime_limit_ms,
            "auto-converge": s.auto_converge, "costs": self.costs.name,
            "predictions": [p.as_json() for p in self.predictions],
            "advice": self.advice}


def plan(m: Measured, settings: model.Settings, policy: str | None = None,
         costs: model.VmmCosts | None = None) -> Plan:
    """Predict each way of migrating; ``policy``: only that convergence policy."""
    costs = costs or COSTS[(m.vmm, m.accel)]
    guest = m.guest()
    policies = [policy] if policy else (["qemu", "auto-postcopy", "deadline"]
                                        if m.vmm == "livemig" else ["qemu"])
    preds: list[model.Prediction] = []
    for name in policies:
        if name == "deadline" and settings.deadline_ms <= 0:
            if policy:
                preds.append(model.Prediction("precopy (deadline)", False,
                                              why="livemig-deadline is 0: QEMU's rules"))
            continue
        preds.append(model.precopy(guest, settings, costs, name, postcopy_allowed=True))
    # The advice starts from QEMU's rules: the prediction above, unless
    # --policy asked for another one only.
    qemu_rules = next((p for p in preds if p.method == "precopy (qemu)"), None) \
        or model.precopy(guest, settings, costs)
    if not settings.auto_converge:
        ac = model.precopy(guest, replace(settings, auto_converge=True), costs)
        ac.method = "precopy (qemu) + auto-converge"
        preds.append(ac)
    preds.append(model.postcopy(guest, settings, costs))
    return Plan(m, settings, costs, preds, advise(guest, settings, costs, qemu_rules, preds))


def advise(guest: model.Guest, s: model.Settings, costs: model.VmmCosts,
           qemu_rules: model.Prediction, preds: list[model.Prediction]) -> list[str]:
    """What to set, in a few lines."""
    if qemu_rules.converges:
        q = qemu_rules
        return [f"precopy as set converges: {q.passes} pass(es), ~{q.total_s:.1f} s, "
                f"guest stopped ~{q.downtime_s * 1000:.0f} ms"]
    out = [f"precopy as set does not converge: {qemu_rules.why}"]
    limit = model.lowest_downtime_limit(guest, s, costs)
    if limit is not None:
        out.append(f"downtime-limit {limit:.0f} ms or more would let it converge")
    bw = model.lowest_bandwidth(guest, s, costs)
    if bw is not None and bw > s.bandwidth:
        out.append(f"or a link (max-bandwidth) faster than {bw / 1e6:.0f} MB/s (how much "
                   "faster, the 1 s window cannot tell)" if guest.dirty.saturated else
                   f"or a link (max-bandwidth) of {bw / 1e6:.0f} MB/s or more")
    for p in preds:
        if p.method.endswith("auto-converge") and p.converges:
            out.append(f"auto-converge would end it in ~{p.total_s:.1f} s, throttling the "
                       f"guest up to {p.throttle}%")
        if p.method == "postcopy":
            out.append(f"postcopy would end it in ~{p.total_s:.1f} s with the guest stopped "
                       f"~{p.downtime_s * 1000:.0f} ms, then slowed by ~"
                       f"{(p.block_s or 0) * 1000:.0f} ms of page faults")
    return out


def render(p: Plan, console: Console) -> None:
    m, s = p.measured, p.settings
    rate = p.measured.windows[0][1] / p.measured.windows[0][0]
    console.print(f"[bold]{m.vmm} {m.accel}[/bold], {m.ram / (1 << 20):.0f} MiB RAM, "
                  f"{m.nonzero / (1 << 20):.0f} MiB not zero"
                  f"{'' if m.sampled_content else ' (assumed)'}; dirties "
                  f"{rate / (1 << 20):.1f} MiB/s; "
                  + ", ".join(f"{b / (1 << 20):.1f} MiB in {t:g} s" for t, b in m.windows))
    console.print(f"link {s.bandwidth / 1e6:.1f} MB/s, downtime-limit "
                  f"{s.downtime_limit_ms:.0f} ms, VMM costs: {p.costs.name}")
    for note in m.notes:
        console.print(f"[yellow]note: {note}[/yellow]")
    view = Table(title="livemig plan: predicted")
    for col in ("method", "converges", "passes", "total", "downtime", "sent", "throttle",
                "block time"):
        view.add_column(col, justify="left" if col == "method" else "right")
    for pr in p.predictions:
        done = pr.converges
        view.add_row(pr.method, "yes" if done else "[red]no[/red]", str(pr.passes),
                     f"{pr.total_s:.2f} s" if done else f"> {s.horizon_s:.0f} s"
                     if pr.total_s > s.horizon_s else "—",
                     f"{pr.downtime_s * 1000:.0f} ms" if done else "—",
                     f"{pr.sent / (1 << 20):.0f} MiB" if done else "—",
                     f"{pr.throttle}%" if pr.throttle else "",
                     f"{pr.block_s * 1000:.0f} ms" if pr.block_s is not None else "")
    console.print(view)
    for line in p.advice:
        console.print(f"• {line}")


def write_json(p: Plan, path: Path) -> None:
    path.write_text(json.dumps(p.as_json(), indent=1) + "\n")


def plan_over_qmp(qmp_path: str, bandwidth: float | None = None, probe: str | None = None,
                  downtime_limit_ms: float | None = None, policy: str | None = None,
                  deadline_ms: float | None = None, json_path: Path | None = None,
                  sample_content: bool = True, console: Console | None = None) -> int:
    """``livemig plan --qmp SOCKET …``: connect, measure, predict, print."""
    from qemu.qmp import ConnectError
    from qemu.qmp.legacy import QEMUMonitorProtocol

    console = console or Console()
    qmp = QEMUMonitorProtocol(qmp_path)
    try:
        qmp.connect(negotiate=True)
    except (ConnectError, OSError) as err:
        raise LabError(f"cannot connect to {qmp_path}: {err}") from err
    qmp.settimeout(60.0)

    def cmd(name: str, **args: Any) -> Any:
        answer = qmp.cmd_raw(name, args or None)
        if "error" in answer:
            raise LabError(f"{name}: {answer['error']['desc']}")
        return answer["return"]

    try:
        link = probe_link(probe) if probe else None
        with console.status(f"measuring the guest ({sum(WINDOWS_S)} s of dirty-rate windows)"):
            measured = measure(cmd, link=link, sample_content=sample_content)
    finally:
        qmp.close()
    result = plan(measured, settings_of(measured, bandwidth, downtime_limit_ms, deadline_ms),
                  policy)
    render(result, console)
    if json_path is not None:
        write_json(result, json_path)
        console.print(f"plan saved to {json_path}")
    return 0


# --- the link probe -------------------------------------------------------------

PROBE_S = 1.0
PROBE_BLOCK = 1 << 20


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)
    except ValueError as err:
        raise LabError(f"'{text}' is not HOST:PORT") from err


def sink(address: str, once: bool = False, ready: Callable[[int], None] | None = None) -> None:
    """``livemig plan --sink [HOST:]PORT`` on the destination host: read and
    drop what a probe sends, then answer with the byte count."""
    host, port = parse_address(address if ":" in address else f":{address}")
    with socket.create_server((host, port)) as server:
        if ready:
            ready(server.getsockname()[1])
        while True:
            conn, _ = server.accept()
            with conn:
                got, buf = 0, bytearray(PROBE_BLOCK)
                while n := conn.recv_into(buf):
                    got += n
                conn.sendall(struct.pack("!Q", got))
            if once:
                return


def probe_link(address: str, seconds: float = PROBE_S) -> float:
    """Bytes/s to a sink: send for ``seconds``, then count until the sink
    has read it all."""
    host, port = parse_address(address)
    block = bytes(PROBE_BLOCK)
    try:
        with socket.create_connection((host, port), timeout=10) as conn:
            start = time.monotonic()
            sent = 0
            while time.monotonic() - start < seconds:
                conn.sendall(block)
                sent += len(block)
            conn.shutdown(socket.SHUT_WR)
            answer = conn.recv(8)
            took = time.monotonic() - start
    except OSError as err:
        raise LabError(f"link probe to {address}: {err.strerror or err}") from err
    if len(answer) != 8 or struct.unpack("!Q", answer)[0] != sent:
        raise LabError(f"link probe to {address}: the sink did not confirm {sent} bytes")
    return sent / took
