"""secret: QEMU's object holding a password or key, given inline
(``data=``) or in a file (``file=``), raw or base64. libvirt adds one
(``masterKey0``) to every domain it starts; livemig keeps the bytes for
whatever names the secret and sends nothing it holds anywhere."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from .registry import ObjectError, choice, reject_unknown, string


@dataclass(frozen=True)
class Secret:
    id: str
    value: bytes = field(repr=False)

    @classmethod
    def create(cls, ident: str, props: dict[str, Any]) -> Secret:
        reject_unknown(props, {"data", "file", "format"})
        fmt = choice("format", props.get("format", "raw"), ("raw", "base64"))
        if ("data" in props) == ("file" in props):
            raise ObjectError("'file' and 'data' are mutually exclusive, one is required")
        if "data" in props:
            raw = string("data", props["data"]).encode()
        else:
            path = string("file", props["file"])
            try:
                with open(path, "rb") as handle:
                    raw = handle.read()
            except OSError as err:
                raise ObjectError(f"Unable to read {path}: {err.strerror}") from err
        if fmt == "base64":
            try:
                raw = base64.b64decode(raw, validate=True)
            except binascii.Error as err:
                raise ObjectError(f"Unable to decode base64 secret '{ident}'") from err
        return cls(ident, raw)
