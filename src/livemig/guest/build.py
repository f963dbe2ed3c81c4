"""Rebuild the shipped boot sectors (ab_bootsect.bin, dirty_bootsect.bin)
from their sources with GNU as and ld.

    python -m livemig.guest.build [--check]

``--check`` rebuilds into a temporary directory and fails if an image
differs from the shipped one, so the binaries in the tree match their sources.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("ab_bootsect", "dirty_bootsect")


def build(source: Path, output: Path) -> None:
    """Assemble ``source`` as a flat binary linked at 0x7c00."""
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "guest.o"
        subprocess.run(["as", "--32", "-I", str(source.parent), "-o", str(obj), str(source)],
                       check=True)
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
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SOURCES:
            source, shipped = HERE / f"{name}.S", HERE / f"{name}.bin"
            fresh = Path(tmp) / f"{name}.bin" if args.check else shipped
            build(source, fresh)
            if args.check and fresh.read_bytes() != shipped.read_bytes():
                stale.append(shipped.name)
            elif not args.check:
                print(f"wrote {shipped}")
    if stale:
        print(f"stale: {', '.join(stale)}: rebuild with python -m livemig.guest.build",
              file=sys.stderr)
        return 1
    if args.check:
        print("every shipped image matches its source")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
