"""Local live upgrade: x-ignore-shared on a shared memory-backend-file,
livemig against QEMU.

    python benchmarks/bench_local_upgrade.py [--runs N] [--ram 150M 4G] [--accel tcg kvm]

The built-in guest runs with its RAM in a file in /dev/shm (``share=on``);
a second process of the same VMM maps the same file, both set
``x-ignore-shared``, and the guest moves over a unix socket: the stream
carries vCPU and device state, not RAM. Reported from the source's
``query-migrate``: downtime, total-time and the bytes sent. Each run
checks that the destination's guest is consistent (RAM check) after it.
livemig and QEMU run in turn; ratio = livemig / QEMU.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from common import accelerators, arguments, compare, console, report

from livemig.guest import AB_START
from livemig.lab import VmLauncher, VmmKind, wait_until
from livemig.lab.checks import check_ab_ram


def _backend(path: Path, ram: str) -> list[str]:
    return ["-object", f"memory-backend-file,id=mem,size={ram},mem-path={path},share=on",
            "-machine", "memory-backend=mem"]


def upgrade(kind: VmmKind, ram: str) -> dict[str, float]:
    lab = VmLauncher()
    path = Path("/dev/shm") / f"livemig-bench-{uuid.uuid4().hex}"
    try:
        src = lab.start(kind, "src", ram=ram, extra=_backend(path, ram))
        sock = lab.workdir / "upgrade.sock"
        dst = lab.start(kind, "dst", ram=ram,
                        extra=[*_backend(path, ram), "-incoming", f"unix:{sock}"])
        wait_until(sock.exists, 30, "the destination socket")
        for vm in (src, dst):
            vm.cmd("migrate-set-capabilities",
                   capabilities=[{"capability": "x-ignore-shared", "state": True}])
        first = src.pmem(AB_START, 1)
        wait_until(lambda: src.pmem(AB_START, 1) != first, 60, "the guest to run")
        src.cmd("migrate", uri=f"unix:{sock}")
        info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] in
                          ("completed", "failed") and i, 120, "the migration",
                          interval=0.002)
        if info["status"] != "completed":
            raise SystemExit(f"{kind.label}: migration failed: {info.get('error-desc')}")
        dst.wait_event("RESUME", timeout=60)
        src.quit()
        moved = dst.pmem(AB_START, 1)
        wait_until(lambda: dst.pmem(AB_START, 1) != moved, 60, "the guest to run on")
        dst.cmd("stop")
        if not (check := check_ab_ram(dst)).ok:
            raise SystemExit(f"{kind.label}: destination RAM inconsistent: "
                             f"{check.describe()}")
        return {"downtime": info["downtime"], "total-time": info["total-time"],
                "sent kB": info["ram"]["transferred"] / 1e3}
    finally:
        lab.close()
        path.unlink(missing_ok=True)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--ram", nargs="+", default=["150M", "4G"])
    parser.set_defaults(accel=["tcg"])
    args = parser.parse_args()
    for accel in accelerators(args.accel):
        for ram in args.ram:
            ours, theirs = compare(args.runs, accel, lambda kind, ram=ram: upgrade(kind, ram))
            report(f"local upgrade, x-ignore-shared, {ram} guest, {accel}", ours, theirs,
                   {"downtime": "ms", "total-time": "ms", "sent kB": "kB"})
    console.print("ratio = livemig / QEMU: below 1 is better")


if __name__ == "__main__":
    main()
