"""query-command-line-options: the parameters of each option group the
command line takes, from the table the parser itself enforces
(machine.command_line.PARAMETERS). Every parameter is reported as a
string: livemig's parser converts values itself."""

from __future__ import annotations

from typing import Any

from ...errors import QmpError
from ...machine.command_line import PARAMETERS
from ..context import QmpContext
from ..registry import command


@command("query-command-line-options", {"*option": "str"})
def query_command_line_options(ctx: QmpContext,
                               option: str | None = None) -> list[dict[str, Any]]:
    if option is not None and option not in PARAMETERS:
        raise QmpError(f"invalid option name: {option}")
    names = [option] if option is not None else sorted(PARAMETERS)
    return [{"option": name,
             "parameters": [{"name": param, "type": "string"}
                            for param in sorted(PARAMETERS[name])]}
            for name in names]
