"""Start-up time and guest speed, livemig against QEMU.

    python benchmarks/bench_boot.py [--runs N] [--accel tcg kvm] [--seconds S]

start-up: time from exec to the QMP greeting, and to the answer of the first
command after it (query-status; alternating runs, medians), per accelerator.
guest speed: increment passes per second of the built-in guest, measured by
sampling the byte at 1 MiB (it goes up by one per pass) over S seconds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time

from common import accelerators, alternate, arguments, kinds, report

from livemig.guest import AB_START
from livemig.lab import VmLauncher, VmmKind, wait_until


def startup_once(kind: VmmKind, lab: VmLauncher) -> dict[str, float]:
    qmp = lab.workdir / f"start-{time.monotonic_ns()}.qmp"
    argv = [*lab.argv(kind, "start", extra=[], qmp=False), "-qmp", f"unix:{qmp},server=on,wait=off"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        times: dict[str, float] = {}

        def greeting() -> bool:
            if not qmp.exists():
                return False
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(qmp))
                    stream = sock.makefile("rwb")
                    if "QMP" not in json.loads(stream.readline()):
                        return False
                    times["startup"] = (time.perf_counter() - t0) * 1000
                    stream.write(b'{"execute": "qmp_capabilities"}\n'
                                 b'{"execute": "query-status"}\n')
                    stream.flush()
                    stream.readline()
                    stream.readline()
                    times["first answer"] = (time.perf_counter() - t0) * 1000
                    return True
            except OSError:
                return False
        wait_until(greeting, 60, "the QMP greeting", interval=0.002)
        return times
    finally:
        proc.kill()
        proc.wait()


def speed_once(kind: VmmKind, lab: VmLauncher, seconds: float) -> dict[str, float]:
    vm = lab.start(kind, "speed")
    try:
        vm.wait_serial(b"A", timeout=120)
        last = vm.pmem(AB_START, 1)[0]
        passes = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            time.sleep(0.02)
            now = vm.pmem(AB_START, 1)[0]
            passes += (now - last) % 256
            last = now
        return {"passes/s": passes / (time.perf_counter() - t0)}
    finally:
        vm.kill()


def compile_sources() -> None:
    """Bring livemig's .pyc files up to date first, as scripts/setup.sh
    does: with PYTHONDONTWRITEBYTECODE set (as on these machines) a source
    edited since would be compiled again at every start, and the start-up
    measured would be the compiler's (2.8x instead of 2.3x here)."""
    import compileall
    from pathlib import Path

    import livemig
    compileall.compile_dir(str(Path(livemig.__file__).parent), quiet=1)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    compile_sources()
    lab = VmLauncher()
    try:
        for accel in accelerators(args.accel):
            ours_kind, qemu_kind = kinds(accel)
            ours, theirs = alternate(
                args.runs, lambda k=ours_kind: startup_once(k, lab),
                (lambda k=qemu_kind: startup_once(k, lab)) if qemu_kind else None)
            report(f"start-up: exec to QMP greeting ({accel})", ours, theirs,
                   {"startup": "ms", "first answer": "ms"})
        for accel in accelerators(args.accel):
            ours_kind, qemu_kind = kinds(accel)
            seconds = args.seconds * (4 if accel == "kvm" else 1)
            ours, theirs = alternate(
                max(1, args.runs // 2), lambda k=ours_kind, s=seconds: speed_once(k, lab, s),
                (lambda k=qemu_kind, s=seconds: speed_once(k, lab, s)) if qemu_kind else None)
            report(f"guest speed ({accel})", ours, theirs, {"passes/s": "passes/s"})
    finally:
        lab.close()


if __name__ == "__main__":
    main()
