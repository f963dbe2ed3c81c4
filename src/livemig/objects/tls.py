"""tls-creds-x509 and tls-creds-psk: QEMU's credential objects.

Files are QEMU's names inside ``dir``, and are checked when the object is
created (as QEMU does), so a missing file is an ``object-add`` error and
not a failed migration later.
"""

from __future__ import annotations

import binascii
import os
from dataclasses import dataclass, field
from typing import Any

from .registry import ObjectError, boolean, choice, reject_unknown, string

ENDPOINTS = ("client", "server")


def _need(path: str) -> str:
    if not os.access(path, os.R_OK):
        reason = os.strerror(2) if not os.path.exists(path) else os.strerror(13)
        raise ObjectError(f"Unable to access credentials {path}: {reason}")
    return path


@dataclass(frozen=True)
class TlsCredsX509:
    id: str
    dir: str
    endpoint: str
    verify_peer: bool
    ca_cert: str
    cert: str | None
    key: str | None

    @classmethod
    def create(cls, ident: str, props: dict[str, Any]) -> TlsCredsX509:
        reject_unknown(props, {"dir", "endpoint", "verify-peer", "priority", "sanity-check",
                               "passwordid", "loaded"})
        directory = string("dir", props.get("dir", ""))
        endpoint = choice("endpoint", props.get("endpoint", "client"), ENDPOINTS)
        verify = boolean("verify-peer", props.get("verify-peer", True))
        ca = _need(os.path.join(directory, "ca-cert.pem"))
        cert = os.path.join(directory, f"{endpoint}-cert.pem")
        key = os.path.join(directory, f"{endpoint}-key.pem")
        if endpoint == "server":
            _need(cert)
            _need(key)
        elif not (os.path.exists(cert) and os.path.exists(key)):
            cert = key = None  # a client may go without a certificate
        return cls(ident, directory, endpoint, verify, ca, cert, key)


@dataclass(frozen=True)
class TlsCredsPsk:
    id: str
    dir: str
    endpoint: str
    username: str
    keys: dict[str, bytes] = field(repr=False)

    @classmethod
    def create(cls, ident: str, props: dict[str, Any]) -> TlsCredsPsk:
        reject_unknown(props, {"dir", "endpoint", "username", "priority", "verify-peer",
                               "loaded"})
        directory = string("dir", props.get("dir", ""))
        endpoint = choice("endpoint", props.get("endpoint", "client"), ENDPOINTS)
        username = string("username", props.get("username", "qemu"))
        path = _need(os.path.join(directory, "keys.psk"))
        keys = read_keys(path)
        if endpoint == "client" and username not in keys:
            raise ObjectError(f"Username '{username}' not found in {path}")
        return cls(ident, directory, endpoint, username, keys)


def read_keys(path: str) -> dict[str, bytes]:
    """QEMU's keys.psk: one ``username:hexkey`` per line."""
    keys: dict[str, bytes] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            user, sep, hexkey = line.partition(":")
            try:
                if not sep or not user:
                    raise ValueError("not username:hexkey")
                keys[user] = binascii.unhexlify(hexkey)
            except (ValueError, binascii.Error) as err:
                raise ObjectError(f"{path}:{number}: malformed key line ({err})") from err
    return keys


TlsCreds = TlsCredsX509 | TlsCredsPsk
