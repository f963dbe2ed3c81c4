"""The objects of one VM by id, created from ``-object`` or QMP ``object-add``.

Properties arrive as strings (command line) or JSON values (QMP); each type
converts and checks its own, with QEMU's error messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..errors import LivemigError


class ObjectError(LivemigError):
    """An object could not be created, found or deleted."""


class UserObject(Protocol):
    id: str


Factory = Callable[[str, dict[str, Any]], UserObject]


def boolean(name: str, value: Any) -> bool:
    """A bool property: JSON true/false, or QEMU's on/off/yes/no/true/false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("on", "yes", "true"):
        return True
    if isinstance(value, str) and value in ("off", "no", "false"):
        return False
    raise ObjectError(f"Parameter '{name}' expects 'on' or 'off'")


def string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ObjectError(f"Invalid parameter type for '{name}', expected: string")
    return value


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = string(name, value)
    if text not in allowed:
        raise ObjectError(f"Parameter '{name}' does not accept value '{text}'")
    return text


def reject_unknown(props: dict[str, Any], known: set[str]) -> None:
    for key in props:
        if key not in known:
            raise ObjectError(f"Parameter '{key}' is unexpected")


class ObjectRegistry:
    def __init__(self) -> None:
        self._objects: dict[str, UserObject] = {}

    @staticmethod
    def factories() -> dict[str, Factory]:
        from .authz import AuthzList, AuthzSimple
        from .memory_backend import FACTORIES
        from .secret import Secret
        from .tls import TlsCredsPsk, TlsCredsX509
        return {"tls-creds-x509": TlsCredsX509.create, "tls-creds-psk": TlsCredsPsk.create,
                "authz-simple": AuthzSimple.create, "authz-list": AuthzList.create,
                "secret": Secret.create,
                **FACTORIES}

    def add(self, qom_type: Any, props: dict[str, Any]) -> UserObject:
        factories = self.factories()
        qom_type = string("qom-type", qom_type)
        if qom_type not in factories:
            raise ObjectError(f"Parameter 'qom-type' does not accept value '{qom_type}'")
        props = dict(props)
        if "id" not in props:
            raise ObjectError("Parameter 'id' is missing")
        ident = string("id", props.pop("id"))
        if ident in self._objects:
            raise ObjectError(f"attempt to add duplicate property '{ident}' to object "
                              "(type 'container')")
        obj = factories[qom_type](ident, props)
        self._objects[ident] = obj
        return obj

    def delete(self, ident: str) -> None:
        obj = self._objects.get(ident)
        if obj is None:
            raise ObjectError(f"object '{ident}' not found")
        if getattr(obj, "in_use", False):  # a memory backend that is guest RAM
            raise ObjectError(f"object '{ident}' is in use, can not be deleted")
        del self._objects[ident]

    def get(self, ident: str) -> UserObject | None:
        return self._objects.get(ident)
