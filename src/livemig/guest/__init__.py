"""Guest images shipped with livemig (data only; imports nothing of ours).

``ab`` is the built-in test guest: see ``ab_bootsect.S`` for what it does.
``dirty`` is the workload guest (``dirty_bootsect.S``, knobs in ``dirty.py``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

GUESTS = {"ab": "ab_bootsect.bin", "dirty": "dirty_bootsect.bin"}

# The region the built-in guest walks, and how it marks progress.
AB_START = 1 << 20
AB_END = 100 << 20
PAGE = 4096


def image(name: str = "ab") -> bytes:
    """The named guest's 512-byte boot sector."""
    try:
        filename = GUESTS[name]
    except KeyError as err:
        raise KeyError(f"unknown guest '{name}' (known: {', '.join(GUESTS)})") from err
    return resources.files(__package__).joinpath(filename).read_bytes()


def write_image(path: str | Path, name: str = "ab") -> Path:
    """Write a guest image to ``path`` (for QEMU or livemig ``-drive``)."""
    out = Path(path)
    out.write_bytes(image(name))
    return out
