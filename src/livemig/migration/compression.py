"""multifd-compression: zlib (the standard library) and zstd (python-zstandard).

Each compressed run is compressed on its own, so a destination channel can
decode any run without the ones before it, and a malformed run is caught
where it is. Both libraries release the GIL while they work, so channel
threads compress in parallel. zstandard is imported only when a migration
asks for zstd.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from ..errors import StreamError

Compress = Callable[[memoryview], bytes]
Decompress = Callable[[bytes, int], bytes]

METHODS = ("zlib", "zstd")


def compressor(method: str, level: int) -> Compress:
    """A compressor for one channel thread (zstd's objects are per thread)."""
    if method == "zlib":
        return lambda data: zlib.compress(data, level)
    if method == "zstd":
        import zstandard

        ctx = zstandard.ZstdCompressor(level=level)
        return ctx.compress
    raise ValueError(f"no compression method {method!r}")


def decompressor(method: str) -> Decompress:
    """``decompress(data, size)``: exactly ``size`` bytes, or StreamError."""
    if method == "zlib":
        def unzlib(data: bytes, size: int) -> bytes:
            engine = zlib.decompressobj()
            out = engine.decompress(data, size)
            if not engine.eof or engine.unconsumed_tail or engine.unused_data:
                raise ValueError("the compressed data does not end where it should")
            return out
        return _checked(unzlib, zlib.error)
    if method == "zstd":
        import zstandard

        ctx = zstandard.ZstdDecompressor()

        def unzstd(data: bytes, size: int) -> bytes:
            return ctx.decompress(data, max_output_size=size)
        return _checked(unzstd, zstandard.ZstdError)
    raise ValueError(f"no compression method {method!r}")


def _checked(decode: Decompress, library_error: type[Exception]) -> Decompress:
    def run(data: bytes, size: int) -> bytes:
        try:
            out = decode(data, size)
        except (library_error, ValueError, MemoryError) as err:
            raise StreamError(f"malformed compressed pages: {err}") from err
        if len(out) != size:
            raise StreamError(f"compressed pages decode to {len(out)} bytes, "
                              f"expected {size}")
        return out
    return run
