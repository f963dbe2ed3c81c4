"""Split a QMP byte stream into JSON values, as QEMU's streaming parser does.

QMP has no framing: a value ends where its outermost brace or bracket
closes. Like QEMU we also accept single-quoted strings. Each complete value
is decoded; a value that does not decode is reported as an error and the
stream carries on with the next one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_VALUE = 64 << 20  # bytes one value may take before it is refused


@dataclass(frozen=True)
class ParseError:
    message: str


def _single_to_double(text: str) -> str:
    """Rewrite 'single-quoted' strings as JSON "double-quoted" ones."""
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is None:
            if ch in "'\"":
                quote = ch
                out.append('"')
            else:
                out.append(ch)
        elif ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append("'" if nxt == "'" else ch + nxt)
            i += 1
        elif ch == quote:
            quote = None
            out.append('"')
        elif ch == '"':
            out.append('\\"')
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _decode(text: str) -> Any | ParseError:
    try:
        return json.loads(_single_to_double(text) if "'" in text else text)
    except (json.JSONDecodeError, RecursionError) as err:
        return ParseError(f"JSON parse error, {err.msg.lower()}")


class JsonSplitter:
    """Feed bytes in, get decoded values (or ParseError) out."""

    def __init__(self) -> None:
        self._buf: list[str] = []
        self._size = 0
        self._depth = 0
        self._quote: str | None = None
        self._escape = False
        self._scalar = False

    def _take(self) -> str:
        text = "".join(self._buf)
        self._buf, self._size, self._scalar = [], 0, False
        return text

    def feed(self, data: bytes) -> Iterator[Any | ParseError]:
        text = data.decode("utf-8", errors="replace")
        for ch in text:
            if self._quote is not None:
                self._buf.append(ch)
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == self._quote:
                    self._quote = None
                    if self._depth == 0:
                        yield _decode(self._take())
                continue
            if self._depth == 0 and self._scalar and (ch.isspace() or ch in "{}[]'\""):
                yield _decode(self._take())
            if ch.isspace() and self._depth == 0:
                continue
            if ch in "'\"":
                self._quote = ch
                self._buf.append(ch)
                continue
            if ch in "{[":
                self._depth += 1
                self._buf.append(ch)
                continue
            if ch in "}]":
                if self._depth == 0:
                    yield ParseError(f"JSON parse error, stray '{ch}'")
                    continue
                self._depth -= 1
                self._buf.append(ch)
                if self._depth == 0:
                    yield _decode(self._take())
                continue
            self._buf.append(ch)
            if self._depth == 0:
                self._scalar = True
            self._size += 1
            if self._size > MAX_VALUE:
                self._take()
                self._depth, self._quote = 0, None
                yield ParseError("JSON parse error, value too large")
