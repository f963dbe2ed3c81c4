"""Rebuild ab_bootsect.bin from ab_bootsect.S with GNU as and ld.

    python -m livemig.guest.build [--check]

``--check`` rebuilds into a temporary file and fails if it differs from the
shipped image, so the binary in the tree always matches its source.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(source: Path, output: Path) -> None:
    """Assemble ``source`` as a flat binary linked at 0x7c00."""
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "guest.o"
        subprocess.run(["as", "--32", "-o", str(obj), str(source)], check=True)
        subprocess.run(
            ["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "-e", "_start",
             "--oformat", "binary", "-o", str(output), str(obj)],
            check=True,
        )
    data = output.read_bytes()
    if len(data) != 512 or data[510:] != b"\x55\xaa":
        raise SystemExit(f"{output}: not a 512-byte boot sector ({len(data)} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify, do not overwrite")
    args = parser.parse_args()
    source, shipped = HERE / "ab_bootsect.S", HERE / "ab_bootsect.bin"
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "ab.bin"
            build(source, fresh)
            if fresh.read_bytes() != shipped.read_bytes():
                print("ab_bootsect.bin is stale: rebuild it", file=sys.stderr)
                return 1
        print("ab_bootsect.bin matches its source")
        return 0
    build(source, shipped)
    print(f"wrote {shipped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
