"""Migration commands. Each handler is one call into MigrationManager."""

from __future__ import annotations

from typing import Any

from ...errors import QmpError
from ...migration import MigrationManager
from ...migration.params import CAPABILITIES, parameter_schema
from ...migration.status import Status
from ..context import QmpContext
from ..registry import command


def _manager(ctx: QmpContext) -> MigrationManager:
    assert isinstance(ctx.migration, MigrationManager)
    return ctx.migration


@command("migrate", {"*uri": "str", "*channels": ["any"], "*blk": "bool", "*inc": "bool",
                     "*detach": "bool", "*resume": "bool"})
def migrate(ctx: QmpContext, uri: str | None = None, channels: list[Any] | None = None,
            blk: bool = False, inc: bool = False, detach: bool = False,
            resume: bool = False) -> None:
    if blk or inc:
        raise QmpError("Block migration is not supported by livemig")
    _manager(ctx).migrate(uri, resume=resume, channels=channels)


@command("migrate_cancel")
def migrate_cancel(ctx: QmpContext) -> None:
    _manager(ctx).cancel()


@command("migrate-continue", {"state": tuple(status.value for status in Status)})
def migrate_continue(ctx: QmpContext, state: str) -> None:
    _manager(ctx).migrate_continue(state)


@command("migrate-start-postcopy")
def migrate_start_postcopy(ctx: QmpContext) -> None:
    _manager(ctx).start_postcopy()


@command("migrate-pause")
def migrate_pause(ctx: QmpContext) -> None:
    _manager(ctx).pause()


@command("migrate-recover", {"uri": "str"})
def migrate_recover(ctx: QmpContext, uri: str) -> None:
    _manager(ctx).recover(uri)


@command("migrate-incoming", {"*uri": "str", "*channels": ["any"]})
def migrate_incoming(ctx: QmpContext, uri: str | None = None,
                     channels: list[Any] | None = None) -> None:
    _manager(ctx).migrate_incoming(uri, channels)


@command("query-migrate")
def query_migrate(ctx: QmpContext) -> dict[str, Any]:
    return _manager(ctx).query()


@command("migrate-set-parameters", parameter_schema())
def migrate_set_parameters(ctx: QmpContext, **params: Any) -> None:
    _manager(ctx).set_parameters({k.replace("_", "-"): v for k, v in params.items()})


@command("query-migrate-parameters")
def query_migrate_parameters(ctx: QmpContext) -> dict[str, Any]:
    return dict(_manager(ctx).settings.params)


@command("migrate-set-capabilities",
         {"capabilities": [{"capability": CAPABILITIES, "state": "bool"}]})
def migrate_set_capabilities(ctx: QmpContext, capabilities: list[dict[str, Any]]) -> None:
    _manager(ctx).set_capabilities(capabilities)


@command("query-migrate-capabilities")
def query_migrate_capabilities(ctx: QmpContext) -> list[dict[str, Any]]:
    caps = _manager(ctx).settings.caps
    return [{"state": caps[name], "capability": name} for name in CAPABILITIES]


# Removed from QEMU in 6.0 but used by the reference test and old scripts.
@command("migrate_set_downtime", {"value": "number"})
def migrate_set_downtime(ctx: QmpContext, value: float) -> None:
    """Seconds (float) → downtime-limit in ms, clamped as QEMU did."""
    milliseconds = int(max(0.0, min(value * 1000, float(2**63 - 1))))
    _manager(ctx).set_parameters({"downtime-limit": milliseconds})


@command("migrate_set_speed", {"value": "int"})
def migrate_set_speed(ctx: QmpContext, value: int) -> None:
    """Bytes per second → max-bandwidth."""
    _manager(ctx).set_parameters({"max-bandwidth": max(0, value)})


@command("getfd", {"fdname": "str"})
def getfd(ctx: QmpContext, fdname: str) -> None:
    fd = ctx.session.stream.take_fd()
    if fd is None:
        raise QmpError("No file descriptor supplied via SCM_RIGHTS")
    _manager(ctx).add_fd(fdname, fd)


@command("closefd", {"fdname": "str"})
def closefd(ctx: QmpContext, fdname: str) -> None:
    _manager(ctx).close_fd(fdname)
