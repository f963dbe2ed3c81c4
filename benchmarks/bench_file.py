"""Save to a file and restore, livemig against QEMU: runs of the bench
engine's ``file`` scenario (``livemig bench file``, src/livemig/lab/bench.py).

    python benchmarks/bench_file.py [--runs N] [--ram 2G] [--dir /dev/shm]

An idle guest with all of ``--ram`` non-zero (the engine's ``filled``
guest: qtest ``memset``, never run) is saved to a file in ``--dir`` and
restored into a fresh process; the engine checks the saved and the
restored RAM. The default, /dev/shm, measures the VMMs rather than the
disk: on /tmp here, run after run of 2 GB writes soon waits on the kernel's
dirty-page writeback, which doubled either VMM's figures from one run to
the next. livemig uses ``file:PATH``; QEMU 7.2 has no ``file:``, so the
engine saves it with ``exec:cat > PATH`` and restores with ``exec:cat
PATH`` (how its users did it before QEMU 9). ``max-bandwidth`` is lifted.
Then livemig alone with ``mapped-ram``, and with mapped-ram and 2 multifd
threads (QEMU 7.2 has no mapped-ram: compare with the first table's QEMU
column).

total-time is the save (query-migrate polled every 50 ms: a poll every
5 ms, answered under livemig's GIL, slowed its multifd writers); restore is
the wall time from starting the destination process to its migration
status ``completed`` (its start-up included, on both VMMs). ratio =
livemig / QEMU.
"""

from __future__ import annotations

from pathlib import Path

from common import arguments, console, engine_vmms

from livemig.lab.bench import Options, bench

UNLIMITED = 100_000_000_000


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--ram", default="2G")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    base = Options(ram=args.ram, filled=True, bandwidth=UNLIMITED, poll_s=0.05,
                   save_dir=str(args.dir))
    for title, vmms, opts in (
            ("file: (QEMU: exec:cat)", engine_vmms(), base),
            ("file:, mapped-ram (livemig)", ["livemig"], base._replace(caps=("mapped-ram",))),
            ("file:, mapped-ram, multifd 2 threads (livemig)", ["livemig"],
             base._replace(caps=("mapped-ram", "multifd"),
                           params=(("multifd-channels", 2),)))):
        console.print(f"[bold]{args.ram} non-zero idle guest, file in {args.dir}: {title}[/bold]")
        bench("file", vmms, opts, runs=args.runs, console=console)
    console.print("ratio = livemig / QEMU: below 1 is better")


if __name__ == "__main__":
    main()
