"""``livemig analyze-migration FILE``: what a saved migration stream holds.

The stream inspector, as QEMU ships scripts/analyze-migration.py. A stream
saved with ``migrate file:FILE`` (or ``exec:cat>FILE``) is read with
livemig's own codec (so the file is checked exactly as a destination
checks it): the header, a summary per record type (count, bytes, pages and
page ranges), and the decoded machine state as JSON. A mapped-ram file's
pages are summed up from its bitmap (as "MappedPages"), and its records
read from after the pages. A malformed file is one clear line naming
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
                       "uuid": self.header.uuid, "mapped-ram": self.header.mapped_ram},
            "records": {name: {"count": s.count, "bytes": s.bytes, "pages": s.pages,
                               "page-ranges": len(s.ranges)}
                        for name, s in self.records.items()},
            "states": self.states,
            "size": self.size,
        }


def _mapped_pages(stream: IO[bytes], base: int, reader: codec.BufferedReader,
                  header: codec.Header, summary: RecordSummary) -> None:
    """A mapped-ram file: the pages its bitmap says are present (checked to
    lie inside the file), then on to the records after the pages."""
    import numpy as np

    from ..migration.mapped_ram import Layout, bitmap_bytes
    from ..migration.pages import runs

    assert header.mapped_ram is not None
    pages = header.ram_size // PAGE_SIZE
    layout = Layout.from_wire(header.mapped_ram, reader.offset, pages, 0)
    stream.seek(base + layout.bitmap)
    bitmap = stream.read(bitmap_bytes(pages))
    if len(bitmap) != bitmap_bytes(pages):
        raise StreamError("mapped-ram file ends inside its page bitmap", layout.bitmap)
    present = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8),
                            bitorder="little")[:pages].astype(bool)
    for first, count in zip(*runs(present), strict=True):
        summary.add_range(int(first), int(count))
    summary.count = 1
    summary.bytes = len(bitmap) + summary.pages * PAGE_SIZE
    size = stream.seek(0, 2) - base
    if summary.ranges and layout.pages + summary.ranges[-1][1] * PAGE_SIZE > size:
        raise StreamError(f"mapped-ram file ends inside page "
                          f"{(size - layout.pages) // PAGE_SIZE}", size)
    stream.seek(base + layout.records)
    reader.restart_at(layout.records)


def analyze(stream: IO[bytes], base: int = 0) -> Analysis:
    """Read a whole stream (from ``base`` in the file); StreamError (with
    its offset from there) if it is malformed."""
    stream.seek(base)
    reader = codec.BufferedReader(stream.readinto)  # type: ignore[attr-defined]
    header = codec.read_header(reader)
    if header.page_size != PAGE_SIZE or header.ram_size % PAGE_SIZE:
        raise StreamError(f"page size {header.page_size} / RAM size {header.ram_size} "
                          "not supported", 0)
    limits = codec.Limits(header.ram_size // PAGE_SIZE)
    records: dict[str, RecordSummary] = {}
    if header.mapped_ram is not None:
        _mapped_pages(stream, base, reader, header, records.setdefault("MappedPages",
                                                                      RecordSummary()))
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


def main(path: str, as_json: bool, offset: int = 0) -> int:
    try:
        with open(path, "rb") as stream:
            result = analyze(stream, offset)
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
