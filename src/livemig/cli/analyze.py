"""``livemig analyze-migration FILE``: what a saved migration stream holds.

The stream inspector, as QEMU ships scripts/analyze-migration.py. A stream
saved with ``migrate exec:cat>FILE`` is read with livemig's own codec (so
the file is checked exactly as a destination checks it): the header, a
summary per record type (count, bytes, pages and page ranges), and the
decoded machine state as JSON. A malformed file is one clear line naming
the byte offset, and exit status 1.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import StreamError
from ..memory import PAGE_SIZE
from ..migration import codec


@dataclass
class RecordSummary:
    count: int = 0
    bytes: int = 0
    pages: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)  # merged (first, end)

    def add_range(self, first: int, count: int) -> None:
        self.pages += count
        if self.ranges and self.ranges[-1][1] == first:
            self.ranges[-1] = (self.ranges[-1][0], first + count)
        else:
            self.ranges.append((first, first + count))


@dataclass
class Analysis:
    header: codec.Header
    records: dict[str, RecordSummary]
    states: list[dict[str, Any]]
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "header": {"version": codec.VERSION, "page-size": self.header.page_size,
                       "ram-size": self.header.ram_size, "machine": self.header.machine,
                       "uuid": self.header.uuid},
            "records": {name: {"count": s.count, "bytes": s.bytes, "pages": s.pages,
                               "page-ranges": len(s.ranges)}
                        for name, s in self.records.items()},
            "states": self.states,
            "size": self.size,
        }


def analyze(stream: IO[bytes]) -> Analysis:
    """Read a whole stream; StreamError (with its offset) if it is malformed."""
    reader = codec.BufferedReader(stream.readinto)  # type: ignore[attr-defined]
    header = codec.read_header(reader)
    if header.page_size != PAGE_SIZE or header.ram_size % PAGE_SIZE:
        raise StreamError(f"page size {header.page_size} / RAM size {header.ram_size} "
                          "not supported", 0)
    limits = codec.Limits(header.ram_size // PAGE_SIZE)
    records: dict[str, RecordSummary] = {}
    states: list[dict[str, Any]] = []
    scratch = bytearray(1 << 20)
    while True:
        start = reader.offset
        record = codec.read_record(reader, limits)
        name = type(record).__name__
        summary = records.setdefault(name, RecordSummary())
        summary.count += 1
        if isinstance(record, codec.PageRun):
            left = record.count * PAGE_SIZE
            while left:  # skip the contents, a scratch buffer at a time
                take = min(left, len(scratch))
                reader.readinto(memoryview(scratch)[:take])
                left -= take
        if isinstance(record, codec.PageRun | codec.ZeroRun):
            summary.add_range(record.first, record.count)
        elif isinstance(record, codec.Discard):
            for first, count in record.runs():
                summary.add_range(first, count)
        elif isinstance(record, codec.State):
            states.append(record.body)
        summary.bytes += reader.offset - start
        if isinstance(record, codec.End):
            return Analysis(header, records, states, reader.offset)


def _ranges(ranges: list[tuple[int, int]], most: int = 4) -> str:
    shown = ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in ranges[:most])
    return shown + (f", … ({len(ranges)} ranges)" if len(ranges) > most else "")


def print_report(result: Analysis, out: IO[str]) -> None:
    h = result.header
    print(f"livemig migration stream, version {codec.VERSION}: {result.size} bytes", file=out)
    print(f"  page size {h.page_size}, RAM {h.ram_size} bytes "
          f"({h.ram_size // h.page_size} pages), UUID {h.uuid or 'not sent'}", file=out)
    print(f"  machine: {json.dumps(h.machine, sort_keys=True)}", file=out)
    print(f"{'record':<16}{'count':>8}{'bytes':>14}{'pages':>10}  page ranges", file=out)
    for name, s in result.records.items():
        print(f"{name:<16}{s.count:>8}{s.bytes:>14}{s.pages or '':>10}  {_ranges(s.ranges)}",
              file=out)
    for index, body in enumerate(result.states):
        print(f"machine state {index + 1}:", file=out)
        print(json.dumps(body, indent=2, sort_keys=True), file=out)


def main(path: str, as_json: bool) -> int:
    try:
        with open(path, "rb") as stream:
            result = analyze(stream)
    except OSError as err:
        print(f"livemig analyze-migration: {path}: {err.strerror}", file=sys.stderr)
        return 1
    except StreamError as err:
        print(f"livemig analyze-migration: {path}: malformed stream: {err}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(result.to_json(), sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print_report(result, sys.stdout)
    return 0
