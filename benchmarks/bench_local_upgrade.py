"""Local live upgrade, livemig against QEMU: x-ignore-shared on a shared
memory-backend-file, and cpr-transfer on a memfd.

    python benchmarks/bench_local_upgrade.py [--runs N] [--ram 150M 4G] [--accel tcg kvm]
        [--mode ignore-shared cpr-transfer]

ignore-shared: the built-in guest runs with its RAM in a file in /dev/shm
(``share=on``); a second process of the same VMM maps the same file, both
set ``x-ignore-shared``, and the guest moves over a unix socket: the stream
carries vCPU and device state, not RAM.

cpr-transfer: the guest's RAM is a memfd; the new process waits on a cpr
channel for its descriptor, then takes the state on the main channel
(QEMU 10's mode). A QEMU without the mode (7.2) does its ignore-shared
upgrade instead, the closest it has, and the table says so.

Reported from the source's ``query-migrate``: downtime, total-time and the
bytes sent; and the guest's pause as it sees it, from the old process's
STOP event to the new one's RESUME. Each run checks that the destination's guest is consistent
(RAM check) after it. livemig and QEMU run in turn; ratio = livemig / QEMU.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from common import accelerators, arguments, compare, console, kinds, report
from qemu.qmp.legacy import QEMUMonitorProtocol

from livemig.guest import AB_START
from livemig.lab import LabError, Vm, VmLauncher, VmmKind, wait_until
from livemig.lab.checks import check_ab_ram


def _backend(path: Path, ram: str) -> list[str]:
    return ["-object", f"memory-backend-file,id=mem,size={ram},mem-path={path},share=on",
            "-machine", "memory-backend=mem"]


def _unix(path: Path) -> dict[str, str]:
    return {"transport": "socket", "type": "unix", "path": str(path)}


def has_cpr_transfer(kind: VmmKind) -> bool:
    lab = VmLauncher()
    try:
        return "mode" in lab.start(kind, "probe", boot=False).cmd("query-migrate-parameters")
    finally:
        lab.close()


def _ignore_shared(lab: VmLauncher, kind: VmmKind, ram: str, path: Path) -> tuple[Vm, Vm]:
    """Both processes on one file; the migrate is sent once the guest runs."""
    src = lab.start(kind, "src", ram=ram, extra=_backend(path, ram))
    sock = lab.workdir / "upgrade.sock"
    dst = lab.start(kind, "dst", ram=ram,
                    extra=[*_backend(path, ram), "-incoming", f"unix:{sock}"])
    wait_until(sock.exists, 30, "the destination socket")
    for vm in (src, dst):
        vm.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "x-ignore-shared", "state": True}])
    _running(src)
    src.cmd("migrate", uri=f"unix:{sock}")
    return src, dst


def _cpr_transfer(lab: VmLauncher, kind: VmmKind, ram: str) -> tuple[Vm, Vm]:
    """The old process's memfd goes to the new one on the cpr channel.

    The new process opens its monitor only once it has the descriptor, and
    may run the guest a few ms later: its monitor is a client of a socket
    that listens here already, so that its RESUME event is not missed."""
    memfd = ["-object", f"memory-backend-memfd,id=mem,size={ram},share=on",
             "-machine", "memory-backend=mem,aux-ram-share=on"]
    src = lab.start(kind, "src", ram=ram, extra=memfd)
    main, cpr = lab.workdir / "main.sock", lab.workdir / "cpr.sock"
    qmp_path = lab.workdir / "dst.qmp"
    monitor = QEMUMonitorProtocol(str(qmp_path), server=True)
    cpr_channel = json.dumps({"channel-type": "cpr", "addr": _unix(cpr)})
    argv = lab.argv(kind, "dst", ram, [*memfd, "-incoming", f"unix:{main}",
                                       "-incoming", cpr_channel, "-qmp", f"unix:{qmp_path}"],
                    qmp=False)
    dst = Vm(kind, lab.spawn(argv, "dst"), lab.workdir, "dst", qmp_path,
             lab.workdir / "dst.serial", lab.workdir / "dst.stderr")
    lab.vms.append(dst)
    wait_until(cpr.exists, 30, "the new process's cpr channel")
    src.cmd("migrate-set-parameters", mode="cpr-transfer")
    _running(src)
    src.cmd("migrate", channels=[{"channel-type": "main", "addr": _unix(main)},
                                 {"channel-type": "cpr", "addr": _unix(cpr)}])
    monitor.accept(timeout=60)
    dst.qmp = monitor
    return src, dst


class MissedResume(Exception):
    """The new process ran the guest before this client could hear it."""


def sample_retrying(kind: VmmKind, ram: str, mode: str, tries: int = 5) -> dict[str, float]:
    for _ in range(tries - 1):
        try:
            return upgrade(kind, ram, mode)
        except MissedResume:
            console.print(f"{kind.label}: RESUME came before the monitor was ready; again")
    return upgrade(kind, ram, mode)


def _stamp(event: dict[str, Any]) -> float:
    return event["timestamp"]["seconds"] + event["timestamp"]["microseconds"] / 1e6


def _running(vm: Vm) -> None:
    first = vm.pmem(AB_START, 1)
    wait_until(lambda: vm.pmem(AB_START, 1) != first, 60, "the guest to run")


def upgrade(kind: VmmKind, ram: str, mode: str) -> dict[str, float]:
    lab = VmLauncher()
    path = Path("/dev/shm") / f"livemig-bench-{uuid.uuid4().hex}"
    try:
        if mode == "cpr-transfer":
            src, dst = _cpr_transfer(lab, kind, ram)
        else:
            src, dst = _ignore_shared(lab, kind, ram, path)
        info: dict[str, Any] = wait_until(
            lambda: (i := src.cmd("query-migrate"))["status"] in ("completed", "failed") and i,
            120, "the migration", interval=0.002)
        if info["status"] != "completed":
            raise SystemExit(f"{kind.label}: migration failed: {info.get('error-desc')}")
        wait_until(lambda: dst.status() == "running", 60, "the destination to run")
        # What the guest sees: from the old process's STOP to the new one's
        # RESUME (QMP event timestamps, one host clock). query-migrate's
        # downtime ends when the source has sent the state.
        try:
            resumed = dst.wait_event("RESUME", timeout=5)
        except LabError as err:
            # cpr-transfer: the new process's monitor comes up a moment
            # before it may run the guest (under kvm, well under a ms), and
            # an event before the client's negotiation is not sent to it.
            raise MissedResume(str(err)) from err
        pause = _stamp(resumed) - _stamp(src.wait_event("STOP", timeout=10))
        src.quit()
        _running(dst)
        dst.cmd("stop")
        if not (check := check_ab_ram(dst)).ok:
            raise SystemExit(f"{kind.label}: destination RAM inconsistent: "
                             f"{check.describe()}")
        return {"downtime": info["downtime"], "guest pause": pause * 1000,
                "total-time": info["total-time"],
                "sent kB": info["ram"]["transferred"] / 1e3}
    finally:
        lab.close()
        path.unlink(missing_ok=True)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--ram", nargs="+", default=["150M", "4G"])
    parser.add_argument("--mode", nargs="+", default=["ignore-shared", "cpr-transfer"],
                        choices=["ignore-shared", "cpr-transfer"])
    parser.set_defaults(accel=["tcg"])
    args = parser.parse_args()
    for accel in accelerators(args.accel):
        qemu = kinds(accel)[1]
        qemu_cpr = qemu is not None and has_cpr_transfer(qemu)
        for mode in args.mode:
            for ram in args.ram:
                def sample(kind: VmmKind, ram: str = ram, mode: str = mode,
                           qemu_cpr: bool = qemu_cpr) -> dict[str, float]:
                    fallback = kind.is_qemu and mode == "cpr-transfer" and not qemu_cpr
                    return sample_retrying(kind, ram, "ignore-shared" if fallback else mode)
                ours, theirs = compare(args.runs, accel, sample)
                title = f"local upgrade, {mode}, {ram} guest, {accel}"
                if mode == "cpr-transfer" and qemu is not None and not qemu_cpr:
                    title += " (QEMU: no cpr-transfer, so its x-ignore-shared)"
                report(title, ours, theirs,
                       {"downtime": "ms", "guest pause": "ms", "total-time": "ms",
                        "sent kB": "kB"})
    console.print("ratio = livemig / QEMU: below 1 is better")


if __name__ == "__main__":
    main()
