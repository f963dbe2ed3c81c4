"""Split a QMP byte stream into JSON values, as QEMU's streaming parser does.

QMP has no framing: a value ends where its outermost brace or bracket
closes. Like QEMU we also accept single-quoted strings. Each complete value
is decoded; a value that does not decode is reported as an error and the
stream carries on with the next one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

MAX_VALUE = 64 << 20  # bytes one value may take before it is refused
MAX_NESTING = 1024    # QEMU's limit on nested objects and arrays together
# Python's decoder recurses once per level: the process needs at least this
# recursion limit (livemig-system-x86_64 sets it at start-up).
RECURSION_NEEDED = 4 * MAX_NESTING
_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ParseError(NamedTuple):
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
    if _KEYWORD.fullmatch(text) and text not in ("true", "false", "null"):
        return ParseError(f"JSON parse error, invalid keyword '{text}'")
    try:
        return json.loads(_single_to_double(text) if "'" in text else text)
    except json.JSONDecodeError as err:
        return ParseError(f"JSON parse error, {err.msg.lower()}")
    except RecursionError:
        return ParseError("JSON nesting depth limit exceeded")


class JsonSplitter:
    """Feed bytes in, get decoded values (or ParseError) out."""

    def __init__(self) -> None:
        self._buf: list[str] = []
        self._size = 0
        self._depth = 0
        self._quote: str | None = None
        self._escape = False
        self._scalar = False
        self._too_deep = False

    def _take(self) -> str:
        text = "".join(self._buf)
        self._buf, self._size, self._scalar = [], 0, False
        return text

    def _end_value(self) -> Any | ParseError:
        if self._too_deep:
            self._too_deep = False
            self._take()
            return ParseError("JSON nesting depth limit exceeded")
        return _decode(self._take())

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
                self._too_deep = self._too_deep or self._depth > MAX_NESTING
                self._buf.append(ch)
                continue
            if ch in "}]":
                if self._depth == 0:
                    yield ParseError(f"JSON parse error, stray '{ch}'")
                    continue
                self._depth -= 1
                self._buf.append(ch)
                if self._depth == 0:
                    yield self._end_value()
                continue
            self._buf.append(ch)
            if self._depth == 0:
                self._scalar = True
            self._size += 1
            if self._size > MAX_VALUE:
                self._take()
                self._depth, self._quote = 0, None
                yield ParseError("JSON parse error, value too large")
