"""Save to a file and restore, livemig against QEMU.

    python benchmarks/bench_file.py [--runs N] [--ram 2G] [--dir /dev/shm]

An idle guest (``-S``) with all of ``--ram`` non-zero (qtest ``memset``) is
saved to a file in ``--dir`` and restored into a fresh process. The
default, /dev/shm, measures the VMMs rather than the disk: on /tmp here,
run after run of 2 GB writes soon waits on the kernel's dirty-page
writeback, which doubled either VMM's figures from one run to the next.
livemig uses ``file:PATH``, with and without the ``mapped-ram``
capability; QEMU 7.2 has neither, so it saves with ``exec:cat > PATH``
and restores with ``-incoming 'exec:cat PATH'`` (how its users did it
before QEMU 9). ``max-bandwidth`` is lifted on both.

save: the source's ``total-time`` (query-migrate polled every 50 ms: a
poll every 5 ms, answered under livemig's GIL, slowed its multifd writers).
restore: wall time from starting the destination process to its migration
status ``completed`` (its start-up included, on both VMMs; polled every
20 ms). size: the file. livemig and QEMU run in turn;
ratio = livemig / QEMU.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from common import arguments, compare, console, fill_over_qtest, report

from livemig.lab import Vm, VmLauncher, VmmKind, qtest_listener, set_mapped_ram, wait_until

UNLIMITED = 100_000_000_000


def _status(vm: Vm) -> str:
    return str(vm.cmd("query-migrate").get("status", "none"))


def save_and_restore(kind: VmmKind, ram: str, mapped: bool, where: Path,
                     threads: int = 0) -> dict[str, float]:
    """``threads``: with mapped-ram, multifd with that many writers and readers."""
    lab = VmLauncher()
    image = where / f"livemig-bench-{uuid.uuid4().hex}.img"
    try:
        size = int(ram.rstrip("G")) << 30
        qtest_path = lab.workdir / "fill.qtest"
        listener = qtest_listener(qtest_path)
        src = lab.start(kind, "src", ram=ram, boot=False,
                        extra=["-S", "-qtest", f"unix:{qtest_path}"])
        qtest = fill_over_qtest(listener, kind, size)
        try:
            if mapped and not kind.is_qemu:   # QEMU 7.2 has no mapped-ram
                set_mapped_ram(src, threads)
            src.cmd("migrate-set-parameters", **{"max-bandwidth": UNLIMITED})
            save = f"exec:cat > {image}" if kind.is_qemu else f"file:{image}"
            src.cmd("migrate", uri=save)
            # The figure is the VMM's own total-time, so the poll can be sparse:
            # one every 5 ms took a tenth of livemig's GIL from its writers.
            info = wait_until(lambda: (i := src.cmd("query-migrate"))["status"] in
                              ("completed", "failed") and i, 300, "the save", interval=0.05)
            if info["status"] != "completed":
                raise SystemExit(f"{kind.label}: save failed: {info.get('error-desc')}")
        finally:
            qtest.close()
        src.quit()
        restore = f"exec:cat {image}" if kind.is_qemu else f"file:{image}"
        started = time.perf_counter()
        incoming = "defer" if threads and not kind.is_qemu else restore
        dst = lab.start(kind, "dst", ram=ram, boot=False, extra=["-S", "-incoming", incoming])
        if incoming == "defer":
            set_mapped_ram(dst, threads)
            dst.cmd("migrate-incoming", uri=restore)
        wait_until(lambda: _status(dst) == "completed", 300, "the restore", interval=0.02)
        restored = time.perf_counter() - started
        if dst.pmem(size - 4096, 4096) != b"\x5a" * 4096:
            raise SystemExit(f"{kind.label}: the restored RAM is not what was saved")
        return {"save": info["total-time"], "restore": restored * 1000,
                "size": image.stat().st_size / 1e6}
    finally:
        lab.close()
        image.unlink(missing_ok=True)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--ram", default="2G")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    units = {"save": "ms", "restore": "ms", "size": "MB"}
    for mapped, threads in ((False, 0), (True, 0), (True, 2)):
        ours, theirs = compare(args.runs, "tcg",
                               lambda kind, m=mapped, t=threads:
                               save_and_restore(kind, args.ram, m, args.dir, t))
        label = ("file:, mapped-ram" if mapped else "file:") + (
            f", multifd {threads} threads" if threads else "")
        report(f"{args.ram} non-zero idle guest, file in {args.dir}: livemig {label} vs QEMU "
               "exec:cat", ours,
               theirs, units)
    console.print("ratio = livemig / QEMU: below 1 is better")


if __name__ == "__main__":
    main()
