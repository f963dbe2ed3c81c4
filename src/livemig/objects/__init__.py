"""User-creatable objects (QEMU's ``-object`` and ``object-add``): TLS
credentials, authorization lists and memory backends, looked up by id by
the layers that use them (migration's ``tls-creds`` and ``tls-authz``,
``-machine memory-backend``)."""

from __future__ import annotations

from typing import Any

from .registry import ObjectRegistry, UserObject

# The object types load on first use: start-up needs only the registry.
_LAZY = {"AuthzList": "authz", "AuthzSimple": "authz", "TlsCreds": "tls",
         "TlsCredsPsk": "tls", "TlsCredsX509": "tls", "MemoryBackend": "memory_backend"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["AuthzList", "AuthzSimple", "MemoryBackend", "ObjectRegistry", "TlsCreds", "TlsCredsPsk",
           "TlsCredsX509", "UserObject"]
