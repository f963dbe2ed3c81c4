"""The table of QMP commands. Handlers register with :func:`command`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .schema import Schema

if TYPE_CHECKING:
    from .context import QmpContext

Handler = Callable[..., Any]


class Command(NamedTuple):
    name: str
    schema: Schema
    handler: Handler


COMMANDS: dict[str, Command] = {}


def command(name: str, schema: Schema | None = None) -> Callable[[Handler], Handler]:
    """Register ``fn(ctx, **arguments)`` as the QMP command ``name``.

    Arguments arrive with dashes turned into underscores.
    """

    def register(fn: Handler) -> Handler:
        if name in COMMANDS:
            raise RuntimeError(f"QMP command {name} registered twice")
        COMMANDS[name] = Command(name, schema or {}, fn)
        return fn

    return register


def call(cmd: Command, ctx: QmpContext, args: dict[str, Any]) -> Any:
    return cmd.handler(ctx, **{key.replace("-", "_"): value for key, value in args.items()})
