"""What livemig says it is: the QEMU version it is compatible with."""

from __future__ import annotations

from typing import Any

from .. import QEMU_COMPAT_VERSION, __version__


def version_info() -> dict[str, Any]:
    major, minor, micro = QEMU_COMPAT_VERSION
    return {"qemu": {"micro": micro, "minor": minor, "major": major},
            "package": f"livemig {__version__}"}
